//! DIST's candle op against DIST written in candle's own ops and their autograd. The same bodies run on candle's CPU device
//! (`tests/candle_ops.rs`) and on a GPU (`tests/candle_cuda.rs`).

use candle_core::{DType, Device, Tensor};
use kd_kernels::dist::DistConfig;
use kd_kernels_candle::Dist;

use super::{check_pair, log_softmax, OrMsg, TestResult};

/// DIST, §8: Pearson correlations of the class distributions across the classes of each pixel and across
/// the pixels of each class (eps 1e-8 added to the product of the norms).
pub fn dist_reference(s: &Tensor, t: &Tensor, cfg: &DistConfig) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = s.dims4()?;
    // Rows of C probabilities, one per pixel.
    let probs = |x: &Tensor| -> candle_core::Result<Tensor> {
        let p = log_softmax(&x.to_dtype(DType::F32)?.affine(1.0 / cfg.tau, 0.0)?, 1)?.exp()?;
        p.permute((0, 2, 3, 1))?.reshape((n * h * w, c))
    };
    // 1 - the mean over rows of the correlation of a's and b's rows.
    let one_minus_pearson = |a: &Tensor, b: &Tensor| -> candle_core::Result<Tensor> {
        let ac = a.broadcast_sub(&a.mean_keepdim(1)?)?;
        let bc = b.broadcast_sub(&b.mean_keepdim(1)?)?;
        let dot = (&ac * &bc)?.sum(1)?;
        let den = (ac.sqr()?.sum(1)?.sqrt()? * bc.sqr()?.sum(1)?.sqrt()?)?.affine(1.0, 1e-8)?;
        (dot / den)?.mean_all()?.affine(-1.0, 1.0)
    };
    let (ps, pt) = (probs(s)?, probs(t)?);
    let inter = one_minus_pearson(&ps, &pt)?;
    let intra = one_minus_pearson(&ps.t()?.contiguous()?, &pt.t()?.contiguous()?)?;
    let scale = cfg.loss_weight * cfg.tau * cfg.tau;
    inter.affine(scale * cfg.beta, 0.0)? + intra.affine(scale * cfg.gamma, 0.0)?
}

pub fn check_dist(device: &Device) -> TestResult {
    let cfg = DistConfig { tau: 2.0, beta: 1.5, gamma: 0.5, loss_weight: 3.0 };
    let dist = Dist::new(cfg).or_msg("Dist::new")?;
    check_pair(device, "dist", false, &|s, t| dist.loss(s, t), &|s, t| dist_reference(s, t, &cfg))
}

candle_tests! {
    dist_matches_candle_autograd => check_dist,
}
