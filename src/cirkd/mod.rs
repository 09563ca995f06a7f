//! CIRKD: cross-image pixel-relation distillation (Yang et al., CVPR 2022), its mini-batch form,
//! `docs/losses.md §10`.
//!
//! Student `[B, Cs, H, W]` and teacher `[B, Ct, H, W]` features (the channels may differ) are pooled, each
//! pixel's feature vector is normalised, and for every ordered pair of images `(i, j)`, `i = j` included, each
//! pixel of image `i` gets a distribution over the pixels of image `j`; the student's distributions are
//! pulled to the teacher's by KL divergence:
//!
//! ```text
//! x'     = 4x4 average pool, ceil_mode, when H >= 256 and W >= 256 (pool = Auto, the official); K x K
//!          (pool = Avg(K)); or x (pool = None)
//! F      = x' / max(|x'|_C, 1e-12)                       per pixel, [C, P] per image, P = H' * W'
//! s_ij   = F_S,i^T F_S,j / tau,  t_ij likewise           [P, P] logits per ordered pair
//! KL_ij  = (1/P) sum_p sum_q pt (log pt - log ps)        ps, pt = softmax over q of row p
//! L      = loss_weight * sum_{i,j} KL_ij / B^2
//! ```
//!
//! [`CirkdCpu`] never forms a `P x P` matrix beyond a tile: the forward keeps running statistics per row
//! (max and sum of exponentials for both rows, and `sum e^(t - max) (t - s)`), FlashAttention's online
//! softmax, and the backward recomputes the logits tile by tile from those statistics, with
//! `dL/ds_ij[p, q] = loss_weight * (ps - pt)[p, q] / (P B^2)`. Its memory beyond the inputs and the gradient is
//! the normalised features (the inputs' size), `O(P)` row statistics and one tile. The teacher is a constant
//! (no teacher gradient).
//!
//! [`CirkdCuda`] runs the same computation with the kernels of `kernels/cirkd.cu`: the reciprocal of every
//! pixel's clamped norm (and, with pooling, the pooled features) into the workspace, then one launch group per
//! anchor image `i` (in order, on the stream, with no host synchronisation): a forward streaming the column
//! tiles of every row tile of the pairs `(i, j)` with the same online statistics (each row's two log-sum-exps
//! kept, for the anchor's pairs only), and a backward recomputing the tiles in two passes, one owning the
//! anchor's rows' gradient and one the columns', so that every gradient element is summed in a fixed order by
//! one thread at a time. Every pass normalises the features where it reads them (the input, or its pooled
//! copy, times the pixel's reciprocal norm), so no normalised copy exists.
//!
//! Its workspace (device memory beyond the inputs, the loss and the gradient) is, in bytes per call, with
//! `P = H' * W'` the pixels after pooling and `r(x) = 64 * ceil(x / 64)` (every array starts on 256 bytes):
//!
//! ```text
//! 4 * ( r(2 B P)                   the reciprocal norm of every pixel, student and teacher
//!     + r(B Cs P) + r(B Ct P)      the pooled student and teacher, f32 (only when pooling: K > 1)
//!     + r(2 B P)                   row statistics of one anchor's B pairs: LSE(t) and LSE(s) - LSE(t)
//!     + r(B Cs P)                  d loss / d (normalised student), f32 (gradient calls whose gradient
//!                                  buffer cannot hold it: f16 or bf16, pooled, or accumulating)
//!     + r(B ceil(P / 32))          the forward's loss partials, one per block of an anchor's group
//!     + r(2 B) )                   each anchor's KL sum, f64
//! ```
//!
//! Unpooled, with an f32 gradient that is overwritten, that is `O(B * P)`: d loss / d (normalised student) is
//! summed in the gradient buffer itself and finished there pixel by pixel. Otherwise add the fp32 accumulator
//! (the student's size in f32) and, with pooling, the pooled features (the inputs' size over `K^2`); never
//! `O(P^2)` nor `O(B^2 * P)`. [`crate::family::Family::workspace_bound`] returns exactly this (in f32 words)
//! for an accumulating gradient call in the given dtype (the most any call takes). At `B = 8`,
//! `Cs = Ct = 256`, `128 x 256` unpooled that is 4,227,328 bytes (4 MiB) for an f32 gradient and
//! 272,662,784 bytes (260 MiB, 256 MiB of which the accumulator) for a bf16 or f16 one or an accumulating
//! call.

