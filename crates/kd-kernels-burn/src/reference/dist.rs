//! DIST's reference.

use ::burn::tensor::activation::softmax;
use ::burn::tensor::Tensor;

use kd_kernels::dist::DistConfig;

/// DIST (`docs/losses.md` §8): per pixel a softmax over the C classes of `x / tau`; `loss_weight * tau^2 *
/// (beta * (1 - mean Pearson correlation across the classes of each pixel) + gamma * (1 - mean correlation
/// across the pixels of each class))`, eps 1e-8 added to the product of the norms.
pub fn dist_loss(student: Tensor<4>, teacher: Tensor<4>, config: &DistConfig) -> Tensor<1> {
    let [n, c, h, w] = student.dims();
    let rows = |x: Tensor<4>| softmax(x * (1.0 / config.tau), 1).permute([0, 2, 3, 1]).reshape([n * h * w, c]);
    // 1 - the mean over the rows of the correlation of a's and b's rows.
    let one_minus_pearson = |a: Tensor<2>, b: Tensor<2>| -> Tensor<1> {
        let a = a.clone() - a.mean_dim(1);
        let b = b.clone() - b.mean_dim(1);
        let dot = (a.clone() * b.clone()).sum_dim(1);
        let den = (a.clone() * a).sum_dim(1).sqrt() * (b.clone() * b).sum_dim(1).sqrt() + 1e-8;
        (dot / den).mean().neg() + 1.0
    };
    let (ps, pt) = (rows(student), rows(teacher));
    let inter = one_minus_pearson(ps.clone(), pt.clone());
    let intra = one_minus_pearson(ps.transpose(), pt.transpose());
    let scale = config.loss_weight * config.tau * config.tau;
    inter * (scale * config.beta) + intra * (scale * config.gamma)
}
