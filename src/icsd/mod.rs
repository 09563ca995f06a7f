//! ICSD / AICSD: (adaptive) inter-class similarity distillation (Mansourian et al., 2023), `docs/losses.md §3`.
//!
//! For the student `S` and the teacher `T` (`[B, C, H, W]` class logits), a `C x C` class-similarity matrix is
//! built, its rows are L2-normalised (eps `1e-12`) and the two normalised matrices are compared by MSE:
//!
//! ```text
//! official (§3.4, the default): P = softmax(X / tau) along H, per column (b, c, w)
//!     A_k = (1/B) sum_{b,h,w} P_k log P_k,   G = P P^T / B,   M[i, j] = A_max(i,j) - G[i, j]      (§3.5)
//! paper (§3.7): P = softmax over the H*W plane, per (b, c);  M[i, j] = (1/B) sum_b KL(P_j || P_i)
//! Mh = M / max(||M[i, :]||_2, 1e-12)                                   (row normalisation)
//! L_ICS = loss_weight / (C^2 * B) * sum_{i,j} (Mh_S - Mh_T)^2
//! ```
//!
//! The gradient (student only, §0.5) is §3.6 (official) or §3.7 (paper). `log P = z - LSE(z)` throughout, so
//! the gradient stays finite where the official code's backward is NaN (§3.8).
//!
//! AICSD (§3.10) mixes ICSD with pixel-wise KD (§3.9, [`crate::pixel_kd`] with its defaults) under the ALW
//! schedule [`alw_alpha`]: `alpha * L_ICS + (1 - alpha) * L_KD`, computed by [`AicsdCpu`] and, in one call,
//! by [`AicsdCuda`]. The task cross-entropy `L_CE` belongs to the caller: the official objective is
//! `alpha * (L_CE + L_ICS) + (1 - alpha) * L_KD`, so add `alpha * L_CE` (and its gradient, scaled by `alpha`)
//! yourself, for instance by running these calls with `GradOptions { accumulate: true, .. }` into the
//! gradient your CE backward wrote.
//!
//! Defaults (§3.11, the crate's reading of the official README, §3.2): `tau = 1`, ICS weight 9500, KD weight
//! 10, `total_epochs = 120`.

mod aicsd;
mod cpu;
mod cuda;
pub(crate) mod driver;
#[cfg(feature = "emulator")]
pub mod emulate;
pub(crate) mod fixture;
#[cfg(test)]
pub(crate) mod launch_limits;
pub(crate) mod plan;

pub use aicsd::{AicsdConfig, AicsdCpu, AicsdCuda};
pub use cpu::{IcsdCpu, IcsdCpuOutput};
pub use driver::{IcsdBuffers, IcsdRawBuffers};

/// The ICSD family ([`crate::family::Family`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Icsd;

/// ICSD on the GPU, with the same surface as [`IcsdCpu`]: `icsd_stats`, `icsd_gram`, `icsd_epilogue`, then
/// for a gradient `icsd_dot` and `icsd_grad` (`kernels/icsd.cu`), on the caller's stream.
pub type IcsdCuda = crate::cuda::LossCuda<Icsd>;

use crate::error::{KdError, Result};
use crate::validate;

/// Which similarity matrix ICSD builds (`docs/losses.md §3.4`, `§3.7`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum IcsdVariant {
    /// What the official code computes: softmax along H, `M = A_max(i,j) - G`. The default.
    #[default]
    Official,
    /// What the paper's prose describes: softmax over H*W, a true pairwise KL. Not the official behaviour.
    Paper,
}

impl IcsdVariant {
    /// Parses `official` or `paper` (the fixtures' spelling).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "official" => Ok(IcsdVariant::Official),
            "paper" => Ok(IcsdVariant::Paper),
            other => Err(KdError::InvalidParameter {
                name: "variant",
                value: other.to_string(),
                requirement: "`official` or `paper`",
            }),
        }
    }

    /// The fixtures' spelling.
    pub fn name(self) -> &'static str {
        match self {
            IcsdVariant::Official => "official",
            IcsdVariant::Paper => "paper",
        }
    }
}

/// ICSD's parameters (`docs/losses.md §3.11`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IcsdConfig {
    /// Softmax temperature; finite and > 0. Default 1 (hard-coded officially).
    pub tau: f64,
    /// `w` of `L_ICS` (`lo_lambda`); finite. Default 9500.
    pub loss_weight: f64,
    /// Default [`IcsdVariant::Official`].
    pub variant: IcsdVariant,
}

impl Default for IcsdConfig {
    fn default() -> Self {
        IcsdConfig { tau: 1.0, loss_weight: 9500.0, variant: IcsdVariant::Official }
    }
}

impl IcsdConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate::temperature(self.tau)?;
        validate::finite("loss_weight", self.loss_weight)
    }

    /// `w / (C^2 * B)`: the factor on the summed squared differences.
    pub(crate) fn loss_scale(&self, batch: usize, classes: usize) -> f64 {
        self.loss_weight / ((classes * classes) as f64 * batch as f64)
    }
}

impl crate::family::FamilyConfig for IcsdConfig {
    fn validate(&self) -> Result<()> {
        IcsdConfig::validate(self)
    }
}

/// The official number of epochs of the ALW schedule (`docs/losses.md §3.10`).
pub const ALW_TOTAL_EPOCHS: f64 = 120.0;

/// The ALW weight `alpha(epoch) = clamp(epoch / total_epochs, 0, 1)` (`docs/losses.md §3.10`; officially
/// `epoch / 120` with a 0-based epoch). `total_epochs` must be finite and > 0, `epoch` finite.
pub fn alw_alpha(epoch: f64, total_epochs: f64) -> Result<f64> {
    if !(total_epochs.is_finite() && total_epochs > 0.0) {
        return Err(KdError::InvalidParameter {
            name: "total_epochs",
            value: total_epochs.to_string(),
            requirement: "finite and > 0",
        });
    }
    validate::finite("epoch", epoch)?;
    Ok((epoch / total_epochs).clamp(0.0, 1.0))
}