mod cpu;
pub(crate) mod driver;
#[cfg(feature = "emulator")]
pub mod emulate;
pub(crate) mod fixture;
#[cfg(test)]
pub(crate) mod launch_limits;
pub(crate) mod plan;

pub use crate::relation::{check_shapes, RelationShapes, NORM_EPS};
pub use cpu::CirkdCpu;
pub use driver::{CirkdBuffers, CirkdRawBuffers};

/// The CIRKD family ([`crate::family::Family`]); its shape is the checked [`RelationShapes`] of a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cirkd;

/// CIRKD on the GPU, with the surface of [`CirkdCpu`]: `cirkd_norms`, `cirkd_forward`, then for a gradient
/// `cirkd_grad_rows`, `cirkd_grad_columns` and `cirkd_finish` (`kernels/cirkd.cu`), on the caller's stream.
pub type CirkdCuda = crate::cuda::LossCuda<Cirkd>;

use crate::error::{KdError, Result};
use crate::relation::{Pooling, Window};
use crate::validate;

/// [`CirkdPool::Auto`] pools when both sides are at least this long (the official rule).
pub const AUTO_POOL_MIN_SIDE: usize = 256;
/// The window side [`CirkdPool::Auto`] pools with.
pub const AUTO_POOL_WINDOW: usize = 4;

/// The pooling in front of the relations: average windows, stride = window, `ceil_mode` (an edge window
/// averages the values inside the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CirkdPool {
    /// The official rule: a 4x4 average pool when `H >= 256` and `W >= 256`, else none.
    #[default]
    Auto,
    /// No pooling, whatever the size.
    None,
    /// A `K x K` average pool, whatever the size; `K >= 1` (1 is no pooling).
    Avg(usize),
}

impl CirkdPool {
    /// Parses the fixtures' spelling: `auto`, `none`, or a whole number `K`.
    pub fn parse(word: &str) -> Result<Self> {
        let pool = match word {
            "auto" => CirkdPool::Auto,
            "none" => CirkdPool::None,
            k => CirkdPool::Avg(k.parse::<usize>().map_err(|_| KdError::InvalidParameter {
                name: "pool",
                value: word.to_string(),
                requirement: "`auto`, `none` or a window side K >= 1",
            })?),
        };
        pool.validate()?;
        Ok(pool)
    }

    fn validate(self) -> Result<()> {
        match self {
            CirkdPool::Avg(k) if k == 0 || k > i32::MAX as usize => Err(KdError::InvalidParameter {
                name: "pool",
                value: k.to_string(),
                requirement: "a window side between 1 and 2^31 - 1",
            }),
            _ => Ok(()),
        }
    }

    /// The pooling a `H x W` map gets.
    pub(crate) fn pooling(self, h: usize, w: usize) -> Pooling {
        let k = match self {
            CirkdPool::Auto if h >= AUTO_POOL_MIN_SIDE && w >= AUTO_POOL_MIN_SIDE => AUTO_POOL_WINDOW,
            CirkdPool::Auto | CirkdPool::None => 1,
            CirkdPool::Avg(k) => k,
        };
        Pooling { window: Window::Avg, k }
    }
}

/// CIRKD's parameters (`docs/losses.md §10`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CirkdConfig {
    /// The temperature dividing the similarities; finite and > 0. Default 0.1 (CIRKD's
    /// `--contrast-temperature`).
    pub tau: f64,
    /// Factor on the loss; finite. Default 1 (the official module has none; CIRKD's `train_cirkdv2.py`
    /// multiplies it by `--lambda-minibatch-pixel`, 1).
    pub loss_weight: f64,
    /// The pooling; default the official rule.
    pub pool: CirkdPool,
}

impl Default for CirkdConfig {
    fn default() -> Self {
        CirkdConfig { tau: 0.1, loss_weight: 1.0, pool: CirkdPool::Auto }
    }
}

impl CirkdConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        validate::temperature(self.tau)?;
        validate::finite("loss_weight", self.loss_weight)?;
        self.pool.validate()
    }

    /// `(H', W')`, the feature map the relations are taken on.
    pub fn pooled_dims(&self, h: usize, w: usize) -> (usize, usize) {
        self.pool.pooling(h, w).pooled(h, w)
    }
}

impl crate::family::FamilyConfig for CirkdConfig {
    fn validate(&self) -> Result<()> {
        CirkdConfig::validate(self)
    }
}
