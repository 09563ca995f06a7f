//! SKD's launches fit the hardware (tests only): its cases through the shared sweep of
//! [`crate::launch_limits`].

use super::{check_shapes, Skd, SkdConfig, SkdPool};
use crate::family::Family;
use crate::launch::Machine;
use crate::launch_limits::{
    check_everywhere, dtype_modes, enough, pair_buffers, random_nchw, raw_call, with_random, FakeScratch,
};

/// SKD: the bench's features (8 x 512 x 64 x 128, pooled and not), `Cs != Ct`, edge cases, and random shapes
/// and channel counts, both pools, both Gram paths (`skd_gram_tc` for 16-bit inputs with `Cs = Ct`).
#[test]
fn skd_launches_fit() {
    // (student dims, teacher channels, required).
    let fixed = vec![
        ([8, 512, 64, 128], 512, true),
        ([8, 256, 64, 128], 512, true),
        ([1, 1, 1, 1], 1, true),
        ([2, 3, 5, 7], 9, true),
    ];
    let cases = with_random(fixed, 20, 20, |rng| {
        let s = random_nchw(rng, 1024, 1 << 16);
        let ct = if rng.below(2) == 0 { s[1] } else { 1 + rng.below(1024) };
        (s, ct, false)
    });
    let mut checked = 0;
    let tensor_core_grams = std::cell::Cell::new(0usize);
    for (dims, ct, required) in cases {
        let shapes = check_shapes(&dims, &[dims[0], ct, dims[2], dims[3]]).unwrap();
        for pool in [SkdPool::Max2x2, SkdPool::None] {
            let config = SkdConfig { pool, ..SkdConfig::default() };
            for (dtype, mode) in dtype_modes() {
                let buffers = pair_buffers(mode, false);
                checked += check_everywhere(Skd::NAME, Skd::LARGE_SMEM_KERNELS, required, &|gpu, rec| {
                    let call = raw_call::<Skd>(&config, (), &shapes, dtype, &buffers);
                    // SAFETY: as in `check_call`.
                    let result =
                        unsafe { Skd::run(call, Machine { device: gpu, scratch: &mut FakeScratch, launcher: rec }) };
                    let tc = rec.launches.iter().filter(|(l, _)| l.kernel == "skd_gram_tc").count();
                    tensor_core_grams.set(tensor_core_grams.get() + tc);
                    result
                });
            }
        }
    }
    enough(checked, 1000);
    // Both Gram paths are checked: the tensor-core Gram of 16-bit calls with `Cs = Ct` among them.
    assert!(tensor_core_grams.get() > 100, "{} tensor-core Gram launches checked", tensor_core_grams.get());
}
