//! DIST.

use super::compare::{compare_pair, TestResult};
use burn::tensor::Device;
use kd_kernels::dist::DistConfig;
use kd_kernels_burn::{dist_loss, reference};

pub fn check_dist(device: &Device) -> TestResult {
    let config = DistConfig { tau: 2.0, beta: 1.5, gamma: 0.5, loss_weight: 3.0 };
    compare_pair(
        device,
        ("dist", [2, 19, 9, 11], false),
        &|s, t| dist_loss(s, t, &config).expect("valid input"),
        &|s, t| reference::dist_loss(s, t, &config),
    )
}
