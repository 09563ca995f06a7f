//! CIRKD's launches fit the hardware (tests only): its cases through the shared sweep of
//! [`crate::launch_limits`].

use super::{check_shapes, Cirkd, CirkdConfig, CirkdPool};
use crate::family::StudentGradFamily;
use crate::launch_limits::{check_call, dtype_modes, enough, pair_buffers, random_nchw, with_random};

/// CIRKD: the bench's features pooled and unpooled, the large-memory shape, the auto rule's switch,
/// edge cases, and random shapes, channel counts (Cs != Ct) and pool windows.
#[test]
fn cirkd_launches_fit() {
    /// (student dims, teacher channels, pool, required).
    type Case = ([usize; 4], usize, CirkdPool, bool);
    let fixed: Vec<Case> = vec![
        ([8, 256, 64, 128], 256, CirkdPool::None, true),
        ([8, 256, 64, 128], 256, CirkdPool::Avg(4), true),
        ([8, 256, 128, 256], 256, CirkdPool::None, true),
        ([2, 128, 512, 1024], 512, CirkdPool::Auto, true),
        ([1, 1, 1, 1], 1, CirkdPool::Auto, true),
        ([3, 37, 5, 7], 40, CirkdPool::Avg(3), true),
    ];
    let cases = with_random(fixed, 20, 30, |rng| {
        let s = random_nchw(rng, 1024, 1 << 16);
        let pool = match rng.below(3) {
            0 => CirkdPool::Auto,
            1 => CirkdPool::None,
            _ => CirkdPool::Avg(1 + rng.below(8)),
        };
        (s, 1 + rng.below(1024), pool, false)
    });
    let mut checked = 0;
    for (dims, ct, pool, required) in cases {
        let shapes = check_shapes(&dims, &[dims[0], ct, dims[2], dims[3]]).unwrap();
        let config = CirkdConfig { pool, ..CirkdConfig::default() };
        for (dtype, mode) in dtype_modes() {
            let buffers = Cirkd::raw_buffers(pair_buffers(mode, false)).unwrap();
            checked += check_call::<Cirkd>(&config, (), &shapes, dtype, &buffers, required);
        }
    }
    enough(checked, 1000);
}
