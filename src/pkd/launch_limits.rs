//! PKD's launches fit the hardware (tests only): its cases through the shared sweep of
//! [`crate::launch_limits`].

use super::{Pkd, PkdConfig, PkdLevels, PkdRawBuffers, MAX_LEVELS};
use crate::launch_limits::{addr, addr_if, check_call, dtype_modes, enough, random_nchw, with_random};

/// PKD: the benches' feature pyramid (RetinaNet / RTMDet, 8 x 256 channels, strides 8 to 128 of 800 x 1216) and
/// random level lists of up to the most levels a call takes.
#[test]
fn pkd_launches_fit() {
    let fpn: Vec<[usize; 4]> =
        [[100, 152], [50, 76], [25, 38], [13, 19], [7, 10]].map(|[h, w]| [8, 256, h, w]).to_vec();
    let cases = with_random(vec![(fpn, true), (vec![[1, 1, 1, 2]], true)], 9, 20, |rng| {
        let count = 1 + rng.below(MAX_LEVELS);
        ((0..count).map(|_| random_nchw(rng, 1024, 1 << 18)).collect::<Vec<_>>(), false)
    });
    let mut checked = 0;
    for (dims, required) in cases {
        let levels = match PkdLevels::same(&dims) {
            Ok(l) => l,
            Err(_) if !required => continue,
            Err(e) => panic!("{e}"),
        };
        let n = levels.len() as u64;
        for (dtype, (loss, grad, upstream)) in dtype_modes() {
            let buffers = PkdRawBuffers {
                student: (0..n).map(|l| addr(100 + l)).collect(),
                teacher: (0..n).map(|l| addr(200 + l)).collect(),
                loss: addr_if(loss, 1),
                grad_student: if grad { (0..n).map(|l| addr(300 + l)).collect() } else { vec![] },
                upstream: addr_if(upstream, 2),
            };
            checked += check_call::<Pkd>(&PkdConfig::default(), (), &levels, dtype, &buffers, required);
        }
    }
    enough(checked, 1000);
}
