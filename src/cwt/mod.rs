//! CWT: feature distillation through a channel-wise transformation (Liu et al., ICCV Workshops 2023).
//!
//! **There is no official code** (`docs/losses.md §5.1`); the crate computes the paper's statement completed
//! by the MGD inference of `docs/losses.md §5.5`, exactly as `docs/losses.md §5.3` writes it. Per pixel
//! `p = (n, y, x)` of the student features `F_s` `[N, Cs, H, W]`, with `x_p = F_s[n, :, y, x]`:
//!
//! ```text
//! A_p = W1 x_p + b1            (Cs -> Ch, a 1x1 convolution)
//! Z_p = ReLU(A_p)
//! Y_p = W2 Z_p + b2            (Ch -> Ct, a 1x1 convolution)
//! loss = loss_weight * sum_{n,c,y,x} (Y - F_t)^2 / D     D = N (CwtNormalize::Batch) or N*Ct*H*W (Mean)
//! ```
//!
//! and the gradients of `docs/losses.md §5.4` into the student features and the four MLP parameters
//! (`W1` `[Ch, Cs]`, `b1` `[Ch]`, `W2` `[Ct, Ch]`, `b2` `[Ct]`, f32; the teacher is constant; ReLU'(0) = 0 as in
//! PyTorch). Defaults (`docs/losses.md §5.6`): `loss_weight` 2e-5, normalize `batch`, hidden width `Ct`.
//!
//! [`CwtCpu`] is the f64 reference; [`CwtCuda`] runs the kernels of `kernels/cwt.cu` (tiled GEMMs with the loss
//! fused into the output GEMM's epilogue: fp32 SIMT for f32 inputs, tensor cores on bf16 operand pairs for f16
//! and bf16, a workspace within one hidden-activation tensor; `docs/losses.md §5.8`).

mod cpu;
mod cuda;
pub(crate) mod driver;
#[cfg(feature = "emulator")]
pub mod emulate;
pub(crate) mod fixture;
#[cfg(test)]
pub(crate) mod launch_limits;
pub(crate) mod plan;

pub use cpu::{CwtCpu, CwtOutput};
pub use cuda::{CwtBuffers, CwtParamBuffers, CwtParamGrads};
pub use driver::CwtRawBuffers;

use ndarray::{ArrayView1, ArrayView2};

use crate::error::{KdError, Result};
use crate::shape::Nchw;
use crate::validate;

/// The divisor `D` of the summed squared error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CwtNormalize {
    /// `D = N`: MGD's `MSELoss(reduction='sum') / N` (the inferred default, `docs/losses.md §5.5`).
    #[default]
    Batch,
    /// `D = N*Ct*H*W`: the mean over all elements.
    Mean,
}

impl CwtNormalize {
    /// Parses the fixture spelling (`batch`, `mean`).
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "batch" => Some(CwtNormalize::Batch),
            "mean" => Some(CwtNormalize::Mean),
            _ => None,
        }
    }
}

/// CWT's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CwtConfig {
    /// `w` (the paper's `alpha`); finite. Default 2e-5 (MGD's segmentation value, `docs/losses.md §5.6`).
    pub loss_weight: f64,
    /// The divisor; default [`CwtNormalize::Batch`].
    pub normalize: CwtNormalize,
}

impl Default for CwtConfig {
    fn default() -> Self {
        CwtConfig { loss_weight: 2e-5, normalize: CwtNormalize::Batch }
    }
}

impl CwtConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate::finite("loss_weight", self.loss_weight)
    }

    /// `D` for a teacher of shape `teacher`.
    pub(crate) fn divisor(&self, teacher: &Nchw) -> f64 {
        match self.normalize {
            CwtNormalize::Batch => teacher.n as f64,
            CwtNormalize::Mean => teacher.numel() as f64,
        }
    }
}

/// The channel counts of the transformation: student `Cs`, hidden `Ch`, teacher `Ct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CwtShapes {
    /// Student channels.
    pub cs: usize,
    /// Hidden width.
    pub ch: usize,
    /// Teacher channels.
    pub ct: usize,
}

impl CwtShapes {
    /// `Cs -> Ct` with the default hidden width `Ch = Ct` (`docs/losses.md §5.6`).
    pub fn new(cs: usize, ct: usize) -> Self {
        CwtShapes { cs, ch: ct, ct }
    }

    /// The same with hidden width `ch`.
    pub fn with_hidden(self, ch: usize) -> Self {
        CwtShapes { ch, ..self }
    }

