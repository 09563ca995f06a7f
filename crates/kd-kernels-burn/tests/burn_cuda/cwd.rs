//! CWD, with and without its teacher gradient.

use super::compare::{compare_pair, TestResult, SHAPES};
use burn::tensor::Device;
use kd_kernels::cwd::CwdConfig;
use kd_kernels_burn::{cwd_loss, reference};

pub fn check_cwd(device: &Device) -> TestResult {
    for (shape, config) in SHAPES.into_iter().zip([
        CwdConfig::default(),
        CwdConfig { tau: 1.0, loss_weight: 5.0, teacher_grad: false },
        CwdConfig { tau: 2.5, loss_weight: 0.5, teacher_grad: false },
    ]) {
        compare_pair(device, ("cwd", shape, false), &|s, t| cwd_loss(s, t, &config).expect("valid input"), &|s, t| {
            reference::cwd_loss(s, t, &config)
        })?;
    }
    let config = CwdConfig { tau: 2.0, loss_weight: 3.0, teacher_grad: true };
    compare_pair(
        device,
        ("cwd teacher_grad", [2, 3, 5, 4], true),
        &|s, t| cwd_loss(s, t, &config).expect("valid input"),
        &|s, t| reference::cwd_loss(s, t, &config),
    )
}
