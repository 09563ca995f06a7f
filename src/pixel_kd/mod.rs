//! Pixel-wise knowledge distillation: the classic per-pixel KD of dense prediction (the "PI" baseline of
//! the CWD paper, TorchDistiller's `CriterionKD`, and the `L_KD` term of AICSD).
//!
//! Each pixel's C logits are turned into a class distribution by a softmax of `x / tau`:
//!
//! ```text
//! KL_p  = sum_c pT_c (log pT_c - log pS_c)                           p = (n, h, w)
//! loss  = loss_weight * [tau^2] / divisor * sum_p KL_p
//! dL/dS = loss_weight * [tau^2] / divisor / tau * (pS - pT)
//! ```
//!
//! with `divisor` from [`Reduction`] and `tau^2` applied when `scale_tau2` is set. The official
//! `CriterionKD` is `tau = 1`, reduction `mean` (over all N*C*H*W elements, PyTorch's `KLDivLoss()`
//! default), no `tau^2`, weight 10. See `docs/losses.md` §2.

mod cpu;
mod cuda;
pub(crate) mod driver;
pub(crate) mod fixture;
#[cfg(test)]
pub(crate) mod launch_limits;
pub(crate) mod plan;

pub use cpu::PixelKdCpu;

/// The pixel-KD family ([`crate::family::Family`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PixelKd;

/// Pixel KD on the GPU, with the same surface as [`PixelKdCpu`]: one launch of `pixel_kd_tiled_{dtype}` or
/// `pixel_kd_{dtype}` (see [`PixelKdPath`]).
pub type PixelKdCuda = crate::cuda::LossCuda<PixelKd>;

/// The device addresses of one pixel-KD call: a pair call (`grad_teacher` must be 0: the teacher is a
/// constant here).
pub type PixelKdRawBuffers = crate::family::PairRawBuffers;

/// Which kernel [`PixelKdCuda`] runs. The results agree to the tolerance table either way; only speed
/// differs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PixelKdPath {
    /// The tiled kernel wherever its tile fits in shared memory, else the per-pixel one. The default.
    #[default]
    Auto,
    /// `pixel_kd_tiled`: tiles of 32 to 256 pixels of one image, every channel kept in shared memory between
    /// the statistics and the gradient, so the logits are read once. Applies while a tile of 32 pixels fits
    /// (up to 384 f32 or 768 f16/bf16 channels in 48 KiB, about 850 or 1700 with the ~220 KiB an H100
    /// allows a block); forcing it beyond is [`crate::KdError::Unsupported`].
    Tiled,
    /// `pixel_kd`: a thread per pixel that reads its channels twice (the second time from cache, when they
    /// are still there). Any channel count.
    PerPixel,
}

use crate::error::{KdError, Result};
use crate::shape::Nchw;
use crate::validate;

/// What the summed per-pixel KL is divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// By N*C*H*W, the number of elements: PyTorch `KLDivLoss()`'s default, and the official one.
    Mean,
    /// By N, the batch size: PyTorch's `reduction='batchmean'`.
    BatchMean,
    /// No division.
    Sum,
    /// By N*H*W, the number of pixels: a per-pixel average of the KL.
    PixelMean,
}

impl Reduction {
    /// The fixture spelling: `mean`, `batchmean`, `sum`, `pixelmean`.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Mean => "mean",
            Reduction::BatchMean => "batchmean",
            Reduction::Sum => "sum",
            Reduction::PixelMean => "pixelmean",
        }
    }

    /// The divisor for `shape`.
    pub fn divisor(self, shape: &Nchw) -> f64 {
        match self {
            Reduction::Mean => shape.numel() as f64,
            Reduction::BatchMean => shape.n as f64,
            Reduction::Sum => 1.0,
            Reduction::PixelMean => (shape.n * shape.plane()) as f64,
        }
    }
}

impl std::str::FromStr for Reduction {
    type Err = KdError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Reduction::Mean),
            "batchmean" => Ok(Reduction::BatchMean),
            "sum" => Ok(Reduction::Sum),
            "pixelmean" => Ok(Reduction::PixelMean),
            other => Err(KdError::InvalidParameter {
                name: "reduction",
                value: format!("{other:?}"),
                requirement: "one of mean, batchmean, sum, pixelmean",
            }),
        }
    }
}

/// Pixel KD's parameters. The default is the official `CriterionKD` (TorchDistiller) and AICSD `pi_loss`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelKdConfig {
    /// Softmax temperature; finite and > 0. Default 1.
    pub tau: f64,
    /// Weight of the loss; finite. Default 10 (`lambda_kd` in TorchDistiller, `pi_lambda` in AICSD).
    pub loss_weight: f64,
    /// Divisor of the summed KL. Default [`Reduction::Mean`].
    pub reduction: Reduction,
    /// Multiply by `tau^2` (Hinton's gradient-scale correction). Default off, as in the official code.
    pub scale_tau2: bool,
}

impl Default for PixelKdConfig {
    fn default() -> Self {
        PixelKdConfig { tau: 1.0, loss_weight: 10.0, reduction: Reduction::Mean, scale_tau2: false }
    }
}

impl PixelKdConfig {
    /// Checks every field; the loss objects call this on construction.
    pub fn validate(&self) -> Result<()> {
        validate::temperature(self.tau)?;
        validate::finite("loss_weight", self.loss_weight)
    }

    /// The factor on the summed per-pixel KL.
    pub(crate) fn loss_scale(&self, shape: &Nchw) -> f64 {
        let tau2 = if self.scale_tau2 { self.tau * self.tau } else { 1.0 };
        self.loss_weight * tau2 / self.reduction.divisor(shape)
    }

    /// The factor on `pS - pT` in the gradient.
    pub(crate) fn grad_scale(&self, shape: &Nchw) -> f64 {
        self.loss_scale(shape) / self.tau
    }
}

impl crate::family::FamilyConfig for PixelKdConfig {
    fn validate(&self) -> Result<()> {
        PixelKdConfig::validate(self)
    }
}
