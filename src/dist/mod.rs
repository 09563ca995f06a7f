//! DIST: Pearson correlations of the class distributions, between and within classes (Huang et al., NeurIPS
//! 2022), in its segmentation form (DIST_KD), `docs/losses.md §8`.
//!
//! The logits `[N, C, H, W]` are `M = N*H*W` rows of `C` values; `p = softmax_C(x / tau)` per pixel, and
//!
//! ```text
//! rho(a, b) = (a - mean a) . (b - mean b) / (||a - mean a|| * ||b - mean b|| + 1e-8)
//! inter     = 1 - mean over the M pixels of rho(p_s[pixel, :], p_t[pixel, :])
//! intra     = 1 - mean over the C classes of rho(p_s[:, c], p_t[:, c])      (each over all M pixels)
//! L         = loss_weight * tau^2 * (beta * inter + gamma * intra)
//! ```
//!
//! With the defaults (all 1) this is DIST_KD's segmentation loss exactly; `tau` and `loss_weight` act as in
//! mmrazor's `DISTLoss`, whose `inter_loss_weight` / `intra_loss_weight` are `beta` / `gamma`. mmrazor's
//! `DISTLoss` fed 4-D logits as they are computes another loss (§8.3); this is DIST_KD's. The teacher is a
//! constant (no teacher gradient).

mod cpu;
pub(crate) mod driver;
pub(crate) mod fixture;
#[cfg(test)]
pub(crate) mod launch_limits;
pub(crate) mod plan;

pub use cpu::DistCpu;

/// The DIST family ([`crate::family::Family`]), a pair family: [`DistCuda`] and the host emulation
/// (`crate::emulator::pair`) take it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dist;

/// DIST on the GPU, with the same surface as [`DistCpu`]: `dist_stats` (per-pixel softmaxes, inter-class
/// correlations, per-class moments), `dist_finish` (intra-class correlations, loss), then for a gradient
/// `dist_grad` (`kernels/dist.cu`), on the caller's stream.
pub type DistCuda = crate::cuda::LossCuda<Dist>;

use crate::error::Result;
use crate::validate;

/// The eps added to the product of the norms in the Pearson correlation (DIST_KD's and mmrazor's).
pub const DIST_EPS: f64 = 1e-8;

/// DIST's parameters (`docs/losses.md §8`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistConfig {
    /// Softmax temperature; finite and > 0. Default 1 (DIST_KD's segmentation setting).
    pub tau: f64,
    /// Weight of the inter-class term (mmrazor's `inter_loss_weight`); finite. Default 1.
    pub beta: f64,
    /// Weight of the intra-class term (mmrazor's `intra_loss_weight`); finite. Default 1.
    pub gamma: f64,
    /// Factor on the whole loss; finite. Default 1.
    pub loss_weight: f64,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig { tau: 1.0, beta: 1.0, gamma: 1.0, loss_weight: 1.0 }
    }
}

impl DistConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate::temperature(self.tau)?;
        validate::finite("beta", self.beta)?;
        validate::finite("gamma", self.gamma)?;
        validate::finite("loss_weight", self.loss_weight)
    }
}

impl crate::family::FamilyConfig for DistConfig {
    fn validate(&self) -> Result<()> {
        DistConfig::validate(self)
    }
}
