//! SKD, pooled and not, on a teacher of other channels.

use super::compare::{compare_shapes, TestResult, OTHER_TEACHER_CHANNELS};
use burn::tensor::Device;
use kd_kernels::skd::{SkdConfig, SkdPool};
use kd_kernels_burn::{reference, skd_loss};

pub fn check_skd(device: &Device) -> TestResult {
    for config in [SkdConfig::default(), SkdConfig { loss_weight: 10.0, pool: SkdPool::None }] {
        let ours = |s, t| skd_loss(s, t, &config).expect("valid input");
        let theirs = |s, t| reference::skd_loss(s, t, &config);
        compare_shapes(device, &format!("skd {config:?}"), OTHER_TEACHER_CHANNELS, false, &ours, &theirs)?;
    }
    Ok(())
}
