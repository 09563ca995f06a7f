//! SKD and CIRKD: the `P x P` relations of pixels.

use super::compare::{compare_shapes, PairFn, TestResult};
use burn::tensor::Device;
use kd_kernels::cirkd::{CirkdConfig, CirkdPool};
use kd_kernels::skd::{SkdConfig, SkdPool};
use kd_kernels_burn::{cirkd_loss, reference, skd_loss};

/// SKD and CIRKD, teacher channels other than the student's, odd sides.
pub fn check_skd_cirkd(device: &Device) -> TestResult {
    let shapes = [[2, 5, 9, 11], [2, 3, 9, 11]];
    let compare =
        |name: String, ours: PairFn<'_>, theirs: PairFn<'_>| compare_shapes(device, &name, shapes, false, ours, theirs);
    for config in [SkdConfig::default(), SkdConfig { loss_weight: 10.0, pool: SkdPool::None }] {
        let ours = |s, t| skd_loss(s, t, &config).expect("valid input");
        compare(format!("skd {config:?}"), &ours, &|s, t| reference::skd_loss(s, t, &config))?;
    }
    let base = CirkdConfig::default();
    for config in [base, CirkdConfig { tau: 0.5, loss_weight: 2.0, pool: CirkdPool::Avg(3) }] {
        let ours = |s, t| cirkd_loss(s, t, &config).expect("valid input");
        compare(format!("cirkd {config:?}"), &ours, &|s, t| reference::cirkd_loss(s, t, &config))?;
    }
    Ok(())
}
