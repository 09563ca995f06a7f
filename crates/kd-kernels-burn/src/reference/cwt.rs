//! CWT's reference.

use ::burn::tensor::activation::relu;
use ::burn::tensor::Tensor;

use crate::CwtMlp;
use kd_kernels::cwt::{CwtConfig, CwtNormalize};

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
