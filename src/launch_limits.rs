//! Every launch the planners make fits the hardware (tests only).
//!
//! Each family's driver runs as a CUDA call would, on fake device addresses, with a [`Launcher`] that
//! records its launches instead of running them and a [`DeviceInfo`] that answers from [`crate::hw`]: the
//! compiled kernels' resources on one architecture and that architecture's limits, for an SM count of a real
//! GPU of it, with and without cooperative launch. Every recorded launch is then checked by
//! [`hw::check_launch`]: threads x registers within the register file, static + dynamic shared memory within
//! the default 48 KiB or, for the kernels the launcher opts in, the opt-in limit, a cooperative grid within
//! the blocks the occupancy formula keeps resident, the grid within its limits. On the benches' shapes and
//! on seeded random shapes, every dtype, every output set.

use std::ffi::c_void;

use crate::cwd::{CwdConfig, CwdPath, CwdRawBuffers};
use crate::cwt::{CwtConfig, CwtRawBuffers, CwtShapes};
use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::grad::GradOptions;
use crate::hw::{self, ArchLimits};
use crate::icsd::{IcsdConfig, IcsdRawBuffers, IcsdVariant};
use crate::launch::{DeviceInfo, Launch, LaunchError, Launcher, Scratch, BLOCK_THREADS};
use crate::pixel_kd::{PixelKdConfig, PixelKdPath, PixelKdRawBuffers};
use crate::semckd::{SemckdConfig, SemckdLayers, SemckdRawBuffers};
use crate::shape::Nchw;
use crate::testing::SplitMix64;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// SM counts of real GPUs of each architecture, the smallest and a large one: A30 and A100; A2 and RTX
/// 3090; L4 and L40S; H100 PCIe and SXM.
fn sm_counts(arch: u32) -> [usize; 2] {
    match arch {
        80 => [56, 108],
        86 => [10, 82],
        89 => [58, 142],
        _ => [114, 132],
    }
}

/// A GPU of one architecture as the build's resource table and [`hw::ARCHS`] describe it.
struct TableGpu {
    limits: &'static ArchLimits,
    sm_count: usize,
    cooperative: bool,
    /// The family's kernels its CUDA wrapper opts in to more than 48 KiB of shared memory.
    opt_in: &'static [&'static str],
}

impl TableGpu {
    fn resources(&self, kernel: &str, dtype: DType) -> Result<&'static hw::KernelResources> {
        hw::resources(&format!("{kernel}_{}", dtype.name()), self.limits.arch).ok_or_else(|| KdError::Cuda {
            op: "resource table",
            error: format!("{kernel}_{} was not compiled for sm_{}", dtype.name(), self.limits.arch),
        })
    }
}

impl DeviceInfo for TableGpu {
    fn sm_count(&self) -> usize {
        self.sm_count
    }
    fn cooperative(&self) -> bool {
        self.cooperative
    }
    fn resident_blocks(&self, kernel: &'static str, dtype: DType, dynamic_smem: usize) -> Result<usize> {
        let res = self.resources(kernel, dtype)?;
        Ok(hw::blocks_per_sm(self.limits, res, BLOCK_THREADS as usize, dynamic_smem) * self.sm_count)
    }
    fn max_dynamic_smem(&self, kernel: &'static str) -> usize {
        // As `KernelModule::load` computes it: the largest static memory over the dtypes counts.
        let fixed = DTYPES.iter().filter_map(|&d| self.resources(kernel, d).ok()).map(|r| r.static_smem).max();
        let opted_in = self.opt_in.contains(&kernel);
        hw::dynamic_smem_limit(self.limits.smem_per_block_optin, fixed.unwrap_or(0) as usize, opted_in)
    }
}

/// Records the launches instead of running them.
#[derive(Default)]
struct Recorder {
    launches: Vec<(Launch, DType)>,
}

impl Launcher for Recorder {
    unsafe fn launch(&mut self, launch: &Launch, dtype: DType, _args: *const c_void) -> Result<(), LaunchError> {
        self.launches.push((*launch, dtype));
        Ok(())
    }
}

