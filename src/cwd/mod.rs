//! Channel-wise distillation (CWD; Shu et al., ICCV 2021).
//!
//! Each channel of each image is turned into a distribution over its H*W spatial positions by a softmax
//! of `x / tau`, and the student is pulled towards the teacher by the KL divergence of those rows:
//!
//! ```text
//! KL_r   = sum_i pT_i (log pT_i - log pS_i)                       r = (n, c), i over H*W
//! loss   = loss_weight * tau^2 / (N*C) * sum_r KL_r
//! dL/dS  = loss_weight * tau   / (N*C) * (pS - pT)
//! dL/dT  = loss_weight * tau   / (N*C) * pT (log pT - log pS - KL_r)      (only with `teacher_grad`)
//! ```
//!
//! This is mmrazor's `ChannelWiseDivergence` and, wherever it is finite, the official TorchDistiller
//! `CriterionCWD` (`norm_type='channel'`, `divergence='kl'`). `log p` is computed as `z - LSE(z)`, so the loss
//! stays finite where a student probability underflows in fp32 (TorchDistiller's `log(softmax)` gives NaN
//! there). See `docs/losses.md` §1.
//!
//! [`CwdCpu`] is the f64 reference; [`CwdCuda`] runs the kernels of `kernels/cwd.cu`: by default a single
//! pass that reads the logits once (see [`CwdPath`]).

mod cpu;
mod cuda;
pub(crate) mod driver;
pub(crate) mod fixture;
#[cfg(test)]
pub(crate) mod launch_limits;
pub(crate) mod plan;

pub use cpu::CwdCpu;

/// The CWD family ([`crate::family::Family`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cwd;

/// CWD on the GPU, with the same surface as [`CwdCpu`]: by default one cooperative launch of
/// `cwd_fused_{dtype}`, else `cwd_stats_{dtype}` then `cwd_finish_{dtype}` (see [`CwdPath`]).
pub type CwdCuda = crate::cuda::LossCuda<Cwd>;

/// The device addresses of one CWD call: a pair call, whose teacher gradient is written where
/// `grad_teacher` is set, which it must be exactly when `config.teacher_grad` is.
pub type CwdRawBuffers = crate::family::PairRawBuffers;

/// Which kernels [`CwdCuda`] runs. The results agree to the tolerance table either way; only speed differs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CwdPath {
    /// The single pass wherever it applies, else the two passes. The default.
    #[default]
    Auto,
    /// `cwd_fused`: one cooperative launch that reads the student and the teacher once, keeping each row's
    /// chunks in registers while the row's blocks exchange statistics. Applies when the device launches
    /// cooperatively and a row's chunks fit on it at once (H*W up to about 1.6M
    /// f32 or 3.2M f16/bf16 elements on an H100; [`CwdCuda::single_pass_max_row_len`] tells); forcing it elsewhere
    /// is [`crate::KdError::Unsupported`].
    SinglePass,
    /// `cwd_stats` then `cwd_finish`: two launches, the second reading the logits again. Any row length.
    TwoPass,
}

use crate::error::Result;
use crate::validate;

/// CWD's parameters. The default is the paper's Cityscapes setting (`exp_cwd.sh channel kl 3 4`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CwdConfig {
    /// Softmax temperature; finite and > 0. Default 4 (paper); the mm* configs use 1.
    pub tau: f64,
    /// Weight `lambda` of the loss; finite. Default 3 (paper); the mm* configs use 5 or 10.
    pub loss_weight: f64,
    /// Also produce the gradient with respect to the teacher (data-free or online distillation). Off in
    /// every official config, where the teacher is frozen.
    pub teacher_grad: bool,
}

impl Default for CwdConfig {
    fn default() -> Self {
        CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: false }
    }
}

impl CwdConfig {
    /// Checks every field; the loss objects call this on construction.
    pub fn validate(&self) -> Result<()> {
        validate::temperature(self.tau)?;
        validate::finite("loss_weight", self.loss_weight)
    }

    /// `loss_weight * tau^2 / (N*C)`: the factor on the summed row KLs.
    pub(crate) fn loss_scale(&self, rows: usize) -> f64 {
        self.loss_weight * self.tau * self.tau / rows as f64
    }

    /// `loss_weight * tau / (N*C)`: the factor on `pS - pT` in the gradient.
    pub(crate) fn grad_scale(&self, rows: usize) -> f64 {
        self.loss_weight * self.tau / rows as f64
    }
}

impl crate::family::FamilyConfig for CwdConfig {
    fn validate(&self) -> Result<()> {
        CwdConfig::validate(self)
    }
}
