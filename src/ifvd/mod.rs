//! IFVD: intra-class feature variation distillation (Wang et al., ECCV 2020), `docs/losses.md §11`.
//!
//! Per image, every class present in the (resized) labels gets a prototype, the mean feature of its pixels;
//! each pixel's feature is compared with its class prototype by cosine similarity, for the student and for
//! the teacher with their own features, and the two cosine maps are compared by MSE:
//!
//! ```text
//! y       = labels resized to H x W by PyTorch's `nearest` ([`nearest_source`])
//! c[n, k] = sum_{p: y[n,p] = k} F[n, :, p] / (count[n, k] + 1e-6)        0 <= k < num_classes
//! q[n, p] = c[n, y[n,p]], or F[n, :, p] itself where y[n,p] is not a class (255, -1: "ignore")
//! cos[n, p] = F[n,:,p] . q[n,p] / (max(|F[n,:,p]|, 1e-8) * max(|q[n,p]|, 1e-8))
//! L = loss_weight * mean_{n,p} (cos_S - cos_T)^2
//! ```
//!
//! Student `[N, Cs, H, W]` and teacher `[N, Ct, H, W]` may differ in channels but not in `N`, `H`, `W`; labels
//! are `[N, Hl, Wl]` integers of any resolution. The gradient flows into the student directly and through
//! its prototypes (the official code does not detach them); the teacher is constant.
//!
//! [`IfvdCpu`] is the f64 reference; [`IfvdCuda`] runs the kernels of `kernels/ifvd.cu` (the segmented class
//! sums per image and chunk of pixels, the prototypes, the cosines with the loss, then for a gradient the
//! prototypes' gradients and the student's).

mod cpu;
mod cuda;
pub(crate) mod driver;
#[cfg(feature = "emulator")]
pub mod emulate;
pub(crate) mod fixture;
mod labels;
#[cfg(test)]
pub(crate) mod launch_limits;
pub(crate) mod plan;

pub use cpu::{IfvdCpu, IfvdCpuOutput};
pub use driver::{IfvdBuffers, IfvdLabels, IfvdRawBuffers};
pub use labels::{check_shapes, nearest_source, IfvdShapes, LabelDType};

/// The IFVD family ([`crate::family::Family`]); its shape is the checked [`IfvdShapes`] of a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ifvd;

/// IFVD on the GPU, with the surface of [`IfvdCpu`]: `ifvd_sums`, `ifvd_protos`, `ifvd_cosines`, then for a
/// gradient `ifvd_proto_grad` and `ifvd_grad` (`kernels/ifvd.cu`), on the caller's stream.
pub type IfvdCuda = crate::cuda::LossCuda<Ifvd>;

use crate::error::{KdError, Result};
use crate::validate;

/// The largest `num_classes`: the official code compares the labels with the classes as f32, where
/// integers above 2^24 are no longer distinct.
pub const MAX_CLASSES: usize = 1 << 24;

/// The cosine's lower clamp on each norm (PyTorch's `cosine_similarity` default).
pub const COS_EPS: f64 = 1e-8;

/// Added to each class's pixel count before dividing (as the official code does).
pub const COUNT_EPS: f64 = 1e-6;

/// IFVD's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IfvdConfig {
    /// `K`: labels in `[0, K)` are classes, every other value is ignored. Between 1 and [`MAX_CLASSES`]; the
    /// dataset's class count (19 on Cityscapes, 150 on ADE20K), which the official constructor takes too.
    pub num_classes: usize,
    /// The factor on the mean squared difference; finite. [`IfvdConfig::new`] sets 1 (the official module
    /// has none; CIRKD's training scripts multiply by `--lambda-ifv 20`).
    pub loss_weight: f64,
}

impl IfvdConfig {
    /// `num_classes` classes and `loss_weight` 1.
    pub fn new(num_classes: usize) -> Self {
        IfvdConfig { num_classes, loss_weight: 1.0 }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.num_classes == 0 || self.num_classes > MAX_CLASSES {
            return Err(KdError::InvalidParameter {
                name: "num_classes",
                value: self.num_classes.to_string(),
                requirement: "between 1 and 2^24 (the dataset's class count)",
            });
        }
        validate::finite("loss_weight", self.loss_weight)
    }

    /// `loss_weight / (N*H*W)`: the factor on the summed squared differences.
    pub(crate) fn loss_scale(&self, pixels: usize) -> f64 {
        self.loss_weight / pixels as f64
    }
}

impl crate::family::FamilyConfig for IfvdConfig {
    fn validate(&self) -> Result<()> {
        IfvdConfig::validate(self)
    }
}
