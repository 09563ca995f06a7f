//! Helpers shared by the integration tests: the deterministic PRNG, random logits with
//! injected outliers, dtype rounding, and where the recorded fixtures live.
//!
//! Every test file includes this with `mod common;` and uses only part of it.
#![allow(dead_code)]

pub mod relation;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use kd_kernels::cwd::CwdConfig;
use kd_kernels::fixture::{Backend, Check, Fixture};
use kd_kernels::pixel_kd::{PixelKdConfig, Reduction};
use kd_kernels::verify;
use kd_kernels::{DType, KdFloat, Nchw};
use ndarray::Array4;

/// The crate's one seeded generator (tests, benches and examples share it).
pub use kd_kernels::testing::SplitMix64;

/// Rounds to a multiple of 2^-10: with |x| < 64 the value then has at most 16 significant bits, so it is
/// exact in f32 and so are `x +- 2^-14` (finite differences without input rounding).
pub fn quantize(x: f64) -> f64 {
    (x * 1024.0).round() / 1024.0
}

/// `numel` logits ~ N(0, scale^2) (quantized, see [`quantize`]), with `outliers` entries at random
/// positions replaced by +30 or -30.
pub fn logits(rng: &mut SplitMix64, numel: usize, scale: f64, outliers: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..numel).map(|_| quantize(rng.normal() * scale) as f32).collect();
    for _ in 0..outliers.min(numel) {
        let i = rng.below(numel);
        v[i] = if rng.uniform() < 0.5 { 30.0 } else { -30.0 };
    }
    v
}

/// A random NCHW array of logits (f32).
pub fn logits4(rng: &mut SplitMix64, dims: [usize; 4], scale: f64, outliers: usize) -> Array4<f32> {
    let numel = dims.iter().product();
    Array4::from_shape_vec(dims, logits(rng, numel, scale, outliers)).expect("shape matches")
}

/// Rounds f32 values to the storage type `T` (round to nearest).
pub fn to_dtype<T: KdFloat>(values: &[f32]) -> Vec<T> {
    values.iter().map(|&v| T::from_f32(v)).collect()
}

/// Widens exactly.
pub fn widen<T: KdFloat>(values: &[T]) -> Vec<f64> {
    values.iter().map(|v| v.to_f64()).collect()
}

/// `tests/fixtures`, relative to the working directory (cargo runs tests from the crate root; the GPU
/// runner runs the binaries from a copy of the repository root).
pub fn fixture_dir() -> PathBuf {
    let dir = PathBuf::from("tests").join("fixtures");
    assert!(
        dir.is_dir(),
        "{} not found: run the tests from the crate root (cwd = {:?})",
        dir.display(),
        std::env::current_dir()
    );
    dir
}

/// Every `*.safetensors` file of [`fixture_dir`], sorted.
pub fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .expect("list tests/fixtures")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixture in tests/fixtures");
    files
}

/// The recorded fixtures of one family: the files of [`fixture_files`] whose name starts with `prefix`
/// (`"dist_"`).
pub fn family_fixtures(prefix: &str) -> Vec<PathBuf> {
    fixture_files().into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix)).collect()
}

