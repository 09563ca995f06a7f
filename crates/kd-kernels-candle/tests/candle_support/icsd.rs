//! ICSD's and AICSD's candle ops against the losses written in candle's own ops and their autograd. The same bodies run on candle's CPU device
//! (`tests/candle_ops.rs`) and on a GPU (`tests/candle_cuda.rs`).

use candle_core::{DType, Device, Tensor};
use kd_kernels::icsd::{AicsdConfig, IcsdConfig, IcsdVariant};
use kd_kernels_candle::{Aicsd, Icsd};

use super::pixel_kd::pixel_kd_reference;
use super::{check_pair, log_softmax, OrMsg, TestResult};

/// ICSD, official variant, §3.4/§3.5: softmax along H, `M = A_max(i,j) - G`, rows L2-normalised, the mean
/// squared difference over the C^2 entries divided by B.
pub fn icsd_reference(s: &Tensor, t: &Tensor, cfg: &IcsdConfig) -> candle_core::Result<Tensor> {
    assert_eq!(cfg.variant, IcsdVariant::Official, "the reference covers the official variant");
    let (b, c, _, _) = s.dims4()?;
    let device = s.device();
    // upper[i][j] = 1 where j >= i: there A_max(i,j) = A_j, else A_i.
    let upper: Vec<u8> = (0..c * c).map(|k| u8::from(k % c >= k / c)).collect();
    let upper = Tensor::from_vec(upper, (c, c), device)?;
    let matrix = |x: &Tensor| -> candle_core::Result<Tensor> {
        let log_p = log_softmax(&x.to_dtype(DType::F32)?.affine(1.0 / cfg.tau, 0.0)?, 2)?;
        let p = log_p.exp()?;
        let a = (&p * &log_p)?.sum((0, 2, 3))?.affine(1.0 / b as f64, 0.0)?; // [C]
        let flat = p.transpose(0, 1)?.flatten_from(1)?; // [C, B*H*W]
        let g = flat.matmul(&flat.t()?)?.affine(1.0 / b as f64, 0.0)?;
        let a_j = a.reshape((1, c))?.broadcast_as((c, c))?;
        let a_i = a.reshape((c, 1))?.broadcast_as((c, c))?;
        let m = (upper.where_cond(&a_j, &a_i)? - g)?;
        let norm = m.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        m.broadcast_div(&norm)
    };
    let diff = (matrix(s)? - matrix(t)?)?;
    diff.sqr()?.sum_all()?.affine(cfg.loss_weight / (c * c * b) as f64, 0.0)
}

pub fn check_icsd(device: &Device) -> TestResult {
    let cfg = IcsdConfig::default();
    let icsd = Icsd::new(cfg).or_msg("Icsd::new")?;
    check_pair(device, "icsd", false, &|s, t| icsd.loss(s, t), &|s, t| icsd_reference(s, t, &cfg))
}

pub fn check_aicsd(device: &Device) -> TestResult {
    let cfg = AicsdConfig::default();
    let aicsd = Aicsd::new(cfg).or_msg("Aicsd::new")?;
    let epoch = 30.0;
    let alpha = cfg.alpha(epoch).or_msg("alpha")?;
    check_pair(device, "aicsd", false, &|s, t| aicsd.loss(s, t, epoch), &|s, t| {
        icsd_reference(s, t, &cfg.icsd)?.affine(alpha, 0.0)?
            + pixel_kd_reference(s, t, &cfg.kd)?.affine(1.0 - alpha, 0.0)?
    })
}

candle_tests! {
    icsd_matches_candle_autograd => check_icsd,
    aicsd_matches_candle_autograd => check_aicsd,
}
