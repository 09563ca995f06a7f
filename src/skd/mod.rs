//! SKD: pair-wise similarity distillation (Liu et al., CVPR 2019, "Structured Knowledge Distillation"),
//! `docs/losses.md §9`.
//!
//! Student `[N, Cs, H, W]` and teacher `[N, Ct, H, W]` features (the channels may differ) are pooled, each
//! pixel's feature vector is normalised, and every pixel's similarity to every other pixel of its image is
//! compared between student and teacher:
//!
//! ```text
//! x'  = max pool 2x2, stride 2, ceil_mode (pool = Max2x2, the official)  or  x (pool = None)
//! F   = x' / max(|x'|_C, 1e-12)                     per pixel, [C, P] per image, P = H' * W'
//! A   = F^T F                                       [P, P] per image
//! L   = loss_weight * mean_{N*P*P} (A_S - A_T)^2
//! ```
//!
//! [`SkdCpu`] never forms `A`: per image, `|A_S - A_T|_F^2 = |G_SS|^2 - 2 |G_ST|^2 + |G_TT|^2` with the
//! `C x C` Gram matrices `G_SS = F_S F_S^T`, `G_ST = F_S F_T^T`, `G_TT = F_T F_T^T`, and
//! `dL/dF_S = 4 loss_weight / (N P^2) (G_SS F_S - G_ST F_T)`, so its memory beyond the inputs and the gradient
//! is `O(C^2 + C * P)` for one image at a time, and full resolution (no pooling) is as affordable as the
//! pooled official. Those three terms are large and nearly cancel when the student is close to its teacher;
//! with `Cs = Ct` the reference writes them through `D = F_S - F_T` instead (`A_S - A_T = D^T F_S + F_T^T D`:
//! `|A_S - A_T|^2 = <G_DD, G_SS + G_TT> + 2 <G_DT, G_SD>`, `dL/dF_S ∝ G_SD F_S + G_ST D`), where every term is
//! of the size of the difference and identical inputs give exactly 0. The teacher is a constant (no teacher
//! gradient).
//!
//! [`SkdCuda`] computes the same with the kernels of `kernels/skd.cu` (the same Gram form and the same
//! rearrangement through `D` for `Cs = Ct`): pooled, normalised features, the stacked Gram matrix of
//! `[F_S; F_T]` (and `D`) split over pixel chunks and merged in a fixed order, then the loss and the gradient
//! from its blocks. For f16 and bf16 inputs with `Cs = Ct` the Gram matrices are computed on tensor cores
//! (split-f16 operand pairs, three products per product: [`GramPath::TensorCores`]), otherwise on CUDA cores in
//! fp32; [`gram_path`] says which (`docs/losses.md §9.6`). No `P x P` matrix exists, nor a copy of the pooled features: the kernels pool and
//! normalise each entry of `[F_S; F_T; D]` from the inputs where they need it. The workspace
//! ([`SkdConfig::workspace_bytes`]) is `O(N R^2)` for the Grams and their chunk partials (`R = Cs + Ct`, or
//! `3 Cs` when `Cs = Ct`) plus `O(N P)`, one float per pooled pixel and side (the reciprocal of its clamped
//! norm); exactly `4 (a(2 N P) + a(K N R^2) + a(2 N R^2) + a(N max(Cs, Ct))) + 4` bytes, `a(x)` being `x`
//! rounded up to a multiple of 64 and `K <= 8` the Gram chunks of an image (`k = min(8, max(1, ceil(P /
//! 1024)))`, `K = ceil(P / (16 ceil(ceil(P / k) / 16)))`; `docs/losses.md §9.5`).

mod cpu;
pub(crate) mod driver;
#[cfg(feature = "emulator")]
pub mod emulate;
pub(crate) mod fixture;
#[cfg(test)]
pub(crate) mod launch_limits;
pub(crate) mod plan;

pub use crate::relation::{check_shapes, RelationShapes, NORM_EPS};
pub use cpu::SkdCpu;
pub use driver::{SkdBuffers, SkdRawBuffers};

