//! SemCKD's reference.

use ::burn::tensor::activation::{relu, softmax};
use ::burn::tensor::module::adaptive_avg_pool2d;
use ::burn::tensor::Tensor;

use crate::SemckdMlp;
use kd_kernels::semckd::SemckdConfig;

/// SemCKD (`docs/losses.md` §4.2), the regressor outputs `proj[i][j]` given: per layer the batch Gram
/// `X X^T` of `X = reshape(F, [B, D])`, its rows through the layer's MLP (`W2 relu(W1 g + b1) + b2`,
/// L2-normalised: `z / ||z||`, or `z / max(||z||, eps)` with `config.eps`), the attention
/// `alpha[b, i, :] = softmax_j <q_i[b], k_j[b]>`, the per-sample MSE of `proj[i][j]` against
/// `adaptive_avg_pool2d(F^t_j, (h, h))`, and `loss_weight / (B * S) * sum alpha * l`.
///
/// The f32 MLP parameters are cast to the maps' dtype (exact for f64), so the f64 reference computes in
/// f64 throughout.
pub fn semckd_loss(
    student: &[Tensor<4>],
    teacher: &[Tensor<4>],
    proj: &[Vec<Tensor<4>>],
    query: &[SemckdMlp],
    key: &[SemckdMlp],
    config: &SemckdConfig,
) -> Tensor<1> {
    let batch = student[0].dims()[0];
    let dtype = student[0].dtype();
    let embed = |map: &Tensor<4>, mlp: &SemckdMlp| -> Tensor<2> {
        let [b, c, h, w] = map.dims();
        let x = map.clone().reshape([b, c * h * w]);
        let gram = x.clone().matmul(x.transpose());
        let linear = |input: Tensor<2>, weight: &Tensor<2>, bias: &Tensor<1>| {
            input.matmul(weight.clone().cast(dtype).transpose()) + bias.clone().cast(dtype).unsqueeze::<2>()
        };
        let hidden = relu(linear(gram, &mlp.linear1_weight, &mlp.linear1_bias));
        let z = linear(hidden, &mlp.linear2_weight, &mlp.linear2_bias);
        let norm = (z.clone() * z.clone()).sum_dim(1).sqrt();
        let norm = match config.eps {
            Some(eps) => norm.clamp_min(eps),
            None => norm,
        };
        z / norm
    };
    let q: Vec<Tensor<2>> = student.iter().zip(query).map(|(m, mlp)| embed(m, mlp)).collect();
    let k: Vec<Tensor<2>> = teacher.iter().zip(key).map(|(m, mlp)| embed(m, mlp)).collect();
    // e[b, i, j] = <q_i[b], k_j[b]>: [B, S, d] x [B, d, T].
    let scores = Tensor::stack::<3>(q, 1).matmul(Tensor::stack::<3>(k, 1).swap_dims(1, 2));
    let alpha = softmax(scores, 2);
    // l[b, i, j]: [B, S, T].
    let mse = Tensor::stack::<3>(
        proj.iter()
            .map(|row| {
                let per_teacher: Vec<Tensor<2>> = row
                    .iter()
                    .zip(teacher)
                    .map(|(shat, map)| {
                        let [b, c, h, _] = shat.dims();
                        let target = adaptive_avg_pool2d(map.clone(), [h, h]);
                        let diff = shat.clone() - target;
                        (diff.clone() * diff).reshape([b, c * h * h]).mean_dim(1)
                    })
                    .collect();
                Tensor::cat(per_teacher, 1)
            })
            .collect(),
        1,
    );
    (alpha * mse).sum() * (config.loss_weight / (batch * student.len()) as f64)
}
