//! SKD's reference.

use ::burn::tensor::Tensor;

use super::{ceil_pool, normalised_pixels};
use kd_kernels::skd::SkdConfig;

/// SKD (`docs/losses.md` §9.1), with the `P x P` similarities formed: the pool (2x2 max, `ceil_mode`, or none),
/// per-pixel normalisation, `A = F^T F` per image and side, `loss_weight * mean (A_S - A_T)^2`.
pub fn skd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &SkdConfig) -> Tensor<1> {
    let k = config.pool.window();
    let similarities = |x: Tensor<4>| {
        let f = normalised_pixels(ceil_pool(x, k, true));
        f.clone().matmul(f.swap_dims(1, 2))
    };
    let d = similarities(student) - similarities(teacher);
    (d.clone() * d).mean() * config.loss_weight
}
