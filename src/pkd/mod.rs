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
//!
//! [`PkdCpu`] is the f64 reference; [`PkdCuda`] runs the same computation with the kernels of
//! `kernels/pkd.cu`: every level of a call in the same three launches (per-chunk moments, per-channel
//! coefficients, loss and gradient), the level table inside the kernels' argument block (at most
//! [`MAX_LEVELS`] levels).

mod cpu;
mod cuda;
pub(crate) mod driver;
#[cfg(feature = "emulator")]
pub mod emulate;
pub(crate) mod fixture;
#[cfg(test)]
pub(crate) mod launch_limits;
pub(crate) mod plan;

pub use cpu::{PkdCpu, PkdCpuOutput};
pub use cuda::PkdBuffers;
pub use driver::PkdRawBuffers;

/// The PKD family ([`crate::family::Family`]); its shape is a [`PkdLevels`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pkd;

/// PKD on the GPU, with the same computation as [`PkdCpu`]: every level of a call in three launches.
pub type PkdCuda = crate::cuda::LossCuda<Pkd>;

/// The most levels one GPU call takes: their addresses and sizes travel inside the kernels' argument block.
pub const MAX_LEVELS: usize = crate::ffi::KD_PKD_MAX_LEVELS as usize;

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

impl crate::family::FamilyConfig for PkdConfig {
    fn validate(&self) -> Result<()> {
        PkdConfig::validate(self)
    }
}

/// The level shapes of one call, checked by [`check_levels`]: one `[N, C, H, W]` per level, the same for the
/// student and the teacher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkdLevels {
    shapes: Vec<Nchw>,
}

impl PkdLevels {
    /// The levels of a call from the student's and the teacher's shapes; a level whose two shapes differ is
    /// [`KdError::LevelShapeMismatch`] (resize the student first).
    pub fn new(student: &[&[usize]], teacher: &[&[usize]]) -> Result<Self> {
        Ok(PkdLevels { shapes: check_levels(student, teacher)? })
    }

    /// Levels whose student and teacher both have `shapes`.
    pub fn same(shapes: &[[usize; 4]]) -> Result<Self> {
        let dims: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
        Self::new(&dims, &dims)
    }

    /// The level shapes.
    pub fn shapes(&self) -> &[Nchw] {
        &self.shapes
    }

    /// The number of levels (at least one).
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    /// Always false: a call has at least one level.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
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
