//! ICSD in both variants, and AICSD's mix of it with pixel KD.

use super::compare::{compare_pair, TestResult};
use burn::tensor::Device;
use kd_kernels::icsd::{AicsdConfig, IcsdConfig, IcsdVariant};
use kd_kernels_burn::{aicsd_loss, icsd_loss, reference};

pub fn check_icsd(device: &Device) -> TestResult {
    for variant in [IcsdVariant::Official, IcsdVariant::Paper] {
        let config = IcsdConfig { variant, ..IcsdConfig::default() };
        compare_pair(
            device,
            (&format!("icsd {variant:?}"), [2, 5, 9, 11], false),
            &|s, t| icsd_loss(s, t, &config).expect("valid input"),
            &|s, t| reference::icsd_loss(s, t, &config),
        )?;
    }
    let config = AicsdConfig::default();
    let alpha = config.alpha(3.0).map_err(|e| e.to_string())?;
    compare_pair(
        device,
        ("aicsd epoch 3", [2, 4, 6, 5], false),
        &|s, t| aicsd_loss(s, t, 3.0, &config).expect("valid input"),
        &|s, t| {
            reference::icsd_loss(s.clone(), t.clone(), &config.icsd) * alpha
                + reference::pixel_kd_loss(s, t, &config.kd) * (1.0 - alpha)
        },
    )
}