/// The SKD family ([`crate::family::Family`]); its shape is a [`RelationShapes`] (student dims and the
/// teacher's channel count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skd;

/// SKD on the GPU, with the same computation as [`SkdCpu`] (`kernels/skd.cu`).
pub type SkdCuda = crate::cuda::LossCuda<Skd>;

/// Which kernel computes the Gram partials of a call ([`gram_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GramPath {
    /// fp32 FMAs, a 16 x 16 tile per block (`skd_gram`): f32 inputs, and `Cs != Ct`.
    CudaCores,
    /// Tensor cores on split-f16 operand pairs, a 64 x 64 tile per block (`skd_gram_tc`): f16 and bf16 inputs
    /// with `Cs = Ct`, whose loss and gradient are written through `D = S_hat - T_hat`.
    TensorCores,
}

/// The Gram path [`SkdCuda`] takes for a call on `shapes` in `dtype` (a function of those alone; any
/// [`SkdConfig`]).
pub fn gram_path(shapes: &RelationShapes, dtype: crate::DType) -> GramPath {
    plan::gram_path(shapes, dtype)
}

use crate::error::{KdError, Result};
use crate::relation::{Pooling, Window};
use crate::validate;

/// The pooling in front of the similarities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SkdPool {
    /// Max pool 2x2, stride 2, `ceil_mode` (edge windows take the max of what lies inside): the official
    /// module's, which exists there only to make the `P x P` matrices fit.
    #[default]
    Max2x2,
    /// No pooling: every pixel of the feature map.
    None,
}

impl SkdPool {
    /// The pooling window's side: 2 or 1 (the fixtures' `pool` parameter).
    pub fn window(self) -> usize {
        match self {
            SkdPool::Max2x2 => 2,
            SkdPool::None => 1,
        }
    }

    /// The pool of window side `k`: 2 ([`SkdPool::Max2x2`]) or 1 ([`SkdPool::None`]).
    pub fn from_window(k: usize) -> Result<Self> {
        match k {
            2 => Ok(SkdPool::Max2x2),
            1 => Ok(SkdPool::None),
            _ => Err(KdError::InvalidParameter {
                name: "pool",
                value: k.to_string(),
                requirement: "2 (the official 2x2 max pool) or 1 (no pooling)",
            }),
        }
    }

    pub(crate) fn pooling(self) -> Pooling {
        match self {
            SkdPool::Max2x2 => Pooling { window: Window::Max, k: 2 },
            SkdPool::None => Pooling::NONE,
        }
    }
}

/// SKD's parameters (`docs/losses.md §9`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkdConfig {
    /// Factor on the mean squared similarity difference; finite. Default 1 (the official module has none;
    /// CIRKD's `train_kd.py` multiplies it by `--lambda-skd`, 10 in its scripts).
    pub loss_weight: f64,
    /// The pooling; default the official 2x2 max pool.
    pub pool: SkdPool,
}

impl Default for SkdConfig {
    fn default() -> Self {
        SkdConfig { loss_weight: 1.0, pool: SkdPool::Max2x2 }
    }
}

impl SkdConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate::finite("loss_weight", self.loss_weight)
    }

    /// The device workspace, in bytes, that [`SkdCuda`] needs for a call on `shapes` (any dtype, any outputs):
    /// what [`SkdCuda::reserve`](crate::cuda::LossCuda::reserve) allocates.
    pub fn workspace_bytes(&self, shapes: &RelationShapes) -> Result<usize> {
        let floats = plan::workspace_bound(self, shapes)?;
        Ok(4 * floats + 4 * driver::COUNTERS)
    }

    /// `(H', W')`, the feature map the similarities are taken on: `ceil(H / 2)`, `ceil(W / 2)` or `(H, W)`.
    pub fn pooled_dims(&self, h: usize, w: usize) -> (usize, usize) {
        self.pool.pooling().pooled(h, w)
    }
}

impl crate::family::FamilyConfig for SkdConfig {
    fn validate(&self) -> Result<()> {
        SkdConfig::validate(self)
    }
}