/// Workspace addresses that no kernel will touch (nothing runs), 256-byte aligned like cudarc's.
struct FakeScratch;

impl Scratch for FakeScratch {
    fn prepare(&mut self, _floats: usize, _counters: usize) -> Result<(u64, u64)> {
        Ok((0x7000_0000_0000, 0x7800_0000_0000))
    }

    fn reset_counters(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Distinct fake addresses, 256-byte aligned, for a call's buffers.
fn addr(i: u64) -> u64 {
    0x1000_0000_0000 + i * 0x10_0000_0000
}

/// What a call may make of one family: the driver on a device, returning the launches it made.
type Call<'a> = dyn Fn(&TableGpu, &mut Recorder) -> Result<()> + 'a;

/// Checks every launch of `call` on every compiled architecture, SM count and cooperative setting. A call
/// that is `required` (the benches' shapes) must plan; a random one may end in a typed error (a shape the
/// family refuses), which is counted and printed. Returns the number of launches checked; each test requires
/// over a thousand (500 for SemCKD), so that the sweep cannot pass by refusing everything.
fn check_everywhere(what: &str, opt_in: &'static [&'static str], required: bool, call: &Call<'_>) -> usize {
    let mut checked = 0;
    for limits in hw::ARCHS.iter().filter(|l| hw::KERNEL_RESOURCES.iter().any(|r| r.arch == l.arch)) {
        for sm_count in sm_counts(limits.arch) {
            for cooperative in [true, false] {
                let gpu = TableGpu { limits, sm_count, cooperative, opt_in };
                let mut recorder = Recorder::default();
                match call(&gpu, &mut recorder) {
                    Ok(()) => {}
                    Err(_) if !required => {
                        REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => panic!("{what} on sm_{} ({sm_count} SMs): {e}", limits.arch),
                }
                assert!(!recorder.launches.is_empty(), "{what}: no launch");
                for (launch, dtype) in &recorder.launches {
                    let res = gpu.resources(launch.kernel, *dtype).unwrap();
                    let opted_in = opt_in.contains(&launch.kernel);
                    if let Err(broken) =
                        hw::check_launch(limits, res, launch, BLOCK_THREADS as usize, opted_in, sm_count)
                    {
                        panic!("{what}: {launch:?} on {sm_count} SMs: {broken}");
                    }
                    checked += 1;
                }
            }
        }
    }
    checked
}

/// Random calls a family refused with a typed error (all tests together; a diagnostic for the runs' output).
static REFUSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// (loss, gradient, upstream): the forward, forward-backward and backward calls of the wrappers.
const MODES: [(bool, bool, bool); 3] = [(true, false, false), (true, true, false), (false, true, true)];

fn random_nchw(rng: &mut SplitMix64, max_c: usize, max_plane: usize) -> [usize; 4] {
    let log = |rng: &mut SplitMix64, max: usize| {
        let bits = usize::BITS - max.leading_zeros();
        (1usize << rng.below(bits as usize)).max(1) + rng.below(3)
    };
    let c = log(rng, max_c).min(max_c);
    let h = log(rng, max_plane).min(max_plane);
    let w = log(rng, max_plane / h.max(1)).max(1);
    [1 + rng.below(8), c, h, w]
}

fn random_shapes(seed: u64, n: usize, max_c: usize, max_plane: usize) -> Vec<[usize; 4]> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| random_nchw(&mut rng, max_c, max_plane)).collect()
}

/// The benches' logits shapes (`benches/common`, `benches/icsd.rs`) and edge cases.
const LOGIT_SHAPES: [[usize; 4]; 7] = [
    [8, 19, 64, 128],
    [8, 19, 512, 1024],
    [8, 256, 64, 128],
    [2, 21, 65, 65],
    [6, 21, 513, 513],
    [1, 1, 1, 1],
    [3, 1000, 7, 9],
];

