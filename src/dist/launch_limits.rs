//! DIST's launches fit the hardware (tests only): its cases through the shared sweep of
//! [`crate::launch_limits`].

use super::{Dist, DistConfig};
use crate::launch_limits::{check_call, dtype_modes, enough, pair_buffers, random_shapes, LOGIT_SHAPES};

#[test]
fn dist_launches_fit() {
    // DIST takes at most MAX_CLASSES classes (a typed error beyond, tested in its plan).
    let max = crate::dist::plan::MAX_CLASSES;
    let mut shapes: Vec<([usize; 4], bool)> = LOGIT_SHAPES.iter().map(|&s| (s, s[1] <= max)).collect();
    shapes.push(([8, 19, 128, 256], true));
    shapes.push(([16, max, 64, 64], true));
    let shapes = random_shapes(shapes, 6, 40, 4096, 1 << 22);
    let mut checked = 0;
    for (dims, required) in shapes {
        for (dtype, mode) in dtype_modes() {
            let config = DistConfig::default();
            checked += check_call::<Dist>(&config, (), &dims, dtype, &pair_buffers(mode, false), required);
        }
    }
    enough(checked, 1000);
}
