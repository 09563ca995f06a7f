//! PKD.

use super::compare::{compare_pair, TestResult};
use burn::tensor::Device;
use kd_kernels::pkd::PkdConfig;
use kd_kernels_burn::{pkd_loss, reference};

/// One level through the pair comparison (the several-level packing is the NdArray tests').
pub fn check_pkd(device: &Device) -> TestResult {
    let config = PkdConfig { loss_weight: 6.0 };
    compare_pair(
        device,
        ("pkd", [2, 7, 9, 11], false),
        &|s, t| pkd_loss(&[s], &[t], &config).expect("valid input"),
        &|s, t| reference::pkd_loss(&[s], &[t], &config),
    )
}
