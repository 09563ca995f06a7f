//! PKD's reference.

use ::burn::tensor::Tensor;

use kd_kernels::pkd::{PkdConfig, PKD_EPS};

/// PKD (`docs/losses.md` §7): per level, each channel standardised over its `N*H*W` values (unbiased
/// standard deviation, `+ 1e-6`); `loss_weight * sum_l 0.5 * mean (S_hat - T_hat)^2`. A constant channel's
/// gradient is NaN here (burn's `sqrt` at 0), where the crate's is finite: compare on varying channels.
pub fn pkd_loss(student: &[Tensor<4>], teacher: &[Tensor<4>], config: &PkdConfig) -> Tensor<1> {
    let standardised = |x: Tensor<4>| -> Tensor<2> {
        let [n, c, h, w] = x.dims();
        let m = n * h * w;
        let x = x.swap_dims(0, 1).reshape([c, m]);
        let centred = x.clone() - x.mean_dim(1);
        let std = ((centred.clone() * centred.clone()).sum_dim(1) * (1.0 / (m as f64 - 1.0))).sqrt();
        centred / (std + PKD_EPS)
    };
    let level = |(s, t): (&Tensor<4>, &Tensor<4>)| {
        let d = standardised(s.clone()) - standardised(t.clone());
        (d.clone() * d).mean() * 0.5
    };
    let total = student.iter().zip(teacher).map(level).reduce(|a, b| a + b).expect("at least one level");
    total * config.loss_weight
}
