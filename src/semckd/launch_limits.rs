//! SemCKD's launches fit the hardware (tests only): its cases through the shared sweep of
//! [`crate::launch_limits`].

use super::{Semckd, SemckdConfig, SemckdLayers, SemckdRawBuffers};
use crate::grad::GradOptions;
use crate::launch_limits::{addr, check_call, check_everywhere, enough, with_random, DTYPES};
use crate::testing::SplitMix64;

/// A SemCKD layout: batch, student layers, teacher layers, whether gradients are asked for.
type SemckdCase = (usize, Vec<[usize; 3]>, Vec<[usize; 3]>, bool);

/// SemCKD: the benches' layer sets (CIFAR-like and ImageNet-like) and random ones, and the pooling kernels.
#[test]
fn semckd_launches_fit() {
    let cifar = vec![[64, 32, 32], [128, 16, 16], [256, 8, 8]];
    let imagenet = vec![[64, 56, 56], [128, 28, 28], [256, 14, 14], [512, 7, 7]];
    let fixed: Vec<SemckdCase> = vec![(64, cifar.clone(), cifar, true), (32, imagenet.clone(), imagenet, true)];
    let layers = |rng: &mut SplitMix64| -> Vec<[usize; 3]> {
        (0..1 + rng.below(4)).map(|_| [1 + rng.below(512), 1 + rng.below(64), 1 + rng.below(64)]).collect()
    };
    let cases = with_random(fixed, 5, 20, |rng| {
        let (s, t) = (layers(rng), layers(rng));
        (4 + rng.below(128), s, t, false)
    });
    let mut checked = 0;
    for (batch, student, teacher, required) in cases {
        let dims = |l: &[usize; 3]| vec![batch, l[0], l[1], l[2]];
        let s: Vec<Vec<usize>> = student.iter().map(dims).collect();
        let t: Vec<Vec<usize>> = teacher.iter().map(dims).collect();
        let s_ref: Vec<&[usize]> = s.iter().map(|v| v.as_slice()).collect();
        let t_ref: Vec<&[usize]> = t.iter().map(|v| v.as_slice()).collect();
        let layers = match SemckdLayers::from_shapes(&s_ref, &t_ref) {
            Ok(l) => l,
            Err(_) if !required => continue,
            Err(e) => panic!("{e}"),
        };
        let (ns, nt) = (layers.students(), layers.teachers());
        let mlp = |base: u64| [0, 1, 2, 3].map(|k| addr(base + k));
        for dtype in DTYPES {
            for grads in [false, true] {
                let buffers = SemckdRawBuffers {
                    student: (0..ns as u64).map(|i| addr(100 + i)).collect(),
                    teacher: (0..nt as u64).map(|j| addr(200 + j)).collect(),
                    proj: (0..(ns * nt) as u64).map(|p| addr(300 + p)).collect(),
                    query: (0..ns as u64).map(|i| mlp(400 + 4 * i)).collect(),
                    key: (0..nt as u64).map(|j| mlp(500 + 4 * j)).collect(),
                    loss: addr(1),
                    attention: addr(2),
                    grad_student: if grads { (0..ns as u64).map(|i| addr(600 + i)).collect() } else { vec![] },
                    grad_proj: if grads { (0..(ns * nt) as u64).map(|p| addr(700 + p)).collect() } else { vec![] },
                    grad_query: if grads { (0..ns as u64).map(|i| mlp(800 + 4 * i)).collect() } else { vec![] },
                    grad_key: if grads { (0..nt as u64).map(|j| mlp(900 + 4 * j)).collect() } else { vec![] },
                    upstream: 0,
                };
                checked += check_call::<Semckd>(&SemckdConfig::default(), (), &layers, dtype, &buffers, required);
            }
            for (input, out_hw) in [(&s[0], [4usize, 4usize]), (&t[0], [1, 1]), (&s[0], [s[0][2], s[0][3]])] {
                for backward in [None, Some(GradOptions::OVERWRITE)] {
                    checked += check_everywhere("semckd pool", &[], required, &|_, rec| {
                        // SAFETY: as in `check_call`.
                        unsafe {
                            crate::semckd::driver::run_pool(dtype, input, out_hw, addr(1), addr(2), backward, rec)
                        }
                    });
                }
            }
        }
    }
    enough(checked, 500);
}
