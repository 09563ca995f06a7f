//! CIRKD (student `[N, Cs, H, W]`, teacher `[N, Ct, H, W]`) against the crate's f64 CPU reference
//! ([`CirkdCpu`]) through the relation check (`super::check_relation`), every pooling, and its misuse. The same bodies run on candle's CPU device
//! (`tests/candle_ops.rs`) and on a GPU (`tests/candle_cuda.rs`).

use candle_core::Device;
use kd_kernels::cirkd::{CirkdConfig, CirkdCpu, CirkdPool};
use kd_kernels_candle::Cirkd;

use super::{check_relation, check_relation_errors, expect_in, message, OrMsg, TestResult};

/// The default's `auto` pool is none at these sizes.
pub fn check_cirkd(device: &Device) -> TestResult {
    let base = CirkdConfig::default();
    let pooled = CirkdConfig { tau: 0.5, loss_weight: 2.0, pool: CirkdPool::Avg(2) };
    for config in [base, pooled, CirkdConfig { pool: CirkdPool::Avg(3), ..base }] {
        let cirkd = Cirkd::new(config).or_msg("Cirkd::new")?;
        check_relation::<CirkdCpu>(device, &format!("cirkd {config:?}"), config, &|s, t| cirkd.loss(s, t))?;
    }
    Ok(())
}

pub fn check_cirkd_errors(device: &Device) -> TestResult {
    let m = message(Cirkd::new(CirkdConfig { tau: 0.0, ..Default::default() }), "cirkd tau 0")?;
    expect_in(&m, "tau", "cirkd tau 0")?;
    let m = message(Cirkd::new(CirkdConfig { pool: CirkdPool::Avg(0), ..Default::default() }), "cirkd pool 0")?;
    expect_in(&m, "pool", "cirkd pool 0")?;
    let cirkd = Cirkd::new(CirkdConfig::default()).or_msg("new")?;
    check_relation_errors(device, "cirkd", &|s, t| cirkd.loss(s, t))
}

candle_tests! {
    cirkd_matches_the_cpu_reference => check_cirkd,
    cirkd_misuse_is_an_error_that_says_what_to_fix => check_cirkd_errors,
}
