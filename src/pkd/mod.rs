//! PKD: Pearson-correlation feature distillation (Cao et al., NeurIPS 2022), `docs/losses.md §7`.
//!
//! Over a list of levels (the FPN levels of a detector), student `S_l` and teacher `T_l` of one shape
//! `[N, C_l, H_l, W_l]` per level. Each channel is standardised over all its `M_l = N*H_l*W_l` values (the
//! whole batch), with the unbiased standard deviation and an eps on it, and the two are compared by MSE:
//!
//! ```text
//! x_hat = (x - mean) / (std_unbiased + 1e-6)              per level and channel, over N*H*W values
//! L = loss_weight * sum_l 0.5 * mean_{N*C_l*H_l*W_l} (S_hat_l - T_hat_l)^2
//! ```
//!
//! This is mmrazor's `PKDLoss` on a tuple of levels of equal shapes. The official code resizes the student
//! bilinearly when the sizes differ; this crate takes equal shapes and its error says to resize first. A
//! constant student channel (`std = 0`) has `x_hat = 0`; its gradient keeps only the term through `x - mean`,
//! as torch's autograd of `Tensor.std` does (§7.3). The teacher is a constant (no teacher gradient).

mod cpu;
pub(crate) mod fixture;

pub use cpu::{PkdCpu, PkdCpuOutput};

use crate::error::{KdError, Result};
use crate::shape::Nchw;
use crate::validate;

/// The eps added to the standard deviation (mmrazor's, hard-coded).
pub const PKD_EPS: f64 = 1e-6;

/// PKD's parameters (`docs/losses.md §7`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PkdConfig {
    /// Factor on the summed level losses; finite. Default 1 (mmrazor's default; its detection configs use 6).
    pub loss_weight: f64,
}

impl Default for PkdConfig {
    fn default() -> Self {
        PkdConfig { loss_weight: 1.0 }
    }
}

impl PkdConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate::finite("loss_weight", self.loss_weight)
    }
}

/// Checks a list of (student, teacher) level shapes: at least one level, as many teacher levels as student
/// levels, each level a non-empty NCHW shape equal for both, and at least two values per channel (the
/// unbiased standard deviation divides by `M - 1`). Returns the level shapes.
pub fn check_levels(student: &[&[usize]], teacher: &[&[usize]]) -> Result<Vec<Nchw>> {
    if student.is_empty() {
        return Err(KdError::EmptyInput { what: "student levels", shape: vec![0] });
    }
    if teacher.len() != student.len() {
        return Err(KdError::ShapeMismatch {
            what: "teacher levels (their number)",
            expected: vec![student.len()],
            got: vec![teacher.len()],
        });
    }
    let mut shapes = Vec::with_capacity(student.len());
    for (level, (s, t)) in student.iter().zip(teacher).enumerate() {
        let shape = Nchw::from_dims("student level", s)?;
        Nchw::from_dims("teacher level", t)?;
        if s != t {
            return Err(KdError::LevelShapeMismatch { level, student: s.to_vec(), teacher: t.to_vec() });
        }
        let per_channel = shape.n * shape.plane();
        if per_channel < 2 {
            return Err(KdError::TooFewValues {
                what: format!(
                    "PKD level {level} of shape {:?}, per channel (N*H*W; the unbiased standard deviation \
                     divides by N*H*W - 1)",
                    shape.dims()
                ),
                got: per_channel,
                needed: 2,
            });
        }
        shapes.push(shape);
    }
    Ok(shapes)
}
