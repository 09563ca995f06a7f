//! Pixel KD's candle op against pixel KD written in candle's own ops and their autograd. The same bodies run on candle's CPU device
//! (`tests/candle_ops.rs`) and on a GPU (`tests/candle_cuda.rs`).

use candle_core::{DType, Device, Tensor};
use kd_kernels::pixel_kd::{PixelKdConfig, Reduction};
use kd_kernels_candle::PixelKd;

use super::{check_pair, log_softmax, verdict, OrMsg, TestResult};

/// Pixel KD, §2.2: a softmax over C of x / tau per pixel, the summed KL over the reduction's divisor.
pub fn pixel_kd_reference(s: &Tensor, t: &Tensor, cfg: &PixelKdConfig) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = s.dims4()?;
    let z = |x: &Tensor| x.to_dtype(DType::F32)?.affine(1.0 / cfg.tau, 0.0);
    let log_ps = log_softmax(&z(s)?, 1)?;
    let log_pt = log_softmax(&z(t)?, 1)?;
    let kl = (log_pt.exp()? * (log_pt - log_ps)?)?.sum_all()?;
    let divisor = match cfg.reduction {
        Reduction::Mean => (n * c * h * w) as f64,
        Reduction::BatchMean => n as f64,
        Reduction::Sum => 1.0,
        Reduction::PixelMean => (n * h * w) as f64,
    };
    let tau2 = if cfg.scale_tau2 { cfg.tau * cfg.tau } else { 1.0 };
    kl.affine(cfg.loss_weight * tau2 / divisor, 0.0)
}

pub fn check_pixel_kd(device: &Device) -> TestResult {
    let mut failures = Vec::new();
    for (reduction, scale_tau2) in
        [(Reduction::Mean, false), (Reduction::BatchMean, true), (Reduction::PixelMean, false)]
    {
        let cfg = PixelKdConfig { tau: 2.0, loss_weight: 10.0, reduction, scale_tau2 };
        let kd = PixelKd::new(cfg).or_msg("PixelKd::new")?;
        let name = format!("pixel_kd {}", reduction.name());
        if let Err(e) = check_pair(device, &name, false, &|s, t| kd.loss(s, t), &|s, t| pixel_kd_reference(s, t, &cfg))
        {
            failures.push(e);
        }
    }
    verdict(failures)
}

candle_tests! {
    pixel_kd_matches_candle_autograd => check_pixel_kd,
}
