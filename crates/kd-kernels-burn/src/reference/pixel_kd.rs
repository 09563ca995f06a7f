//! Pixel KD's reference.

use ::burn::tensor::activation::log_softmax;
use ::burn::tensor::Tensor;

use kd_kernels::pixel_kd::PixelKdConfig;
use kd_kernels::shape::Nchw;

/// Pixel KD (`docs/losses.md` §2): a softmax over the C channels of each pixel of `x / tau`;
/// `loss_weight * [tau^2] / divisor * sum_pixels KL(pT || pS)`.
pub fn pixel_kd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &PixelKdConfig) -> Tensor<1> {
    let [n, c, h, w] = student.dims();
    let shape = Nchw { n, c, h, w };
    let log_ps = log_softmax(student * (1.0 / config.tau), 1);
    let log_pt = log_softmax(teacher * (1.0 / config.tau), 1);
    let kl = (log_pt.clone().exp() * (log_pt - log_ps)).sum();
    let tau2 = if config.scale_tau2 { config.tau * config.tau } else { 1.0 };
    kl * (config.loss_weight * tau2 / config.reduction.divisor(&shape))
}
