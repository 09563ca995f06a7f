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

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::cwd::{Cwd, CwdConfig, CwdPath};
use crate::cwt::{Cwt, CwtConfig, CwtRawBuffers, CwtSetup, CwtShapes};
use crate::dist::{Dist, DistConfig};
use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::family::{Family, PairFamily, PairRawBuffers, RawCall};
use crate::grad::GradOptions;
use crate::hw::{self, ArchLimits};
use crate::icsd::{Icsd, IcsdConfig, IcsdRawBuffers, IcsdVariant};
use crate::launch::{DeviceInfo, Launch, LaunchError, Launcher, Machine, Scratch, BLOCK_THREADS};
use crate::pixel_kd::{PixelKd, PixelKdConfig, PixelKdPath};
use crate::semckd::{Semckd, SemckdConfig, SemckdLayers, SemckdRawBuffers};
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
                        REFUSED.fetch_add(1, Relaxed);
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
static REFUSED: AtomicUsize = AtomicUsize::new(0);

/// (loss, gradient, upstream): the forward, forward-backward and backward calls of the wrappers.
type Mode = (bool, bool, bool);
const MODES: [Mode; 3] = [(true, false, false), (true, true, false), (false, true, true)];

/// Every dtype with every output set of [`MODES`].
fn dtype_modes() -> impl Iterator<Item = (DType, Mode)> {
    DTYPES.into_iter().flat_map(|dtype| MODES.map(|mode| (dtype, mode)))
}

/// Address `i` where the output is wanted, else 0 (absent).
fn addr_if(wanted: bool, i: u64) -> u64 {
    if wanted {
        addr(i)
    } else {
        0
    }
}

/// The pair buffers of one output set of [`MODES`]; the teacher's gradient with the student's where
/// `grad_teacher`.
fn pair_buffers((loss, grad, upstream): Mode, grad_teacher: bool) -> PairRawBuffers {
    PairRawBuffers {
        student: addr(1),
        teacher: addr(2),
        loss: addr_if(loss, 3),
        grad_student: addr_if(grad, 4),
        grad_teacher: addr_if(grad && grad_teacher, 5),
        upstream: addr_if(upstream, 6),
    }
}

/// One call of `F` as every surface makes it, with overwritten, unscaled gradients.
fn raw_call<'a, F: Family>(
    config: &'a F::Config,
    path: F::Path,
    shape: &'a F::Shape,
    dtype: DType,
    buffers: &'a F::RawBuffers,
) -> RawCall<'a, F> {
    RawCall { config, path, shape, dtype, buffers, options: GradOptions::OVERWRITE }
}

/// [`check_everywhere`] on one call of `F` through [`Family::run`], the driver every surface goes through,
/// with the kernels `F` opts in to large shared memory.
fn check_call<F: Family>(
    config: &F::Config,
    path: F::Path,
    shape: &F::Shape,
    dtype: DType,
    buffers: &F::RawBuffers,
    required: bool,
) -> usize {
    check_everywhere(F::NAME, F::LARGE_SMEM_KERNELS, required, &|gpu, rec| {
        // SAFETY: nothing runs: the recorder takes the launches and touches no address.
        unsafe {
            F::run(
                raw_call(config, path, shape, dtype, buffers),
                Machine { device: gpu, scratch: &mut FakeScratch, launcher: rec },
            )
        }
        .map(|_| ())
    })
}

/// Ends a family's sweep: it checked more than `at_least` launches, so that it cannot pass by refusing every
/// call.
fn enough(checked: usize, at_least: usize) {
    assert!(checked > at_least, "{checked} launches checked");
    println!("{checked} launches checked; random calls refused so far: {}", REFUSED.load(Relaxed));
}

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

