//! Pixel-wise KD as a candle op.

use kd_kernels::pixel_kd::{PixelKdConfig, PixelKdCpu};

super::pair_loss_adapter! {
    /// Pixel-wise KD ([`kd_kernels::pixel_kd`]) as a candle op: `loss(student, teacher)` is an f32 scalar whose
    /// backward pass writes d loss / d student.
    PixelKd { cpu: PixelKdCpu, config: PixelKdConfig, cuda: kd_kernels::pixel_kd::PixelKdCuda, op: "kd-kernels-pixel-kd" }
}
