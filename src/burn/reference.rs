//! The same losses written in burn's own tensor operations, differentiated by burn's autograd: the oracle
//! the tests hold [`super::cwd_loss`] and [`super::pixel_kd_loss`] to, and the baseline of the bench.
//!
//! They follow `docs/losses.md` as the CPU reference does (`log p = z - LSE(z)` through burn's
//! `log_softmax`), take already checked configurations, and are as fast as burn makes them: several
//! passes over the logits, each materialised.

use ::burn::tensor::activation::{log_softmax, relu};
use ::burn::tensor::Tensor;

use super::CwtMlp;
use crate::cwd::CwdConfig;
use crate::cwt::{CwtConfig, CwtNormalize};
use crate::pixel_kd::PixelKdConfig;
use crate::shape::Nchw;

/// CWD (`docs/losses.md` §1.3): a softmax over the H·W positions of each (n, c) row of `x / tau`;
/// `loss_weight * tau^2 / (N*C) * sum_rows KL(pT || pS)`.
pub fn cwd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &CwdConfig) -> Tensor<1> {
    let [n, c, h, w] = student.dims();
    let rows = |x: Tensor<4>| log_softmax(x.reshape([n * c, h * w]) / config.tau, 1);
    let (log_ps, log_pt) = (rows(student), rows(teacher));
    let kl = (log_pt.clone().exp() * (log_pt - log_ps)).sum();
    kl * (config.loss_weight * config.tau * config.tau / (n * c) as f64)
}

/// Pixel KD (`docs/losses.md` §2): a softmax over the C channels of each pixel of `x / tau`;
/// `loss_weight * [tau^2] / divisor * sum_pixels KL(pT || pS)`.
pub fn pixel_kd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &PixelKdConfig) -> Tensor<1> {
    let [n, c, h, w] = student.dims();
    let shape = Nchw { n, c, h, w };
    let log_ps = log_softmax(student / config.tau, 1);
    let log_pt = log_softmax(teacher / config.tau, 1);
    let kl = (log_pt.clone().exp() * (log_pt - log_ps)).sum();
    let tau2 = if config.scale_tau2 { config.tau * config.tau } else { 1.0 };
    kl * (config.loss_weight * tau2 / config.reduction.divisor(&shape))
}

/// CWT (`docs/losses.md` §5): per pixel `Y = W2 ReLU(W1 x + b1) + b2`;
/// `loss_weight * sum (Y - F_t)^2 / D`, `D = N` or `N*Ct*H*W`.
pub fn cwt_loss(student: Tensor<4>, teacher: Tensor<4>, mlp: &CwtMlp, config: &CwtConfig) -> Tensor<1> {
    let [n, cs, h, w] = student.dims();
    let ct = teacher.dims()[1];
    let pixels = |x: Tensor<4>, c: usize| x.permute([0, 2, 3, 1]).reshape([n * h * w, c]);
    let hidden = relu(pixels(student, cs).matmul(mlp.w1.clone().transpose()) + mlp.b1.clone().unsqueeze::<2>());
    let y = hidden.matmul(mlp.w2.clone().transpose()) + mlp.b2.clone().unsqueeze::<2>();
    let e = y - pixels(teacher, ct);
    let divisor = match config.normalize {
        CwtNormalize::Batch => n,
        CwtNormalize::Mean => n * ct * h * w,
    } as f64;
    (e.clone() * e).sum() * (config.loss_weight / divisor)
}
