//! SemCKD: cross-layer distillation with semantic calibration (Chen et al., AAAI 2021), `docs/losses.md §4`.
//!
//! Every student layer `i` is matched against every teacher layer `j`. The crate computes everything except
//! the regressors `R_ij` (convolutions and batch norms, the caller's, §4.5):
//!
//! ```text
//! Gr        = X X^T                       batch Gram of every layer, X = reshape(F, [B, D])   (§4.2 step 1)
//! q_i[b]    = l2norm(W2 relu(W1 Gr^s_i[b,:] + b1) + b2)   query MLP i; k_j[b] likewise       (§4.2 step 2)
//! alpha     = softmax_j(<q_i[b], k_j[b]>)                                                    (§4.2 step 3)
//! That_ij   = adaptive_avg_pool(F^t_j, (h, h)),  h = min(Hs_i, Ht_j)                         (§4.2 step 4, §4.3)
//! l[b,i,j]  = mean_{c,y,x} (Shat_ij[b] - That_ij[b])^2                                       (§4.2 step 5)
//! loss      = loss_weight / (B * S) * sum_{b,i,j} alpha[b,i,j] l[b,i,j]                      (§4.2 step 6)
//! ```
//!
//! and every gradient of §4.4: into the regressor outputs `Shat_ij`, into the student features through the
//! Gram / query / attention path, and into all query and key MLP parameters (always f32). The normalisation
//! has no epsilon by default, as the official code (§4.6); [`SemckdConfig::eps`] opts into
//! `z / max(||z||, eps)`. [`adaptive_avg_pool`] and [`adaptive_avg_pool_backward`] are PyTorch's
//! `adaptive_avg_pool2d` (§4.3), for the caller's student-side pooling when `Hs_i > Ht_j`.
//!
//! [`SemckdCpu`] is the f64 reference; the kernels of `kernels/semckd.cu` run the same computation through
//! [`SemckdRawBuffers`] (see `driver.rs`): at most [`MAX_LAYERS`] student and as many teacher layers, whose
//! addresses and sizes travel inside the kernels' parameter block (no table upload, graph-capture friendly);
//! more is [`crate::KdError::TooLarge`].

mod cpu;
mod cuda;
pub(crate) mod driver;
#[cfg(feature = "emulator")]
pub mod emulate;
pub(crate) mod fixture;
#[cfg(test)]
pub(crate) mod launch_limits;
mod layers;
mod pool;

pub use cpu::{EmbedWeights, SemckdCpu, SemckdCpuInputs, SemckdCpuOutput};
pub use cuda::{AdaptivePoolCuda, EmbedParamGrads, EmbedParams, SemckdGrads, SemckdInputs};

/// The SemCKD family ([`crate::family::Family`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Semckd;

/// SemCKD on the GPU, with the same computation as [`SemckdCpu`]: the six launches of `kernels/semckd.cu`,
/// its layer and pair tables inside the kernels' argument block (nothing uploaded, graph-capture friendly
/// once `reserve` has sized the workspace).
pub type SemckdCuda = crate::cuda::LossCuda<Semckd>;
pub use driver::SemckdRawBuffers;
pub use layers::{SemckdLayers, MAX_LAYERS};
pub use pool::{adaptive_avg_pool, adaptive_avg_pool_backward, pool_window};

use crate::error::{KdError, Result};
use crate::validate;

/// SemCKD's parameters (`docs/losses.md §4.7`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SemckdConfig {
    /// `w` (`beta`): 400 on CIFAR-100 (official), 50 on ImageNet. Finite.
    pub loss_weight: f64,
    /// Opt-in epsilon of the L2 normalisation, `z / max(||z||, eps)`; `None` (official) divides by `||z||`.
    pub eps: Option<f64>,
}

impl Default for SemckdConfig {
    fn default() -> Self {
        SemckdConfig { loss_weight: 400.0, eps: None }
    }
}

impl SemckdConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate::finite("loss_weight", self.loss_weight)?;
        if let Some(eps) = self.eps {
            if !(eps.is_finite() && eps > 0.0) {
                return Err(KdError::InvalidParameter {
                    name: "eps",
                    value: eps.to_string(),
                    requirement: "finite and > 0 (or None for the official normalisation)",
                });
            }
        }
        Ok(())
    }
}

impl crate::family::FamilyConfig for SemckdConfig {
    fn validate(&self) -> Result<()> {
        SemckdConfig::validate(self)
    }
}

/// The embedding width `d = floor(B / 4)` of the official `SelfA` (`factor = 4`).
pub fn default_embed_dim(batch: usize) -> usize {
    batch / 4
}
