//! CIRKD's reference.

use ::burn::tensor::activation::log_softmax;
use ::burn::tensor::Tensor;

use super::{ceil_pool, normalised_pixels};
use kd_kernels::cirkd::{CirkdConfig, CirkdPool, AUTO_POOL_MIN_SIDE, AUTO_POOL_WINDOW};

/// CIRKD (`docs/losses.md` §10.1), with the `P x P` relations of every ordered pair of images formed: the pool
/// (average, `ceil_mode`; `auto` pools 4x4 when both sides are at least 256), per-pixel normalisation, for
/// images `(i, j)` the rows `F_i^T F_j / tau` of each side through a softmax, `KL(pt || ps)` summed over
/// every row, `loss_weight / (P B^2)` times that sum.
pub fn cirkd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &CirkdConfig) -> Tensor<1> {
    let [b, _, h, w] = student.dims();
    let k = match config.pool {
        CirkdPool::Auto if h >= AUTO_POOL_MIN_SIDE && w >= AUTO_POOL_MIN_SIDE => AUTO_POOL_WINDOW,
        CirkdPool::Auto | CirkdPool::None => 1,
        CirkdPool::Avg(k) => k,
    };
    let p = h.div_ceil(k) * w.div_ceil(k);
    let log_relations = |x: Tensor<4>| {
        let f = normalised_pixels(ceil_pool(x, k, false));
        let c = f.dims()[2];
        let all = f.reshape([b * p, c]);
        let logits = (all.clone().matmul(all.transpose()) * (1.0 / config.tau)).reshape([b, p, b, p]);
        log_softmax(logits, 3)
    };
    let (log_ps, log_pt) = (log_relations(student), log_relations(teacher));
    let kl = (log_pt.clone().exp() * (log_pt - log_ps)).sum();
    kl * (config.loss_weight / (p * b * b) as f64)
}