    /// Every count at least 1 and at most `i32::MAX - 1` (the kernels' channel type, with the bias column).
    pub fn validate(&self) -> Result<()> {
        for (what, v) in
            [("mlp.linear1.weight", self.cs), ("mlp.linear1.weight", self.ch), ("mlp.linear2.weight", self.ct)]
        {
            if v == 0 {
                return Err(KdError::EmptyInput { what, shape: vec![self.ch, self.cs, self.ct] });
            }
            if v >= i32::MAX as usize {
                return Err(KdError::TooLarge { what, detail: format!("{v} channels; at most 2^31 - 2") });
            }
        }
        Ok(())
    }

    /// Validates the student and teacher shapes against the channel counts: student `[N, Cs, H, W]`,
    /// teacher `[N, Ct, H, W]`. Returns both.
    pub fn check_features(&self, student: &[usize], teacher: &[usize]) -> Result<(Nchw, Nchw)> {
        self.validate()?;
        let s = Nchw::from_dims("student", student)?;
        if s.c != self.cs {
            return Err(KdError::ShapeMismatch {
                what: "student",
                expected: vec![s.n, self.cs, s.h, s.w],
                got: student.to_vec(),
            });
        }
        let t = Nchw::from_dims("teacher", teacher)?;
        t.validate("teacher")?;
        if t.n != s.n || t.h != s.h || t.w != s.w || t.c != self.ct {
            return Err(KdError::ShapeMismatch {
                what: "teacher",
                expected: vec![s.n, self.ct, s.h, s.w],
                got: teacher.to_vec(),
            });
        }
        Ok((s, t))
    }
}

/// What a CWT loss object on the GPU is made for: the loss's parameters and the MLP's channel counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CwtSetup {
    /// The loss's parameters.
    pub config: CwtConfig,
    /// The channel counts.
    pub shapes: CwtShapes,
}

impl CwtSetup {
    /// Checks both.
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        self.shapes.validate()
    }
}

impl crate::family::FamilyConfig for CwtSetup {
    fn validate(&self) -> Result<()> {
        CwtSetup::validate(self)
    }
}

/// The CWT family ([`crate::family::Family`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cwt;

/// CWT on the GPU, with the same surface as [`CwtCpu`]: the tiled kernels of `kernels/cwt.cu`. Made with
/// [`CwtCuda::with_shapes`] (or `new` with a [`CwtSetup`]).
pub type CwtCuda = crate::cuda::LossCuda<Cwt>;

/// The MLP's parameters as host arrays (f32, as the 1x1 convolutions store them): `W1` `[Ch, Cs]`,
/// `b1` `[Ch]`, `W2` `[Ct, Ch]`, `b2` `[Ct]`.
#[derive(Debug, Clone, Copy)]
pub struct MlpParams<'a> {
    /// `mlp.linear1.weight`.
    pub w1: ArrayView2<'a, f32>,
    /// `mlp.linear1.bias`.
    pub b1: ArrayView1<'a, f32>,
    /// `mlp.linear2.weight`.
    pub w2: ArrayView2<'a, f32>,
    /// `mlp.linear2.bias`.
    pub b2: ArrayView1<'a, f32>,
}

impl MlpParams<'_> {
    /// The channel counts the four arrays describe, checked for consistency.
    pub fn shapes(&self) -> Result<CwtShapes> {
        let (ch, cs) = self.w1.dim();
        let (ct, ch2) = self.w2.dim();
        let shapes = CwtShapes { cs, ch, ct };
        if cs == 0 || ch == 0 {
            return Err(KdError::EmptyInput { what: "mlp.linear1.weight", shape: vec![ch, cs] });
        }
        if ct == 0 {
            return Err(KdError::EmptyInput { what: "mlp.linear2.weight", shape: vec![ct, ch2] });
        }
        if self.b1.len() != ch {
            return Err(KdError::ShapeMismatch {
                what: "mlp.linear1.bias",
                expected: vec![ch],
                got: vec![self.b1.len()],
            });
        }
        if ch2 != ch {
            return Err(KdError::ShapeMismatch {
                what: "mlp.linear2.weight",
                expected: vec![ct, ch],
                got: vec![ct, ch2],
            });
        }
        if self.b2.len() != ct {
            return Err(KdError::ShapeMismatch {
                what: "mlp.linear2.bias",
                expected: vec![ct],
                got: vec![self.b2.len()],
            });
        }
        shapes.validate()?;
        Ok(shapes)
    }
}
