//! Pixel KD in every reduction.

use super::compare::{compare_pair, TestResult, SHAPES};
use burn::tensor::Device;
use kd_kernels::pixel_kd::{PixelKdConfig, Reduction};
use kd_kernels_burn::{pixel_kd_loss, reference};

pub fn check_pixel_kd(device: &Device) -> TestResult {
    for (i, reduction) in
        [Reduction::Mean, Reduction::BatchMean, Reduction::Sum, Reduction::PixelMean].into_iter().enumerate()
    {
        let config = PixelKdConfig { tau: 1.0 + i as f64, loss_weight: 10.0, reduction, scale_tau2: i % 2 == 1 };
        compare_pair(
            device,
            ("pixel_kd", SHAPES[i % SHAPES.len()], false),
            &|s, t| pixel_kd_loss(s, t, &config).expect("valid input"),
            &|s, t| reference::pixel_kd_loss(s, t, &config),
        )?;
    }
    Ok(())
}
