//! DIST as a candle op.

use kd_kernels::dist::{DistConfig, DistCpu};

super::pair_loss_adapter! {
    /// DIST, segmentation form ([`kd_kernels::dist`]), as a candle op: `loss(student, teacher)` is an f32
    /// scalar whose backward pass writes d loss / d student.
    Dist { cpu: DistCpu, config: DistConfig, cuda: kd_kernels::dist::DistCuda, op: "kd-kernels-dist" }
}
