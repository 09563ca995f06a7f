//! SKD (student `[N, Cs, H, W]`, teacher `[N, Ct, H, W]`) against the crate's f64 CPU reference ([`SkdCpu`])
//! through the relation check (`super::check_relation`), both pools, and its misuse. The same bodies run on candle's CPU device
//! (`tests/candle_ops.rs`) and on a GPU (`tests/candle_cuda.rs`).

use candle_core::Device;
use kd_kernels::skd::{SkdConfig, SkdCpu, SkdPool};
use kd_kernels_candle::Skd;

use super::{check_relation, check_relation_errors, expect_in, message, OrMsg, TestResult};

pub fn check_skd(device: &Device) -> TestResult {
    for config in [SkdConfig::default(), SkdConfig { loss_weight: 10.0, pool: SkdPool::None }] {
        let skd = Skd::new(config).or_msg("Skd::new")?;
        check_relation::<SkdCpu>(device, &format!("skd {config:?}"), config, &|s, t| skd.loss(s, t))?;
    }
    Ok(())
}

pub fn check_skd_errors(device: &Device) -> TestResult {
    let m = message(Skd::new(SkdConfig { loss_weight: f64::NAN, ..Default::default() }), "skd NaN weight")?;
    expect_in(&m, "loss_weight", "skd NaN weight")?;
    let skd = Skd::new(SkdConfig::default()).or_msg("new")?;
    check_relation_errors(device, "skd", &|s, t| skd.loss(s, t))
}

candle_tests! {
    skd_matches_the_cpu_reference => check_skd,
    skd_misuse_is_an_error_that_says_what_to_fix => check_skd_errors,
}
