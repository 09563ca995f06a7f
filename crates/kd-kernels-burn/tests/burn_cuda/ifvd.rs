//! IFVD, its labels at another resolution.

use super::compare::{compare_pair, TestResult};
use burn::tensor::{Device, Int, Tensor, TensorData};
use kd_kernels::ifvd::IfvdConfig;
use kd_kernels_burn::{ifvd_loss, reference};

/// Labels at another resolution, classes 0..5 and 255 (ignored).
pub fn check_ifvd(device: &Device) -> TestResult {
    let config = IfvdConfig::new(5);
    let dims = [2, 13, 17];
    let values: Vec<i64> = (0..dims.iter().product::<usize>()).map(|k| [0, 3, 255, 1, 4, 2][k % 6]).collect();
    let labels = Tensor::<3, Int>::from_data(TensorData::new(values, dims), device);
    compare_pair(
        device,
        ("ifvd", [2, 6, 9, 11], false),
        &|s, t| ifvd_loss(s, t, labels.clone(), &config).expect("valid input"),
        &|s, t| reference::ifvd_loss(s, t, labels.clone(), &config),
    )
}
