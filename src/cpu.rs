//! Pieces the CPU references share: the output type, input checks, and a stable log-softmax.

use ndarray::{Array4, ArrayView4};

use crate::dtype::KdFloat;
use crate::error::Result;
use crate::shape::Nchw;

/// What a CPU reference returns: the loss and the gradients, in f64.
#[derive(Debug, Clone)]
pub struct CpuOutput {
    /// The scalar loss.
    pub loss: f64,
    /// d loss / d student (times the upstream gradient for `backward`). Empty (all dimensions 0) for
    /// `forward`.
    pub grad_student: Array4<f64>,
    /// d loss / d teacher, when the configuration asks for it.
    pub grad_teacher: Option<Array4<f64>>,
}

/// An element type the CPU references read: the kernels' three ([`KdFloat`]) and `f64`, which CPU
/// training stacks (burn's NdArray backend, candle's CPU device) use. Every reference computes in f64
/// whatever it reads.
pub trait HostFloat: Copy + Send + Sync + 'static {
    /// Widens exactly.
    fn to_f64(self) -> f64;
}

impl<T: KdFloat> HostFloat for T {
    fn to_f64(self) -> f64 {
        KdFloat::to_f64(self)
    }
}

impl HostFloat for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

/// Checks that the pair has one non-empty NCHW shape, and returns it.
pub(crate) fn check_pair<T: HostFloat>(student: ArrayView4<'_, T>, teacher: ArrayView4<'_, T>) -> Result<Nchw> {
    let shape = Nchw::from_dims("student", student.shape())?;
    shape.expect_same("teacher", teacher.shape())?;
    Ok(shape)
}

/// `z - LSE(z)`, with the max subtracted first; finite for any finite input.
pub(crate) fn log_softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + z.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
    z.iter().map(|&v| v - lse).collect()
}
