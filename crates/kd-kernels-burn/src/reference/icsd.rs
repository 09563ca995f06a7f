//! ICSD's reference.

use ::burn::tensor::activation::log_softmax;
use ::burn::tensor::{Tensor, TensorData};

use kd_kernels::icsd::{IcsdConfig, IcsdVariant};

/// ICSD's `L_ICS` (`docs/losses.md` §3.4 to §3.7): per class map a softmax (official: along H, per column;
/// paper: over H·W), the `C x C` matrix `M` (official: `A_max(i,j) - G`; paper: the pairwise KL), rows L2
/// normalised (eps 1e-12), `loss_weight / (C^2 B) * sum (Mh_S - Mh_T)^2`.
pub fn icsd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &IcsdConfig) -> Tensor<1> {
    let [b, c, _, _] = student.dims();
    let (mh_s, mh_t) = (icsd_matrix(student, config), icsd_matrix(teacher, config));
    let d = mh_s - mh_t;
    (d.clone() * d).sum() * (config.loss_weight / ((c * c) as f64 * b as f64))
}

/// The row-normalised matrix `Mh` of one side.
fn icsd_matrix(x: Tensor<4>, config: &IcsdConfig) -> Tensor<2> {
    let [b, c, h, w] = x.dims();
    let device = x.device();
    let inv_b = 1.0 / b as f64;
    // Class maps as rows: [C, B*H*W].
    let rows = |t: Tensor<4>| t.permute([1, 0, 2, 3]).reshape([c, b * h * w]);
    let m = match config.variant {
        IcsdVariant::Official => {
            let log_p = log_softmax(x * (1.0 / config.tau), 2);
            let p = log_p.clone().exp();
            let a = rows(p.clone() * log_p).sum_dim(1) * inv_b; // [C, 1]: A_k
            let pm = rows(p);
            let g = pm.clone().matmul(pm.transpose()) * inv_b;
            // A_max(i,j): A_j on and above the diagonal (j >= i), A_i below.
            let upper: Vec<f64> = (0..c * c).map(|k| if k % c >= k / c { 1.0 } else { 0.0 }).collect();
            let upper = Tensor::<2>::from_data(TensorData::new(upper, [c, c]), (&device, a.dtype()));
            let (a_i, a_j) = (a.clone().expand([c, c]), a.transpose().expand([c, c]));
            upper.clone() * a_j + (upper.neg() + 1.0) * a_i - g
        }
        IcsdVariant::Paper => {
            let log_p = log_softmax((x * (1.0 / config.tau)).reshape([b, c, h * w]), 2).reshape([b, c, h, w]);
            let p = log_p.clone().exp();
            // M[i, j] = (1/B) sum P_j log P_j - (1/B) sum log P_i P_j.
            let e = rows(p.clone() * log_p.clone()).sum_dim(1).transpose() * inv_b; // [1, C]: E_j
            let cross = rows(log_p).matmul(rows(p).transpose()) * inv_b;
            e.expand([c, c]) - cross
        }
    };
    let norms = (m.clone() * m.clone()).sum_dim(1).sqrt().clamp_min(1e-12);
    m / norms
}