/// Runs the fixture at `path` through `verify` on the CPU reference: each of `outputs` is among the checks
/// (a check left out would pass unseen) and every check passes. Returns the fixture and its checks.
pub fn passes_on_cpu(path: &Path, outputs: &[&str]) -> (Fixture, Vec<Check>) {
    let fixture = Fixture::load(path).unwrap();
    let checks = verify::check(&fixture, &Backend::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for output in outputs {
        assert!(checks.iter().any(|c| c.output == *output), "{}: {output} not checked", path.display());
    }
    for c in &checks {
        assert!(c.pass(), "{}: {} {:?} > {:e}", path.display(), c.output, c.comparison, c.tolerance);
    }
    (fixture, checks)
}

/// A fresh, empty directory under the system temp dir, unique to this process and call.
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kd_kernels_test_{}_{tag}_{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Max |a - b| over two equally long sequences.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Max |a|.
pub fn max_abs(a: &[f64]) -> f64 {
    a.iter().map(|x| x.abs()).fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------------------------------
// The scenarios of the same-shape pair losses (CWD, pixel KD): one table that every backend runs, the CPU
// reference (tests/cpu/properties.rs), the kernels on the host emulation (tests/emulator/pair.rs) and the GPU
// (tests/gpu/cwd.rs, tests/gpu/pixel_kd.rs).

/// One scenario: a shape, how its logits are drawn, and the parameters of both losses.
#[derive(Debug, Clone, Copy)]
pub struct PairScenario {
    /// What the scenario exercises.
    pub name: &'static str,
    pub dims: [usize; 4],
    /// Logits ~ N(0, spread^2), quantized (see [`logits`]).
    pub spread: f64,
    /// How many entries of each tensor are replaced by +-30.
    pub outliers: usize,
    pub seed: u64,
    pub tau: f64,
    pub loss_weight: f64,
    /// CWD's `teacher_grad`.
    pub teacher_grad: bool,
    /// Pixel KD's reduction and `scale_tau2`.
    pub reduction: Reduction,
    pub scale_tau2: bool,
}

#[allow(clippy::too_many_arguments)]
const fn scenario(
    name: &'static str,
    dims: [usize; 4],
    spread: f64,
    outliers: usize,
    seed: u64,
    (tau, loss_weight, teacher_grad): (f64, f64, bool),
    (reduction, scale_tau2): (Reduction, bool),
) -> PairScenario {
    PairScenario { name, dims, spread, outliers, seed, tau, loss_weight, teacher_grad, reduction, scale_tau2 }
}

/// Odd shapes, every kernel path's edge (CWD: rows over several chunks, ragged last chunks, unaligned row
/// starts, rows of 2^19; pixel KD: 1 to 256 channels, planes of width or height 1), outliers, and every
/// temperature, reduction and `tau^2` setting.
pub const PAIR_SCENARIOS: [PairScenario; 12] = [
    scenario(
        "one element: softmaxes of one value",
        [1, 1, 1, 1],
        3.0,
        0,
        10,
        (1.0, 3.0, true),
        (Reduction::Mean, false),
    ),
    scenario("odd sizes", [1, 3, 5, 7], 3.0, 1, 11, (4.0, 3.0, true), (Reduction::BatchMean, true)),
    scenario("odd plane, rows of 561", [2, 4, 17, 33], 3.0, 14, 12, (1.0, 1.0, false), (Reduction::Sum, false)),
    scenario("height-1 rows of 1001", [3, 2, 1, 1001], 3.0, 121, 13, (2.0, 3.0, true), (Reduction::PixelMean, true)),
    scenario("19 classes", [2, 19, 17, 33], 2.0, 2, 14, (4.0, 3.0, true), (Reduction::Mean, false)),
    scenario("width-1 planes", [2, 5, 33, 1], 2.0, 2, 15, (1.0, 10.0, true), (Reduction::PixelMean, false)),
    scenario("256 channels", [4, 256, 9, 9], 2.0, 4, 16, (4.0, 3.0, true), (Reduction::BatchMean, true)),
    scenario("rows over several chunks", [1, 2, 64, 129], 3.0, 330, 17, (0.5, 2.0, true), (Reduction::Sum, true)),
    scenario("ragged chunks, unaligned rows", [1, 3, 129, 257], 2.0, 5, 18, (4.0, 3.0, true), (Reduction::Mean, true)),
    scenario("7 channels, rows of 1001", [3, 7, 1, 1001], 2.0, 2, 19, (1.0, 3.0, false), (Reduction::BatchMean, false)),
    scenario("outliers everywhere", [2, 7, 13, 11], 1.0, 200, 20, (2.0, 5.0, true), (Reduction::Sum, true)),
    scenario("rows of 2^19", [1, 2, 512, 1024], 2.0, 52, 21, (4.0, 3.0, true), (Reduction::Mean, false)),
];

/// Above this many elements a scenario is left to the CPU reference and the GPU: the host emulation runs
/// every GPU thread as a fiber, and larger cases cost it seconds each (its own tests cover many channels,
/// long rows and ragged chunks on shapes picked for it).
pub const EMULATOR_MAX_NUMEL: usize = 25_000;

impl PairScenario {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    pub fn on_emulator(&self) -> bool {
        self.numel() <= EMULATOR_MAX_NUMEL
    }

    /// Student and teacher logits in f32 (round them to the storage dtype with [`to_dtype`]).
    pub fn logits(&self) -> (Vec<f32>, Vec<f32>) {
        let mut rng = SplitMix64::new(self.seed);
        let student = logits(&mut rng, self.numel(), self.spread, self.outliers);
        let teacher = logits(&mut rng, self.numel(), self.spread, self.outliers);
        (student, teacher)
    }

    /// CWD's configuration, its weight raised where f16 gradients would be subnormal (see [`weight_for`]).
    pub fn cwd_config(&self, dtype: DType) -> CwdConfig {
        let rows = (self.dims[0] * self.dims[1]) as f64;
        let loss_weight = weight_for(dtype, self.loss_weight, self.tau / rows);
        CwdConfig { tau: self.tau, loss_weight, teacher_grad: self.teacher_grad }
    }

    /// Pixel KD's configuration, its weight raised where f16 gradients would be subnormal.
    pub fn pixel_kd_config(&self, dtype: DType) -> PixelKdConfig {
        let [n, c, h, w] = self.dims;
        let tau2 = if self.scale_tau2 { self.tau * self.tau } else { 1.0 };
        let per_unit_weight = tau2 / self.reduction.divisor(&Nchw { n, c, h, w }) / self.tau;
        let loss_weight = weight_for(dtype, self.loss_weight, per_unit_weight);
        PixelKdConfig { tau: self.tau, loss_weight, reduction: self.reduction, scale_tau2: self.scale_tau2 }
    }
}

/// f16 has no normal numbers below 6.1e-5: where the gradient scale would put most of the gradient there, a
/// larger weight keeps it in f16's normal range (the comparisons are about the kernels, not f16's range).
/// Other dtypes keep the weight as given.
pub fn weight_for(dtype: DType, loss_weight: f64, grad_scale_per_unit_weight: f64) -> f64 {
    let floor = 2f64.powi(-6);
    if dtype == DType::F16 && loss_weight * grad_scale_per_unit_weight < floor {
        floor / grad_scale_per_unit_weight
    } else {
        loss_weight
    }
}
