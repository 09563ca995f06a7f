//! Pixel KD's launches fit the hardware (tests only): its cases through the shared sweep of
//! [`crate::launch_limits`].

use super::{PixelKd, PixelKdConfig, PixelKdPath};
use crate::launch_limits::{check_call, dtype_modes, enough, logit_cases, pair_buffers};

#[test]
fn pixel_kd_launches_fit() {
    let mut checked = 0;
    for (dims, required) in logit_cases(2, 40, 4096, 1 << 22) {
        for (dtype, mode) in dtype_modes() {
            for path in [PixelKdPath::Auto, PixelKdPath::PerPixel] {
                let config = PixelKdConfig::default();
                checked += check_call::<PixelKd>(&config, path, &dims, dtype, &pair_buffers(mode, false), required);
            }
        }
    }
    enough(checked, 1000);
}