#[test]
fn cwd_launches_fit() {
    let mut shapes: Vec<([usize; 4], bool)> = LOGIT_SHAPES.iter().map(|&s| (s, true)).collect();
    shapes.extend(random_shapes(1, 40, 2048, 1 << 22).into_iter().map(|s| (s, false)));
    let mut checked = 0;
    for (dims, required) in shapes {
        let shape = Nchw::from_dims("student", &dims).unwrap();
        for dtype in DTYPES {
            for (loss, grad, upstream) in MODES {
                for teacher_grad in [false, true] {
                    let config = CwdConfig { teacher_grad, ..CwdConfig::default() };
                    for path in [CwdPath::Auto, CwdPath::TwoPass] {
                        let buffers = CwdRawBuffers {
                            student: addr(1),
                            teacher: addr(2),
                            loss: if loss { addr(3) } else { 0 },
                            grad_student: if grad { addr(4) } else { 0 },
                            grad_teacher: if grad && teacher_grad { addr(5) } else { 0 },
                            upstream: if upstream { addr(6) } else { 0 },
                        };
                        checked += check_everywhere("cwd", &[], required, &|gpu, rec| {
                            // SAFETY: nothing runs: the recorder takes the launches and touches no address.
                            unsafe {
                                crate::cwd::driver::run(
                                    &config,
                                    path,
                                    &shape,
                                    dtype,
                                    &buffers,
                                    GradOptions::OVERWRITE,
                                    gpu,
                                    &mut FakeScratch,
                                    rec,
                                )
                            }
                            .map(|_| ())
                        });
                    }
                }
            }
        }
    }
    assert!(checked > 1000, "{checked} launches checked");
    println!(
        "{checked} launches checked; random calls refused so far: {}",
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[test]
fn pixel_kd_launches_fit() {
    let mut shapes: Vec<([usize; 4], bool)> = LOGIT_SHAPES.iter().map(|&s| (s, true)).collect();
    shapes.extend(random_shapes(2, 40, 4096, 1 << 22).into_iter().map(|s| (s, false)));
    let mut checked = 0;
    for (dims, required) in shapes {
        let shape = Nchw::from_dims("student", &dims).unwrap();
        for dtype in DTYPES {
            for (loss, grad, upstream) in MODES {
                for path in [PixelKdPath::Auto, PixelKdPath::PerPixel] {
                    let buffers = PixelKdRawBuffers {
                        student: addr(1),
                        teacher: addr(2),
                        loss: if loss { addr(3) } else { 0 },
                        grad_student: if grad { addr(4) } else { 0 },
                        upstream: if upstream { addr(6) } else { 0 },
                        grad_teacher: 0,
                    };
                    let opt_in = &crate::pixel_kd::plan::OPT_IN_SMEM;
                    checked += check_everywhere("pixel_kd", opt_in, required, &|gpu, rec| {
                        // SAFETY: as in `cwd_launches_fit`.
                        unsafe {
                            crate::pixel_kd::driver::run(
                                &PixelKdConfig::default(),
                                path,
                                &shape,
                                dtype,
                                &buffers,
                                GradOptions::OVERWRITE,
                                gpu,
                                &mut FakeScratch,
                                rec,
                            )
                        }
                        .map(|_| ())
                    });
                }
            }
        }
    }
    assert!(checked > 1000, "{checked} launches checked");
    println!(
        "{checked} launches checked; random calls refused so far: {}",
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[test]
fn icsd_launches_fit() {
    // ICSD takes at most MAX_CLASSES classes (a typed error beyond, tested in its plan).
    let max = crate::icsd::plan::MAX_CLASSES;
    let mut shapes: Vec<([usize; 4], bool)> = LOGIT_SHAPES.iter().map(|&s| (s, s[1] <= max)).collect();
    shapes.extend(random_shapes(3, 40, max, 1 << 20).into_iter().map(|s| (s, false)));
    let mut checked = 0;
    for (dims, required) in shapes {
        let shape = Nchw::from_dims("student", &dims).unwrap();
        for dtype in DTYPES {
            for (loss, grad, upstream) in MODES {
                for variant in [IcsdVariant::Official, IcsdVariant::Paper] {
                    let config = IcsdConfig { variant, ..IcsdConfig::default() };
                    let buffers = IcsdRawBuffers {
                        student: addr(1),
                        teacher: addr(2),
                        loss: if loss { addr(3) } else { 0 },
                        grad_student: if grad { addr(4) } else { 0 },
                        upstream: if upstream { addr(6) } else { 0 },
                        sim_student: addr(7),
                        sim_teacher: addr(8),
                    };
                    checked += check_everywhere("icsd", &[], required, &|gpu, rec| {
                        // SAFETY: as in `cwd_launches_fit`.
                        unsafe {
                            crate::icsd::driver::run(
                                &config,
                                &shape,
                                dtype,
                                &buffers,
                                GradOptions::OVERWRITE,
                                gpu,
                                &mut FakeScratch,
                                rec,
                            )?;
                            crate::icsd::driver::mix(rec, dtype, addr(3), addr(9), addr(10), 0.5, 0.5)
                        }
                    });
                }
            }
        }
    }
    assert!(checked > 1000, "{checked} launches checked");
    println!(
        "{checked} launches checked; random calls refused so far: {}",
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[test]
fn dist_launches_fit() {
    // DIST takes at most MAX_CLASSES classes (a typed error beyond, tested in its plan).
    let max = crate::dist::plan::MAX_CLASSES;
    let mut shapes: Vec<([usize; 4], bool)> = LOGIT_SHAPES.iter().map(|&s| (s, s[1] <= max)).collect();
    shapes.push(([8, 19, 128, 256], true));
    shapes.push(([16, max, 64, 64], true));
    shapes.extend(random_shapes(6, 40, 4096, 1 << 22).into_iter().map(|s| (s, false)));
    let mut checked = 0;
    for (dims, required) in shapes {
        let shape = Nchw::from_dims("student", &dims).unwrap();
        for dtype in DTYPES {
            for (loss, grad, upstream) in MODES {
                let buffers = crate::family::PairRawBuffers {
                    student: addr(1),
                    teacher: addr(2),
                    loss: if loss { addr(3) } else { 0 },
                    grad_student: if grad { addr(4) } else { 0 },
                    grad_teacher: 0,
                    upstream: if upstream { addr(6) } else { 0 },
                };
                checked += check_everywhere("dist", &[], required, &|gpu, rec| {
                    // SAFETY: as in `cwd_launches_fit`.
                    unsafe {
                        crate::dist::driver::run(
                            &crate::dist::DistConfig::default(),
                            &shape,
                            dtype,
                            &buffers,
                            GradOptions::OVERWRITE,
                            gpu,
                            &mut FakeScratch,
                            rec,
                        )
                    }
                });
            }
        }
    }
    assert!(checked > 1000, "{checked} launches checked");
    println!(
        "{checked} launches checked; random calls refused so far: {}",
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// CWT: the benches' (student, teacher channels) and random ones.
#[test]
fn cwt_launches_fit() {
    let mut cases: Vec<([usize; 4], usize, bool)> = vec![
        ([8, 512, 64, 64], 2048, true),
        ([2, 256, 100, 152], 256, true),
        ([64, 512, 7, 7], 512, true),
        ([1, 1, 1, 1], 1, true),
    ];
    let mut rng = SplitMix64::new(4);
    for _ in 0..30 {
        let s = random_nchw(&mut rng, 2048, 1 << 16);
        cases.push((s, 1 + rng.below(2048), false));
    }
    let mut checked = 0;
    for (dims, ct, required) in cases {
        let shapes = CwtShapes::new(dims[1], ct);
        let teacher = [dims[0], ct, dims[2], dims[3]];
        for dtype in DTYPES {
            for (loss, grad, upstream) in MODES {
                let g = |i| if grad { addr(i) } else { 0 };
                let buffers = CwtRawBuffers {
                    student: addr(1),
                    teacher: addr(2),
                    w1: addr(3),
                    b1: addr(4),
                    w2: addr(5),
                    b2: addr(6),
                    loss: if loss { addr(7) } else { 0 },
                    grad_student: g(8),
                    grad_w1: g(9),
                    grad_b1: g(10),
                    grad_w2: g(11),
                    grad_b2: g(12),
                    upstream: if upstream { addr(13) } else { 0 },
                };
                checked += check_everywhere("cwt", &crate::cwt::plan::OPT_IN_SMEM, required, &|gpu, rec| {
                    // SAFETY: as in `cwd_launches_fit`.
                    unsafe {
                        crate::cwt::driver::run(
                            &CwtConfig::default(),
                            &shapes,
                            &dims,
                            &teacher,
                            dtype,
                            &buffers,
                            GradOptions::OVERWRITE,
                            None,
                            gpu,
                            &mut FakeScratch,
                            rec,
                        )
                    }
                });
            }
        }
    }
    assert!(checked > 1000, "{checked} launches checked");
    println!(
        "{checked} launches checked; random calls refused so far: {}",
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// A SemCKD layout: batch, student layers, teacher layers, whether gradients are asked for.
type SemckdCase = (usize, Vec<[usize; 3]>, Vec<[usize; 3]>, bool);

/// SemCKD: the benches' layer sets (CIFAR-like and ImageNet-like) and random ones, and the pooling kernels.
#[test]
fn semckd_launches_fit() {
    let cifar = vec![[64, 32, 32], [128, 16, 16], [256, 8, 8]];
    let imagenet = vec![[64, 56, 56], [128, 28, 28], [256, 14, 14], [512, 7, 7]];
    let mut cases: Vec<SemckdCase> = vec![(64, cifar.clone(), cifar, true), (32, imagenet.clone(), imagenet, true)];
    let mut rng = SplitMix64::new(5);
    for _ in 0..20 {
        let layers = |rng: &mut SplitMix64| -> Vec<[usize; 3]> {
            (0..1 + rng.below(4)).map(|_| [1 + rng.below(512), 1 + rng.below(64), 1 + rng.below(64)]).collect()
        };
        let (s, t) = (layers(&mut rng), layers(&mut rng));
        cases.push((4 + rng.below(128), s, t, false));
    }
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
                checked += check_everywhere("semckd", &[], required, &|gpu, rec| {
                    // SAFETY: as in `cwd_launches_fit`.
                    unsafe {
                        crate::semckd::driver::run(
                            &SemckdConfig::default(),
                            &layers,
                            dtype,
                            &buffers,
                            GradOptions::OVERWRITE,
                            gpu,
                            &mut FakeScratch,
                            rec,
                        )
                    }
                });
            }
            for (input, out_hw) in [(&s[0], [4usize, 4usize]), (&t[0], [1, 1]), (&s[0], [s[0][2], s[0][3]])] {
                for backward in [None, Some(GradOptions::OVERWRITE)] {
                    checked += check_everywhere("semckd pool", &[], required, &|_, rec| {
                        // SAFETY: as in `cwd_launches_fit`.
                        unsafe {
                            crate::semckd::driver::run_pool(dtype, input, out_hw, addr(1), addr(2), backward, rec)
                        }
                    });
                }
            }
        }
    }
    assert!(checked > 500, "{checked} launches checked");
    println!(
        "{checked} launches checked; random calls refused so far: {}",
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// PKD: the benches' feature pyramid (RetinaNet / RTMDet, 8 x 256 channels, strides 8 to 128 of 800 x 1216) and
/// random level lists of up to the most levels a call takes.
#[test]
fn pkd_launches_fit() {
    use crate::pkd::{PkdConfig, PkdLevels, PkdRawBuffers, MAX_LEVELS};
    let fpn: Vec<[usize; 4]> =
        [[100, 152], [50, 76], [25, 38], [13, 19], [7, 10]].map(|[h, w]| [8, 256, h, w]).to_vec();
    let mut cases: Vec<(Vec<[usize; 4]>, bool)> = vec![(fpn, true), (vec![[1, 1, 1, 2]], true)];
    let mut rng = SplitMix64::new(9);
    for _ in 0..20 {
        let count = 1 + rng.below(MAX_LEVELS);
        cases.push(((0..count).map(|_| random_nchw(&mut rng, 1024, 1 << 18)).collect(), false));
    }
    let mut checked = 0;
    for (dims, required) in cases {
        let levels = match PkdLevels::same(&dims) {
            Ok(l) => l,
            Err(_) if !required => continue,
            Err(e) => panic!("{e}"),
        };
        let n = levels.len() as u64;
        for dtype in DTYPES {
            for (loss, grad, upstream) in MODES {
                let buffers = PkdRawBuffers {
                    student: (0..n).map(|l| addr(100 + l)).collect(),
                    teacher: (0..n).map(|l| addr(200 + l)).collect(),
                    loss: if loss { addr(1) } else { 0 },
                    grad_student: if grad { (0..n).map(|l| addr(300 + l)).collect() } else { vec![] },
                    upstream: if upstream { addr(2) } else { 0 },
                };
                checked += check_everywhere("pkd", &[], required, &|_, rec| {
                    // SAFETY: as in `cwd_launches_fit`.
                    unsafe {
                        crate::pkd::driver::run(
                            &PkdConfig::default(),
                            &levels,
                            dtype,
                            &buffers,
                            GradOptions::OVERWRITE,
                            &mut FakeScratch,
                            rec,
                        )
                    }
                });
            }
        }
    }
    assert!(checked > 1000, "{checked} launches checked");
    println!(
        "{checked} launches checked; random calls refused so far: {}",
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// IFVD: the bench's features with Cityscapes' 19 and ADE20K's 150 classes, edge cases, and random shapes,
/// channel counts, label resolutions and class counts, every label dtype.
#[test]
fn ifvd_launches_fit() {
    use crate::family::{Family, RawCall};
    use crate::ifvd::{check_shapes, Ifvd, IfvdConfig, IfvdRawBuffers, LabelDType};
    /// (student dims, teacher channels, label plane, classes, required).
    type Case = ([usize; 4], usize, [usize; 2], usize, bool);
    let mut cases: Vec<Case> = vec![
        ([8, 256, 64, 128], 256, [512, 1024], 19, true),
        ([8, 256, 64, 128], 512, [512, 512], 150, true),
        ([16, 512, 128, 128], 2048, [512, 512], 150, true),
        ([1, 1, 1, 1], 1, [1, 1], 1, true),
        ([2, 3, 5, 7], 9, [10, 14], 4096, true),
    ];
    let mut rng = SplitMix64::new(6);
    for _ in 0..30 {
        let s = random_nchw(&mut rng, 2048, 1 << 16);
        let labels = [1 + rng.below(2 * s[2]), 1 + rng.below(2 * s[3])];
        cases.push((s, 1 + rng.below(2048), labels, 1 + rng.below(1024), false));
    }
    let mut checked = 0;
    for (dims, ct, [hl, wl], classes, required) in cases {
        let shapes = check_shapes(&dims, &[dims[0], ct, dims[2], dims[3]], &[dims[0], hl, wl]).unwrap();
        let config = IfvdConfig::new(classes);
        for dtype in DTYPES {
            for label_dtype in [LabelDType::U8, LabelDType::I32, LabelDType::I64] {
                for (loss, grad, upstream) in MODES {
                    let buffers = IfvdRawBuffers {
                        student: addr(1),
                        teacher: addr(2),
                        labels: addr(3),
                        label_dtype,
                        loss: if loss { addr(4) } else { 0 },
                        grad_student: if grad { addr(5) } else { 0 },
                        upstream: if upstream { addr(6) } else { 0 },
                    };
                    checked += check_everywhere("ifvd", &[], required, &|gpu, rec| {
                        let call = RawCall::<Ifvd> {
                            config: &config,
                            path: (),
                            shape: &shapes,
                            dtype,
                            buffers: &buffers,
                            options: GradOptions::OVERWRITE,
                        };
                        // SAFETY: as in `cwd_launches_fit`.
                        unsafe { Ifvd::run(call, gpu, &mut FakeScratch, rec) }
                    });
                }
            }
        }
    }
    assert!(checked > 1000, "{checked} launches checked");
    println!(
        "{checked} launches checked; random calls refused so far: {}",
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// CIRKD: the bench's features pooled and unpooled, the large-memory shape, the auto rule's switch,
/// edge cases, and random shapes, channel counts (Cs != Ct) and pool windows.
#[test]
fn cirkd_launches_fit() {
    use crate::cirkd::{check_shapes, Cirkd, CirkdConfig, CirkdPool, CirkdRawBuffers};
    use crate::family::{Family, RawCall};
    /// (student dims, teacher channels, pool, required).
    type Case = ([usize; 4], usize, CirkdPool, bool);
    let mut cases: Vec<Case> = vec![
        ([8, 256, 64, 128], 256, CirkdPool::None, true),
        ([8, 256, 64, 128], 256, CirkdPool::Avg(4), true),
        ([8, 256, 128, 256], 256, CirkdPool::None, true),
        ([2, 128, 512, 1024], 512, CirkdPool::Auto, true),
        ([1, 1, 1, 1], 1, CirkdPool::Auto, true),
        ([3, 37, 5, 7], 40, CirkdPool::Avg(3), true),
    ];
    let mut rng = SplitMix64::new(20);
    for _ in 0..30 {
        let s = random_nchw(&mut rng, 1024, 1 << 16);
        let pool = match rng.below(3) {
            0 => CirkdPool::Auto,
            1 => CirkdPool::None,
            _ => CirkdPool::Avg(1 + rng.below(8)),
        };
        cases.push((s, 1 + rng.below(1024), pool, false));
    }
    let mut checked = 0;
    for (dims, ct, pool, required) in cases {
        let shapes = check_shapes(&dims, &[dims[0], ct, dims[2], dims[3]]).unwrap();
        let config = CirkdConfig { pool, ..CirkdConfig::default() };
        for dtype in DTYPES {
            for (loss, grad, upstream) in MODES {
                let buffers = CirkdRawBuffers {
                    student: addr(1),
                    teacher: addr(2),
                    loss: if loss { addr(3) } else { 0 },
                    grad_student: if grad { addr(4) } else { 0 },
                    upstream: if upstream { addr(5) } else { 0 },
                };
                checked += check_everywhere("cirkd", &[], required, &|gpu, rec| {
                    let call = RawCall::<Cirkd> {
                        config: &config,
                        path: (),
                        shape: &shapes,
                        dtype,
                        buffers: &buffers,
                        options: GradOptions::OVERWRITE,
                    };
                    // SAFETY: as in `cwd_launches_fit`.
                    unsafe { Cirkd::run(call, gpu, &mut FakeScratch, rec) }
                });
            }
        }
    }
    assert!(checked > 1000, "{checked} launches checked");
    println!(
        "{checked} launches checked; random calls refused so far: {}",
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// The check can fail: the same sweep against a GPU whose limits are wrong (a register file of an eighth,
/// shared memory per block of 1 KiB) reports the launches that would not fit.
#[test]
fn a_wrong_limit_fails_the_sweep() {
    let Some(real) = hw::ARCHS.iter().find(|l| hw::KERNEL_RESOURCES.iter().any(|r| r.arch == l.arch)) else {
        panic!("this build has no compiled kernels: the launch limits cannot be checked");
    };
    let shape = Nchw::from_dims("student", &[8, 19, 64, 128]).unwrap();
    let buffers = PixelKdRawBuffers {
        student: addr(1),
        teacher: addr(2),
        loss: addr(3),
        grad_student: addr(4),
        ..Default::default()
    };
    let run = |limits: &'static ArchLimits| {
        let gpu =
            TableGpu { limits: real, sm_count: 132, cooperative: true, opt_in: &crate::pixel_kd::plan::OPT_IN_SMEM };
        let mut rec = Recorder::default();
        // SAFETY: as in `cwd_launches_fit`.
        unsafe {
            crate::pixel_kd::driver::run(
                &PixelKdConfig::default(),
                PixelKdPath::Auto,
                &shape,
                DType::F32,
                &buffers,
                GradOptions::OVERWRITE,
                &gpu,
                &mut FakeScratch,
                &mut rec,
            )
        }
        .unwrap();
        let (launch, dtype) = rec.launches[0];
        let res = gpu.resources(launch.kernel, dtype).unwrap();
        hw::check_launch(limits, res, &launch, BLOCK_THREADS as usize, true, 132)
    };
    assert_eq!(run(real), Ok(()));
    static SMALL_REGISTERS: std::sync::OnceLock<ArchLimits> = std::sync::OnceLock::new();
    let small = SMALL_REGISTERS.get_or_init(|| ArchLimits { regs_per_block: 8 * 1024, ..*real });
    assert!(run(small).unwrap_err().contains("register file"));
    static SMALL_SMEM: std::sync::OnceLock<ArchLimits> = std::sync::OnceLock::new();
    let small = SMALL_SMEM.get_or_init(|| ArchLimits { smem_per_block_optin: 1024, ..*real });
    assert!(run(small).unwrap_err().contains("per-block limit"));
}

/// SKD: the bench's features (8 x 512 x 64 x 128, pooled and not), `Cs != Ct`, edge cases, and random shapes
/// and channel counts, both pools, both Gram paths (`skd_gram_tc` for 16-bit inputs with `Cs = Ct`).
#[test]
fn skd_launches_fit() {
    use crate::family::{Family, RawCall};
    use crate::skd::{check_shapes, Skd, SkdConfig, SkdPool, SkdRawBuffers};
    // (student dims, teacher channels, required).
    let mut cases: Vec<([usize; 4], usize, bool)> = vec![
        ([8, 512, 64, 128], 512, true),
        ([8, 256, 64, 128], 512, true),
        ([1, 1, 1, 1], 1, true),
        ([2, 3, 5, 7], 9, true),
    ];
    let mut rng = SplitMix64::new(20);
    for _ in 0..20 {
        let s = random_nchw(&mut rng, 1024, 1 << 16);
        let ct = if rng.below(2) == 0 { s[1] } else { 1 + rng.below(1024) };
        cases.push((s, ct, false));
    }
    let mut checked = 0;
    let tensor_core_grams = std::cell::Cell::new(0usize);
    for (dims, ct, required) in cases {
        let shapes = check_shapes(&dims, &[dims[0], ct, dims[2], dims[3]]).unwrap();
        for pool in [SkdPool::Max2x2, SkdPool::None] {
            let config = SkdConfig { pool, ..SkdConfig::default() };
            for dtype in DTYPES {
                for (loss, grad, upstream) in MODES {
                    let buffers = SkdRawBuffers {
                        student: addr(1),
                        teacher: addr(2),
                        loss: if loss { addr(3) } else { 0 },
                        grad_student: if grad { addr(4) } else { 0 },
                        grad_teacher: 0,
                        upstream: if upstream { addr(5) } else { 0 },
                    };
                    checked += check_everywhere("skd", &[], required, &|gpu, rec| {
                        let call = RawCall::<Skd> {
                            config: &config,
                            path: (),
                            shape: &shapes,
                            dtype,
                            buffers: &buffers,
                            options: GradOptions::OVERWRITE,
                        };
                        // SAFETY: as in `cwd_launches_fit`.
                        let result = unsafe { Skd::run(call, gpu, &mut FakeScratch, rec) };
                        let tc = rec.launches.iter().filter(|(l, _)| l.kernel == "skd_gram_tc").count();
                        tensor_core_grams.set(tensor_core_grams.get() + tc);
                        result
                    });
                }
            }
        }
    }
    assert!(checked > 1000, "{checked} launches checked");
    // Both Gram paths are checked: the tensor-core Gram of 16-bit calls with `Cs = Ct` among them.
    assert!(tensor_core_grams.get() > 100, "{} tensor-core Gram launches checked", tensor_core_grams.get());
    println!(
        "{checked} launches checked ({} tensor-core Grams); random calls refused so far: {}",
        tensor_core_grams.get(),
        REFUSED.load(std::sync::atomic::Ordering::Relaxed)
    );
}
