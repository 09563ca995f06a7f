//! CWT's launches fit the hardware (tests only): its cases through the shared sweep of
//! [`crate::launch_limits`].

use super::{Cwt, CwtConfig, CwtRawBuffers, CwtSetup, CwtShapes};
use crate::launch_limits::{addr, addr_if, check_call, dtype_modes, enough, random_nchw, with_random};

/// CWT: the benches' (student, teacher channels) and random ones.
#[test]
fn cwt_launches_fit() {
    let fixed = vec![
        ([8, 512, 64, 64], 2048, true),
        ([2, 256, 100, 152], 256, true),
        ([64, 512, 7, 7], 512, true),
        ([1, 1, 1, 1], 1, true),
    ];
    let cases = with_random(fixed, 4, 30, |rng| (random_nchw(rng, 2048, 1 << 16), 1 + rng.below(2048), false));
    let mut checked = 0;
    for (dims, ct, required) in cases {
        let setup = CwtSetup { config: CwtConfig::default(), shapes: CwtShapes::new(dims[1], ct) };
        for (dtype, (loss, grad, upstream)) in dtype_modes() {
            let buffers = CwtRawBuffers {
                student: addr(1),
                teacher: addr(2),
                w1: addr(3),
                b1: addr(4),
                w2: addr(5),
                b2: addr(6),
                loss: addr_if(loss, 7),
                grad_student: addr_if(grad, 8),
                grad_w1: addr_if(grad, 9),
                grad_b1: addr_if(grad, 10),
                grad_w2: addr_if(grad, 11),
                grad_b2: addr_if(grad, 12),
                upstream: addr_if(upstream, 13),
            };
            checked += check_call::<Cwt>(&setup, (), &dims, dtype, &buffers, required);
        }
    }
    enough(checked, 1000);
}
