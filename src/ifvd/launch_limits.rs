//! IFVD's launches fit the hardware (tests only): its cases through the shared sweep of
//! [`crate::launch_limits`].

use super::{check_shapes, Ifvd, IfvdConfig, IfvdRawBuffers, LabelDType};
use crate::launch_limits::{addr, check_call, dtype_modes, enough, pair_buffers, random_nchw, with_random};

/// IFVD: the bench's features with Cityscapes' 19 and ADE20K's 150 classes, edge cases, and random shapes,
/// channel counts, label resolutions and class counts, every label dtype.
#[test]
fn ifvd_launches_fit() {
    /// (student dims, teacher channels, label plane, classes, required).
    type Case = ([usize; 4], usize, [usize; 2], usize, bool);
    let fixed: Vec<Case> = vec![
        ([8, 256, 64, 128], 256, [512, 1024], 19, true),
        ([8, 256, 64, 128], 512, [512, 512], 150, true),
        ([16, 512, 128, 128], 2048, [512, 512], 150, true),
        ([1, 1, 1, 1], 1, [1, 1], 1, true),
        ([2, 3, 5, 7], 9, [10, 14], 4096, true),
    ];
    let cases = with_random(fixed, 6, 30, |rng| {
        let s = random_nchw(rng, 2048, 1 << 16);
        let labels = [1 + rng.below(2 * s[2]), 1 + rng.below(2 * s[3])];
        (s, 1 + rng.below(2048), labels, 1 + rng.below(1024), false)
    });
    let mut checked = 0;
    for (dims, ct, [hl, wl], classes, required) in cases {
        let shapes = check_shapes(&dims, &[dims[0], ct, dims[2], dims[3]], &[dims[0], hl, wl]).unwrap();
        let config = IfvdConfig::new(classes);
        for (dtype, mode) in dtype_modes() {
            for label_dtype in [LabelDType::U8, LabelDType::I32, LabelDType::I64] {
                let pair = pair_buffers(mode, false);
                let buffers = IfvdRawBuffers {
                    student: pair.student,
                    teacher: pair.teacher,
                    labels: addr(7),
                    label_dtype,
                    loss: pair.loss,
                    grad_student: pair.grad_student,
                    upstream: pair.upstream,
                };
                checked += check_call::<Ifvd>(&config, (), &shapes, dtype, &buffers, required);
            }
        }
    }
    enough(checked, 1000);
}
