//! ICSD's launches fit the hardware (tests only): its cases through the shared sweep of
//! [`crate::launch_limits`].

use super::{Icsd, IcsdConfig, IcsdRawBuffers, IcsdVariant};
use crate::family::{Family, PairFamily};
use crate::launch::Machine;
use crate::launch_limits::{
    addr, check_everywhere, dtype_modes, enough, pair_buffers, random_shapes, raw_call, FakeScratch, LOGIT_SHAPES,
};

#[test]
fn icsd_launches_fit() {
    // ICSD takes at most MAX_CLASSES classes (a typed error beyond, tested in its plan).
    let max = crate::icsd::plan::MAX_CLASSES;
    let shapes = random_shapes(LOGIT_SHAPES.iter().map(|&s| (s, s[1] <= max)).collect(), 3, 40, max, 1 << 20);
    let mut checked = 0;
    for (dims, required) in shapes {
        for (dtype, mode) in dtype_modes() {
            for variant in [IcsdVariant::Official, IcsdVariant::Paper] {
                let config = IcsdConfig { variant, ..IcsdConfig::default() };
                let pair = Icsd::pair_raw(pair_buffers(mode, false)).unwrap();
                let buffers = IcsdRawBuffers { sim_student: addr(7), sim_teacher: addr(8), ..pair };
                // AICSD's mix follows the ICSD call.
                checked += check_everywhere("icsd", &[], required, &|gpu, rec| {
                    // SAFETY: as in `check_call`.
                    unsafe {
                        Icsd::run(
                            raw_call(&config, (), &dims[..], dtype, &buffers),
                            Machine { device: gpu, scratch: &mut FakeScratch, launcher: rec },
                        )?;
                        crate::icsd::driver::mix(rec, dtype, addr(3), addr(9), addr(10), 0.5, 0.5)
                    }
                });
            }
        }
    }
    enough(checked, 1000);
}
