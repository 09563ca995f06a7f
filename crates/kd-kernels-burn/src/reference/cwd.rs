//! CWD's reference.

use ::burn::tensor::activation::log_softmax;
use ::burn::tensor::Tensor;

use kd_kernels::cwd::CwdConfig;

/// CWD (`docs/losses.md` §1.3): a softmax over the H·W positions of each (n, c) row of `x / tau`;
/// `loss_weight * tau^2 / (N*C) * sum_rows KL(pT || pS)`.
pub fn cwd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &CwdConfig) -> Tensor<1> {
    let [n, c, h, w] = student.dims();
    let rows = |x: Tensor<4>| log_softmax(x.reshape([n * c, h * w]) * (1.0 / config.tau), 1);
    let (log_ps, log_pt) = (rows(student), rows(teacher));
    let kl = (log_pt.clone().exp() * (log_pt - log_ps)).sum();
    kl * (config.loss_weight * config.tau * config.tau / (n * c) as f64)
}
