//! The same losses written in burn's own tensor operations, differentiated by burn's autograd: the oracle
//! the tests hold [`super::cwd_loss`] and [`super::pixel_kd_loss`] to, and the baseline of the bench.
//!
//! They follow `docs/losses.md` as the CPU reference does (`log p = z - LSE(z)` through burn's
//! `log_softmax`), take already checked configurations, and are as fast as burn makes them: several
//! passes over the logits, each materialised.
//!
//! Temperatures multiply by `1 / tau` rather than divide by `tau`: burn 0.22's autodiff rounds the
//! reciprocal of a scalar divisor to f32 in the backward of `div_scalar`, which would leave f64 gradients
//! with f32 accuracy.
//!
//! Each family's reference is in its own file (`src/reference/<family>.rs`); this module holds what several share.

use ::burn::tensor::ops::PadMode;
use ::burn::tensor::{Tensor, TensorData};

use kd_kernels::skd::NORM_EPS;

mod cirkd;
mod cwd;
mod cwt;
mod dist;
mod icsd;
mod ifvd;
mod pixel_kd;
mod pkd;
mod semckd;
mod skd;

pub use cirkd::cirkd_loss;
pub use cwd::cwd_loss;
pub use cwt::cwt_loss;
pub use dist::dist_loss;
pub use icsd::icsd_loss;
pub use ifvd::ifvd_loss;
pub use pixel_kd::pixel_kd_loss;
pub use pkd::pkd_loss;
pub use semckd::semckd_loss;
pub use skd::skd_loss;

/// A `k x k`, stride `k` pooling with `ceil_mode` (an edge window takes what lies inside the map): the map padded
/// to whole windows, by repeating its edge for the max (which leaves every window's max and sends its gradient
/// to the edge value it copies), by zeros for the average, whose sums are divided by each window's part inside.
fn ceil_pool(x: Tensor<4>, k: usize, max: bool) -> Tensor<4> {
    if k == 1 {
        return x;
    }
    let [n, c, h, w] = x.dims();
    let (ph, pw) = (h.div_ceil(k), w.div_ceil(k));
    let pad = [(0, ph * k - h), (0, pw * k - w)];
    let windows = |x: Tensor<4>| x.reshape([n, c, ph, k, pw, k]);
    if max {
        return windows(x.pad(pad, PadMode::Edge)).max_dim(5).max_dim(3).reshape([n, c, ph, pw]);
    }
    let inside = |o: usize, len: usize| (len.min((o + 1) * k) - o * k) as f64;
    let counts: Vec<f64> = (0..ph * pw).map(|q| inside(q / pw, h) * inside(q % pw, w)).collect();
    let counts = Tensor::<4>::from_data(TensorData::new(counts, [1, 1, ph, pw]), (&x.device(), x.dtype()));
    windows(x.pad(pad, PadMode::Constant(0.0))).sum_dim(5).sum_dim(3).reshape([n, c, ph, pw]) / counts
}

/// Each pixel's channel vector `x / max(|x|, 1e-12)`, pixel-major: `[N, P, C]`.
fn normalised_pixels(x: Tensor<4>) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    let f = x.reshape([n, c, h * w]).swap_dims(1, 2);
    let norm = (f.clone() * f.clone()).sum_dim(2).sqrt().clamp_min(NORM_EPS);
    f / norm
}
