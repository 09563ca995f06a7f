//! CIRKD, with its default pool and a 3x3 average, on a teacher of other channels.

use super::compare::{compare_shapes, TestResult, OTHER_TEACHER_CHANNELS};
use burn::tensor::Device;
use kd_kernels::cirkd::{CirkdConfig, CirkdPool};
use kd_kernels_burn::{cirkd_loss, reference};

pub fn check_cirkd(device: &Device) -> TestResult {
    for config in [CirkdConfig::default(), CirkdConfig { tau: 0.5, loss_weight: 2.0, pool: CirkdPool::Avg(3) }] {
        let ours = |s, t| cirkd_loss(s, t, &config).expect("valid input");
        let theirs = |s, t| reference::cirkd_loss(s, t, &config);
        compare_shapes(device, &format!("cirkd {config:?}"), OTHER_TEACHER_CHANNELS, false, &ours, &theirs)?;
    }
    Ok(())
}
