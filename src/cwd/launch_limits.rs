//! CWD's launches fit the hardware (tests only): its cases through the shared sweep of
//! [`crate::launch_limits`].

use super::{Cwd, CwdConfig, CwdPath};
use crate::launch_limits::{check_call, dtype_modes, enough, logit_cases, pair_buffers};

#[test]
fn cwd_launches_fit() {
    let mut checked = 0;
    for (dims, required) in logit_cases(1, 40, 2048, 1 << 22) {
        for (dtype, mode) in dtype_modes() {
            for teacher_grad in [false, true] {
                let config = CwdConfig { teacher_grad, ..CwdConfig::default() };
                let buffers = pair_buffers(mode, teacher_grad);
                for path in [CwdPath::Auto, CwdPath::TwoPass] {
                    checked += check_call::<Cwd>(&config, path, &dims, dtype, &buffers, required);
                }
            }
        }
    }
    enough(checked, 1000);
}
