//! Every launch the planners make fits the hardware (tests only).
//!
//! Each family's driver runs as a CUDA call would, on fake device addresses, with a [`Launcher`] that
//! records its launches instead of running them and a [`DeviceInfo`] that answers from [`crate::hw`]: the
//! compiled kernels' resources on one architecture and that architecture's limits, for an SM count of a real
//! GPU of it, with and without cooperative launch. Every recorded launch is then checked by
//! [`hw::check_launch`]: threads x registers within the register file, static + dynamic shared memory within
//! the default 48 KiB or, for the kernels the launcher opts in, the opt-in limit, a cooperative grid within
//! the blocks the occupancy formula keeps resident, the grid within its limits. On the benches' shapes and
//! on seeded random shapes, every dtype, every output set. This file is the sweep; each family's cases are
//! its own, in `src/{module}/launch_limits.rs`.

use std::ffi::c_void;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::family::{Family, PairRawBuffers, RawCall};
use crate::grad::GradOptions;
use crate::hw::{self, ArchLimits};
use crate::launch::{DeviceInfo, Launch, LaunchError, Launcher, Machine, Scratch, BLOCK_THREADS};
use crate::pixel_kd::{PixelKd, PixelKdConfig, PixelKdPath};
use crate::testing::SplitMix64;

/// Every registered family has its sweep, `src/{module}/launch_limits.rs` (a `{module}_launches_fit` test
/// of its benches' shapes and seeded random ones through [`check_call`] or [`check_everywhere`]): a family
/// cannot be registered without one.
macro_rules! every_family_has_a_sweep {
    ($($variant:ident => $module:ident :: $marker:ident, $name:literal, $fixtures:ident;)*) => {
        // Only that the module exists: its test is its own.
        $(#[allow(unused_imports)] use crate::$module::launch_limits as _;)*
    };
}
crate::for_each_family!(every_family_has_a_sweep);

pub(crate) const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

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
pub(crate) struct TableGpu {
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
pub(crate) struct Recorder {
    pub(crate) launches: Vec<(Launch, DType)>,
}

impl Launcher for Recorder {
    unsafe fn launch(&mut self, launch: &Launch, dtype: DType, _args: *const c_void) -> Result<(), LaunchError> {
        self.launches.push((*launch, dtype));
        Ok(())
    }
}

/// Workspace addresses that no kernel will touch (nothing runs), 256-byte aligned like cudarc's.
pub(crate) struct FakeScratch;

impl Scratch for FakeScratch {
    fn prepare(&mut self, _floats: usize, _counters: usize) -> Result<(u64, u64)> {
        Ok((0x7000_0000_0000, 0x7800_0000_0000))
    }

    fn reset_counters(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Distinct fake addresses, 256-byte aligned, for a call's buffers.
pub(crate) fn addr(i: u64) -> u64 {
    0x1000_0000_0000 + i * 0x10_0000_0000
}

/// What a call may make of one family: the driver on a device, returning the launches it made.
pub(crate) type Call<'a> = dyn Fn(&TableGpu, &mut Recorder) -> Result<()> + 'a;

/// Checks every launch of `call` on every compiled architecture, SM count and cooperative setting. A call
/// that is `required` (the benches' shapes) must plan; a random one may end in a typed error (a shape the
/// family refuses), which is counted and printed. Returns the number of launches checked; each test requires
/// over a thousand (500 for SemCKD), so that the sweep cannot pass by refusing everything.
pub(crate) fn check_everywhere(what: &str, opt_in: &'static [&'static str], required: bool, call: &Call<'_>) -> usize {
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
pub(crate) type Mode = (bool, bool, bool);
const MODES: [Mode; 3] = [(true, false, false), (true, true, false), (false, true, true)];

/// Every dtype with every output set of [`MODES`].
pub(crate) fn dtype_modes() -> impl Iterator<Item = (DType, Mode)> {
    DTYPES.into_iter().flat_map(|dtype| MODES.map(|mode| (dtype, mode)))
}

/// Address `i` where the output is wanted, else 0 (absent).
pub(crate) fn addr_if(wanted: bool, i: u64) -> u64 {
    if wanted {
        addr(i)
    } else {
        0
    }
}

/// The pair buffers of one output set of [`MODES`]; the teacher's gradient with the student's where
/// `grad_teacher`.
pub(crate) fn pair_buffers((loss, grad, upstream): Mode, grad_teacher: bool) -> PairRawBuffers {
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
pub(crate) fn raw_call<'a, F: Family>(
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
pub(crate) fn check_call<F: Family>(
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
pub(crate) fn enough(checked: usize, at_least: usize) {
    assert!(checked > at_least, "{checked} launches checked");
    println!("{checked} launches checked; random calls refused so far: {}", REFUSED.load(Relaxed));
}

pub(crate) fn random_nchw(rng: &mut SplitMix64, max_c: usize, max_plane: usize) -> [usize; 4] {
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
pub(crate) fn with_random<C>(
    fixed: Vec<C>,
    seed: u64,
    n: usize,
    mut random: impl FnMut(&mut SplitMix64) -> C,
) -> Vec<C> {
    let mut rng = SplitMix64::new(seed);
    let mut cases = fixed;
    cases.extend((0..n).map(|_| random(&mut rng)));
    cases
}

/// `fixed` and `n` random shapes of up to `max_c` channels and `max_plane` pixels, these not required.
pub(crate) fn random_shapes(
    fixed: Vec<([usize; 4], bool)>,
    seed: u64,
    n: usize,
    max_c: usize,
    max_plane: usize,
) -> Vec<([usize; 4], bool)> {
    with_random(fixed, seed, n, |rng| (random_nchw(rng, max_c, max_plane), false))
}

/// The benches' logits shapes (`benches/common`, `benches/icsd.rs`) and edge cases.
pub(crate) const LOGIT_SHAPES: [[usize; 4]; 7] = [
    [8, 19, 64, 128],
    [8, 19, 512, 1024],
    [8, 256, 64, 128],
    [2, 21, 65, 65],
    [6, 21, 513, 513],
    [1, 1, 1, 1],
    [3, 1000, 7, 9],
];

/// The benches' logits shapes, marked required, and `n` random ones of the family's seed.
pub(crate) fn logit_cases(seed: u64, n: usize, max_c: usize, max_plane: usize) -> Vec<([usize; 4], bool)> {
    random_shapes(LOGIT_SHAPES.iter().map(|&s| (s, true)).collect(), seed, n, max_c, max_plane)
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