/// The `fixed` cases (the benches' and edge cases) followed by `n` random ones, each drawn by `random` from one
/// generator seeded with the family's `seed`: every sweep's list of cases.
fn with_random<C>(fixed: Vec<C>, seed: u64, n: usize, mut random: impl FnMut(&mut SplitMix64) -> C) -> Vec<C> {
    let mut rng = SplitMix64::new(seed);
    let mut cases = fixed;
    cases.extend((0..n).map(|_| random(&mut rng)));
    cases
}

/// `fixed` and `n` random shapes of up to `max_c` channels and `max_plane` pixels, these not required.
fn random_shapes(
    fixed: Vec<([usize; 4], bool)>,
    seed: u64,
    n: usize,
    max_c: usize,
    max_plane: usize,
) -> Vec<([usize; 4], bool)> {
    with_random(fixed, seed, n, |rng| (random_nchw(rng, max_c, max_plane), false))
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

/// The benches' logits shapes, marked required, and `n` random ones of the family's seed.
fn logit_cases(seed: u64, n: usize, max_c: usize, max_plane: usize) -> Vec<([usize; 4], bool)> {
    random_shapes(LOGIT_SHAPES.iter().map(|&s| (s, true)).collect(), seed, n, max_c, max_plane)
}

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

#[test]
fn pixel_kd_launches_fit() {
    let mut checked = 0;
    for (dims, required) in logit_cases(2, 40, 4096, 1 << 22) {
        for (dtype, mode) in dtype_modes() {
            for path in [PixelKdPath::Auto, PixelKdPath::PerPixel] {
                let config = PixelKdConfig::default();
                checked += check_call::<PixelKd>(&config, path, &dims, dtype, &pair_buffers(mode, false), required);
            }
        }
    }
    enough(checked, 1000);
}

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

/// PKD: the benches' feature pyramid (RetinaNet / RTMDet, 8 x 256 channels, strides 8 to 128 of 800 x 1216) and
/// random level lists of up to the most levels a call takes.
#[test]
fn pkd_launches_fit() {
    use crate::pkd::{Pkd, PkdConfig, PkdLevels, PkdRawBuffers, MAX_LEVELS};
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

/// IFVD: the bench's features with Cityscapes' 19 and ADE20K's 150 classes, edge cases, and random shapes,
/// channel counts, label resolutions and class counts, every label dtype.
#[test]
fn ifvd_launches_fit() {
    use crate::ifvd::{check_shapes, Ifvd, IfvdConfig, IfvdRawBuffers, LabelDType};
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

/// CIRKD: the bench's features pooled and unpooled, the large-memory shape, the auto rule's switch,
/// edge cases, and random shapes, channel counts (Cs != Ct) and pool windows.
#[test]
fn cirkd_launches_fit() {
    use crate::cirkd::{check_shapes, Cirkd, CirkdConfig, CirkdPool};
    use crate::family::StudentGradFamily;
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

/// The check can fail: the same sweep against a GPU whose limits are wrong (a register file of an eighth,
/// shared memory per block of 1 KiB) reports the launches that would not fit.
#[test]
fn a_wrong_limit_fails_the_sweep() {
    let Some(real) = hw::ARCHS.iter().find(|l| hw::KERNEL_RESOURCES.iter().any(|r| r.arch == l.arch)) else {
        panic!("this build has no compiled kernels: the launch limits cannot be checked");
    };
    let dims = [8, 19, 64, 128];
    let buffers = pair_buffers((true, true, false), false);
    let run = |limits: &'static ArchLimits| {
        let gpu =
            TableGpu { limits: real, sm_count: 132, cooperative: true, opt_in: &crate::pixel_kd::plan::OPT_IN_SMEM };
        let mut rec = Recorder::default();
        let config = PixelKdConfig::default();
        let call = raw_call::<PixelKd>(&config, PixelKdPath::Auto, &dims, DType::F32, &buffers);
        // SAFETY: as in `check_call`.
        unsafe { PixelKd::run(call, Machine { device: &gpu, scratch: &mut FakeScratch, launcher: &mut rec }) }.unwrap();
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
    use crate::skd::{check_shapes, Skd, SkdConfig, SkdPool};
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
