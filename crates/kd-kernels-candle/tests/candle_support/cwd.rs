//! CWD's candle op against CWD written in candle's own ops and their autograd. The same bodies run on candle's CPU device
//! (`tests/candle_ops.rs`) and on a GPU (`tests/candle_cuda.rs`).

use candle_core::{DType, Device, Tensor};
use kd_kernels::cwd::CwdConfig;
use kd_kernels_candle::Cwd;

use super::{check_pair, log_softmax, OrMsg, TestResult};

/// CWD, §1.3: rows (n, c), a softmax over H*W of x / tau, `w tau^2 / (N C) sum_r KL(pT || pS)`.
pub fn cwd_reference(s: &Tensor, t: &Tensor, cfg: &CwdConfig) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = s.dims4()?;
    let rows = |x: &Tensor| x.to_dtype(DType::F32)?.reshape((n * c, h * w))?.affine(1.0 / cfg.tau, 0.0);
    let log_ps = log_softmax(&rows(s)?, 1)?;
    let log_pt = log_softmax(&rows(t)?, 1)?;
    let kl = (log_pt.exp()? * (log_pt - log_ps)?)?.sum_all()?;
    kl.affine(cfg.loss_weight * cfg.tau * cfg.tau / (n * c) as f64, 0.0)
}

pub fn check_cwd(device: &Device) -> TestResult {
    let cfg = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: false };
    let cwd = Cwd::new(cfg).or_msg("Cwd::new")?;
    check_pair(device, "cwd", false, &|s, t| cwd.loss(s, t), &|s, t| cwd_reference(s, t, &cfg))?;
    let cfg = CwdConfig { tau: 2.0, loss_weight: 5.0, teacher_grad: true };
    let cwd = Cwd::new(cfg).or_msg("Cwd::new")?;
    check_pair(device, "cwd teacher_grad", true, &|s, t| cwd.loss(s, t), &|s, t| cwd_reference(s, t, &cfg))
}

candle_tests! {
    cwd_matches_candle_autograd => check_cwd,
}
