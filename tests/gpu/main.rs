//! GPU tests, under a small harness of their own (`harness = false` in Cargo.toml).
//!
//! Without a usable GPU every test is reported as `skipped` with the reason, and the binary exits 0; with
//! one, every test runs and the binary exits 1 if any failed. Command-line arguments (`--test-threads=1`
//! from the GPU runner, filters or `--nocapture` from `cargo test`) are ignored: the suite always runs whole.
//!
//! GPU results are compared with the f64 CPU reference under `kd_kernels::tolerance::tolerance(dtype, kind)`,
//! the same table the verifier uses, never loosened here.

#[path = "../common/mod.rs"]
mod common;

use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::SplitMix64;
use half::{bf16, f16};
use kd_kernels::cpu::CpuOutput;
use kd_kernels::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use kd_kernels::cwd::{CwdConfig, CwdCpu, CwdCuda, CwdPath};
use kd_kernels::fixture::{verify, Backend, Fixture};
use kd_kernels::pixel_kd::{PixelKdConfig, PixelKdCpu, PixelKdCuda, PixelKdPath, Reduction};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::{DType, KdError, KdFloat};
use ndarray::ArrayView4;

type Stream = Arc<CudaStream>;
type TestResult = Result<(), String>;
type TestFn = fn(&Stream) -> TestResult;

const TESTS: &[(&str, TestFn)] = &[
    ("fixtures_pass_on_cuda", fixtures_pass_on_cuda),
    ("verify_runs_both_backends", verify_runs_both_backends),
    ("cwd_paths_on_this_device", cwd_paths_on_this_device),
    ("cwd_matches_cpu_f32", cwd_matches_cpu::<f32>),
    ("cwd_matches_cpu_f16", cwd_matches_cpu::<f16>),
    ("cwd_matches_cpu_bf16", cwd_matches_cpu::<bf16>),
    ("pixel_kd_paths_on_this_device", pixel_kd_paths_on_this_device),
    ("pixel_kd_matches_cpu_f32", pixel_kd_matches_cpu::<f32>),
    ("pixel_kd_matches_cpu_f16", pixel_kd_matches_cpu::<f16>),
    ("pixel_kd_matches_cpu_bf16", pixel_kd_matches_cpu::<bf16>),
    ("trivial_softmax_gives_exact_zero", trivial_softmax_gives_exact_zero),
    ("identical_inputs_give_zero", identical_inputs_give_zero),
    ("close_student_loss_within_tolerance", close_student_loss_within_tolerance),
    ("deterministic_bitwise", deterministic_bitwise),
    ("forward_loss_equals_forward_backward_loss", forward_loss_equals_forward_backward_loss),
    ("backward_scales_by_device_upstream", backward_scales_by_device_upstream),
    ("f16_gradients_with_amp_loss_scale", f16_gradients_with_amp_loss_scale),
    ("cwd_long_rows_take_two_passes", cwd_long_rows_take_two_passes),
    ("cwd_many_calls_in_a_row", cwd_many_calls_in_a_row),
    ("misaligned_views_cwd", misaligned_views_cwd),
    ("misaligned_views_pixel_kd", misaligned_views_pixel_kd),
    ("error_paths_cwd", error_paths_cwd),
    ("error_paths_pixel_kd", error_paths_pixel_kd),
    // Last: it turns off cudarc's event tracking and adds a second stream to the context.
    ("graph_capture_replays", graph_capture_replays),
];

fn main() {
    // Arguments are ignored on purpose (see the module docs).
    let total = TESTS.len();
    let stream = match kd_kernels::cuda::default_stream(0) {
        Ok(stream) => stream,
        Err(e) => {
            let reason = e.to_string().replace('\n', " ");
            for (name, _) in TESTS {
                println!("test {name} ... skipped: {reason}");
            }
            println!("gpu: 0 passed, 0 failed, {total} skipped");
            return;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    let running = Arc::new(Mutex::new((String::new(), Instant::now())));
    watchdog(running.clone());
    for (name, test) in TESTS {
        *running.lock().unwrap() = (name.to_string(), Instant::now());
        let outcome = match catch_unwind(AssertUnwindSafe(|| test(&stream))) {
            Ok(result) => result,
            Err(panic) => Err(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            )),
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Err(msg) => {
                failed += 1;
                println!("test {name} ... FAILED: {msg}");
            }
        }
    }
    println!("gpu: {passed} passed, {failed} failed, 0 skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// A test that runs longer than this has hung (a kernel whose blocks wait for each other would hang, not
/// fail, if they were not all resident): the watchdog reports it and ends the run as a failure.
const TEST_TIME_LIMIT: Duration = Duration::from_secs(300);

fn watchdog(running: Arc<Mutex<(String, Instant)>>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(5));
        let (name, since) = running.lock().map(|r| r.clone()).unwrap_or_else(|p| p.into_inner().clone());
        if since.elapsed() > TEST_TIME_LIMIT {
            println!("test {name} ... FAILED: still running after {} s (hung?)", TEST_TIME_LIMIT.as_secs());
            println!("gpu: the run was stopped by the watchdog");
            std::process::exit(1);
        }
    });
}

// ---------------------------------------------------------------------------------------------------------
// Helpers.

trait OrMsg<T> {
    fn or_msg(self, what: &str) -> Result<T, String>;
}

impl<T, E: Debug> OrMsg<T> for Result<T, E> {
    fn or_msg(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e:?}"))
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> TestResult {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// Joins collected failures into one error.
fn verdict(failures: Vec<String>) -> TestResult {
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} failure(s):\n    {}", failures.len(), failures.join("\n    ")))
    }
}

fn upload<T: KdFloat>(stream: &Stream, values: &[T]) -> Result<CudaSlice<T>, String> {
    stream.clone_htod(values).or_msg("clone_htod")
}

fn download<T: KdFloat, S: DevicePtr<T>>(stream: &Stream, buffer: &S) -> Result<Vec<T>, String> {
    stream.clone_dtoh(buffer).or_msg("clone_dtoh")
}

/// A device buffer filled with NaN, so that an element the kernel fails to write shows up.
fn nan_buffer<T: KdFloat>(stream: &Stream, len: usize) -> Result<CudaSlice<T>, String> {
    upload(stream, &vec![T::from_f32(f32::NAN); len])
}

fn bits<T: KdFloat>(values: &[T]) -> Vec<u64> {
    values.iter().map(|v| v.to_f64().to_bits()).collect()
}

/// Inputs of one case, already in the storage dtype; the CPU reference gets exactly these values.
struct Case<T> {
    dims: [usize; 4],
    s: Vec<T>,
    t: Vec<T>,
}

impl<T: KdFloat> Case<T> {
    /// Logits ~ N(0, 4) rounded to `T`, with a few +-30 outliers (at least 2, ~1 per 20k elements).
    fn random(seed: u64, dims: [usize; 4]) -> Self {
        let numel: usize = dims.iter().product();
        let mut rng = SplitMix64::new(seed);
        let outliers = (numel / 20_000).max(2);
        let s = common::to_dtype(&common::logits(&mut rng, numel, 2.0, outliers));
        let t = common::to_dtype(&common::logits(&mut rng, numel, 2.0, outliers));
        Case { dims, s, t }
    }

    fn numel(&self) -> usize {
        self.s.len()
    }

    fn views(&self) -> Result<(ArrayView4<'_, T>, ArrayView4<'_, T>), String> {
        Ok((
            ArrayView4::from_shape(self.dims, &self.s).or_msg("student view")?,
            ArrayView4::from_shape(self.dims, &self.t).or_msg("teacher view")?,
        ))
    }

    fn name(&self) -> String {
        let [n, c, h, w] = self.dims;
        format!("{}[{n}x{c}x{h}x{w}]", T::DTYPE)
    }
}

/// What one GPU call produced, downloaded.
struct GpuOut<T> {
    loss: f32,
    gs: Vec<T>,
    gt: Option<Vec<T>>,
}

fn cwd_gpu<T: KdFloat>(stream: &Stream, cwd: &mut CwdCuda, case: &Case<T>) -> Result<GpuOut<T>, String> {
    let s = upload(stream, &case.s)?;
    let t = upload(stream, &case.t)?;
    let mut loss = upload(stream, &[f32::NAN])?;
    let mut gs = nan_buffer::<T>(stream, case.numel())?;
    let mut gt = if cwd.config().teacher_grad { Some(nan_buffer::<T>(stream, case.numel())?) } else { None };
    cwd.forward_backward(&case.dims, &s, &t, &mut loss, &mut gs, gt.as_mut().map(|g| g as &mut dyn DevicePtrMut<T>))
        .or_msg("CwdCuda::forward_backward")?;
    Ok(GpuOut {
        loss: download(stream, &loss)?[0],
        gs: download(stream, &gs)?,
        gt: gt.map(|g| download(stream, &g)).transpose()?,
    })
}

fn pixel_kd_gpu<T: KdFloat>(stream: &Stream, pkd: &mut PixelKdCuda, case: &Case<T>) -> Result<GpuOut<T>, String> {
    let s = upload(stream, &case.s)?;
    let t = upload(stream, &case.t)?;
    let mut loss = upload(stream, &[f32::NAN])?;
    let mut gs = nan_buffer::<T>(stream, case.numel())?;
    pkd.forward_backward(&case.dims, &s, &t, &mut loss, &mut gs).or_msg("PixelKdCuda::forward_backward")?;
    Ok(GpuOut { loss: download(stream, &loss)?[0], gs: download(stream, &gs)?, gt: None })
}

/// Compares a GPU result with the CPU reference under the tolerance table; failures go to `failures`.
fn compare<T: KdFloat>(what: &str, gpu: &GpuOut<T>, cpu: &CpuOutput, failures: &mut Vec<String>) {
    let dtype = T::DTYPE;
    let loss = Comparison::of([gpu.loss as f64], [cpu.loss]);
    let tol = tolerance(dtype, OutputKind::Loss);
    if !loss.passes(tol) {
        failures.push(format!("{what}: loss gpu {:e} cpu {:e}: {loss:?} > {tol}", gpu.loss, cpu.loss));
    }
    let mut tensor = |name: &str, got: &[T], reference: Option<&ndarray::Array4<f64>>| {
        let Some(reference) = reference else {
            failures.push(format!("{what}: {name}: the CPU reference has none"));
            return;
        };
        if got.len() != reference.len() {
            failures.push(format!("{what}: {name}: {} elements, reference {}", got.len(), reference.len()));
            return;
        }
        let c = Comparison::of(common::widen(got), reference.iter().copied());
        let tol = tolerance(dtype, OutputKind::Tensor);
        if !c.passes(tol) {
            failures.push(format!("{what}: {name}: {c:?} > {tol}"));
        }
    };
    tensor("grad.student", &gpu.gs, Some(&cpu.grad_student));
    if let Some(gt) = &gpu.gt {
        tensor("grad.teacher", gt, cpu.grad_teacher.as_ref());
    }
}

/// f16 has no normal numbers below 6.1e-5: where the gradient scale would put most of the gradient there, a
/// larger weight keeps it in f16's normal range (the comparison is about the kernels, not f16's range).
/// Other dtypes keep the weight as given.
fn weight_for<T: KdFloat>(loss_weight: f64, grad_scale_per_unit_weight: f64) -> f64 {
    let floor = 2f64.powi(-6);
    if T::DTYPE == DType::F16 && loss_weight * grad_scale_per_unit_weight < floor {
        floor / grad_scale_per_unit_weight
    } else {
        loss_weight
    }
}

/// Shapes of the random comparisons: odd sizes, long rows (CWD row splitting: 1x2x512x1024 rows of 2^19
/// split into chunks; 1x3x129x257 rows of odd length split with a ragged last chunk and unaligned row
/// starts), many channels, width-1 and height-1 planes, and more pixels than one wave of threads.
const SHAPES: [[usize; 4]; 7] = [
    [1, 3, 5, 7],
    [2, 19, 17, 33],
    [3, 7, 1, 1001],
    [2, 5, 33, 1],
    [4, 256, 9, 9],
    [1, 3, 129, 257],
    [1, 2, 512, 1024],
];
const BIG: [usize; 4] = [1, 2, 512, 1024];
/// Both CWD kernels, forced (every shape of [`SHAPES`] fits the single pass on a data-centre GPU).
const CWD_PATHS: [CwdPath; 2] = [CwdPath::SinglePass, CwdPath::TwoPass];
/// Both pixel-KD kernels, forced (every channel count of [`SHAPES`] fits a tile).
const PIXEL_PATHS: [PixelKdPath; 2] = [PixelKdPath::Tiled, PixelKdPath::PerPixel];
const REDUCTIONS: [Reduction; 4] = [Reduction::Mean, Reduction::BatchMean, Reduction::Sum, Reduction::PixelMean];

// ---------------------------------------------------------------------------------------------------------
// Fixtures.

fn fixtures_pass_on_cuda(stream: &Stream) -> TestResult {
    let backend = Backend::Cuda(stream.clone());
    let mut failures = Vec::new();
    for path in common::fixture_files() {
        let fixture = Fixture::load(&path).or_msg(&path.display().to_string())?;
        match fixture.check(&backend) {
            Ok(checks) if checks.is_empty() => failures.push(format!("{}: nothing checked", path.display())),
            Ok(checks) => {
                for c in checks.iter().filter(|c| !c.pass()) {
                    failures.push(format!("{} {}: {:?} > {}", path.display(), c.output, c.comparison, c.tolerance));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    verdict(failures)
}

fn verify_runs_both_backends(stream: &Stream) -> TestResult {
    let dir = common::fixture_dir().display().to_string();
    let mut out = Vec::new();
    let code = verify::run(&[dir], &[Backend::Cpu, Backend::Cuda(stream.clone())], &mut out);
    let text = String::from_utf8(out).or_msg("utf-8")?;
    let cuda_lines = text.lines().filter(|l| l.contains("\"backend\": \"cuda\"")).count();
    let cpu_lines = text.lines().filter(|l| l.contains("\"backend\": \"cpu\"")).count();
    ensure(code == 0, || format!("verify exited {code}:\n{text}"))?;
    ensure(cuda_lines > 0 && cuda_lines == cpu_lines, || format!("{cpu_lines} cpu lines, {cuda_lines} cuda lines"))?;
    let (backends, skipped) = verify::available_backends();
    ensure(skipped.is_none() && backends.len() == 2, || format!("available_backends: skipped {skipped:?}"))
}

// ---------------------------------------------------------------------------------------------------------
// GPU against the CPU reference on random inputs.

fn cwd_matches_cpu<T: KdFloat>(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for (i, dims) in SHAPES.into_iter().enumerate() {
        let case = Case::<T>::random(1000 + i as u64, dims);
        for tau in [1.0, 4.0] {
            let rows = (dims[0] * dims[1]) as f64;
            let loss_weight = weight_for::<T>(3.0, tau / rows);
            // One CPU run (with the teacher gradient) serves both GPU configurations.
            let config = CwdConfig { tau, loss_weight, teacher_grad: true };
            let (s, t) = case.views()?;
            let cpu = CwdCpu::new(config).or_msg("CwdCpu::new")?.forward_backward(s, t).or_msg("CwdCpu")?;
            for teacher_grad in [false, true] {
                for path in CWD_PATHS {
                    let mut cwd = CwdCuda::new(stream.clone(), CwdConfig { teacher_grad, ..config })
                        .or_msg("CwdCuda::new")?
                        .with_path(path);
                    let gpu = cwd_gpu(stream, &mut cwd, &case)?;
                    if gpu.gt.is_some() != teacher_grad {
                        failures.push(format!("{}: teacher gradient presence", case.name()));
                    }
                    let what =
                        format!("cwd {path:?} {} tau={tau} lw={loss_weight} teacher_grad={teacher_grad}", case.name());
                    compare(&what, &gpu, &cpu, &mut failures);
                }
            }
        }
    }
    verdict(failures)
}

fn pixel_kd_matches_cpu<T: KdFloat>(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for (i, dims) in SHAPES.into_iter().enumerate() {
        let case = Case::<T>::random(2000 + i as u64, dims);
        let [n, c, h, w] = dims;
        let shape = kd_kernels::Nchw { n, c, h, w };
        let mut k = 0;
        for tau in [1.0, 4.0] {
            for reduction in REDUCTIONS {
                k += 1;
                // The largest shape once per dtype (its CPU reference is slow in a debug build): it still
                // covers the grid-stride loop (more pixels than one wave of threads).
                let big_pick = match T::DTYPE {
                    DType::F32 => 1,
                    DType::F16 => 3,
                    DType::BF16 => 8,
                };
                if dims == BIG && k != big_pick {
                    continue;
                }
                let scale_tau2 = k % 2 == 0;
                let tau2 = if scale_tau2 { tau * tau } else { 1.0 };
                let loss_weight = weight_for::<T>(10.0, tau2 / reduction.divisor(&shape) / tau);
                let config = PixelKdConfig { tau, loss_weight, reduction, scale_tau2 };
                let (s, t) = case.views()?;
                let cpu = PixelKdCpu::new(config).or_msg("PixelKdCpu::new")?.forward_backward(s, t).or_msg("cpu")?;
                for path in PIXEL_PATHS {
                    let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?.with_path(path);
                    let gpu = pixel_kd_gpu(stream, &mut pkd, &case)?;
                    let what = format!("pixel_kd {path:?} {} {config:?}", case.name());
                    compare(&what, &gpu, &cpu, &mut failures);
                }
            }
        }
    }
    verdict(failures)
}

/// Softmaxes over one element (CWD with H*W = 1, pixel KD with C = 1) are exactly 1, so the reference loss
/// and gradients are exactly 0; with an all-zero reference the relative error is absolute (over `TINY`), so
/// the GPU must produce exact zeros too.
fn trivial_softmax_gives_exact_zero(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for (seed, dims) in [(1u64, [1, 1, 1, 1]), (2, [2, 5, 1, 1]), (3, [3, 7, 1, 1]), (4, [1, 1, 1, 1])] {
        let case = Case::<f32>::random(3000 + seed, dims);
        for tau in [1.0, 4.0] {
            let config = CwdConfig { tau, loss_weight: 3.0, teacher_grad: true };
            let (s, t) = case.views()?;
            let cpu = CwdCpu::new(config).or_msg("cpu")?.forward_backward(s, t).or_msg("cpu")?;
            let mut cwd = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?;
            let gpu = cwd_gpu(stream, &mut cwd, &case)?;
            compare(&format!("cwd {} tau={tau}", case.name()), &gpu, &cpu, &mut failures);
        }
    }
    for (seed, dims) in [(5u64, [1, 1, 1, 1]), (6, [2, 1, 3, 5]), (7, [1, 1, 1, 1])] {
        let case = Case::<f32>::random(3000 + seed, dims);
        for tau in [1.0, 4.0] {
            for reduction in REDUCTIONS {
                let config = PixelKdConfig { tau, loss_weight: 1.0, reduction, scale_tau2: false };
                let (s, t) = case.views()?;
                let cpu = PixelKdCpu::new(config).or_msg("cpu")?.forward_backward(s, t).or_msg("cpu")?;
                let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?;
                let gpu = pixel_kd_gpu(stream, &mut pkd, &case)?;
                compare(&format!("pixel_kd {} tau={tau} {reduction:?}", case.name()), &gpu, &cpu, &mut failures);
            }
        }
    }
    verdict(failures)
}

fn identical_inputs_give_zero(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for dims in [[2, 19, 17, 33], [1, 3, 129, 257]] {
        let mut case = Case::<bf16>::random(3100, dims);
        case.t = case.s.clone();
        let mut cwd = CwdCuda::new(stream.clone(), CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: true })
            .or_msg("CwdCuda::new")?;
        let gpu = cwd_gpu(stream, &mut cwd, &case)?;
        let all_zero = |v: &[bf16]| v.iter().all(|x| x.to_f32() == 0.0);
        if gpu.loss != 0.0 || !all_zero(&gpu.gs) || !all_zero(gpu.gt.as_deref().unwrap_or(&[])) {
            failures.push(format!("cwd {}: loss {:e} or a gradient is not exactly 0", case.name(), gpu.loss));
        }
        let mut pkd = PixelKdCuda::new(stream.clone(), PixelKdConfig::default()).or_msg("PixelKdCuda::new")?;
        let gpu = pixel_kd_gpu(stream, &mut pkd, &case)?;
        if gpu.loss != 0.0 || !all_zero(&gpu.gs) {
            failures.push(format!("pixel_kd {}: loss {:e} or the gradient is not exactly 0", case.name(), gpu.loss));
        }
    }
    verdict(failures)
}

/// A student close to its teacher (late in distillation): student = teacher + N(0, 0.1^2) on logits of
/// standard deviation 2. The KL is then small (~1e-3 per row at tau = 4) while the row statistics it is
/// derived from are O(log2(H*W)), so the loss must not be computed as a difference of two large fp32 terms
/// (e.g. log2(sum_S) - log2(sum_T)); the f32 row of the tolerance table (1e-4) applies as everywhere else.
fn close_student_loss_within_tolerance(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for (seed, dims) in [(3200u64, [2, 19, 17, 33]), (3201, [1, 3, 129, 257]), (3202, [4, 19, 16, 16])] {
        let numel: usize = dims.iter().product();
        let mut rng = SplitMix64::new(seed);
        let t = common::logits(&mut rng, numel, 2.0, 0);
        let s: Vec<f32> = t.iter().map(|&v| (v as f64 + 0.1 * rng.normal()) as f32).collect();
        let case = Case::<f32> { dims, s, t };
        for tau in [1.0, 4.0] {
            let config = CwdConfig { tau, loss_weight: 3.0, teacher_grad: false };
            let (sv, tv) = case.views()?;
            let cpu = CwdCpu::new(config).or_msg("cpu")?.forward_backward(sv, tv).or_msg("cpu")?;
            let mut cwd = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?;
            let gpu = cwd_gpu(stream, &mut cwd, &case)?;
            compare(&format!("cwd {} tau={tau}", case.name()), &gpu, &cpu, &mut failures);

            let config = PixelKdConfig { tau, loss_weight: 10.0, reduction: Reduction::Mean, scale_tau2: true };
            let cpu = PixelKdCpu::new(config).or_msg("cpu")?.forward_backward(sv, tv).or_msg("cpu")?;
            let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?;
            let gpu = pixel_kd_gpu(stream, &mut pkd, &case)?;
            compare(&format!("pixel_kd {} tau={tau}", case.name()), &gpu, &cpu, &mut failures);
        }
    }
    verdict(failures)
}

// ---------------------------------------------------------------------------------------------------------
// Determinism and the relations between entry points.

fn same_bits<T: KdFloat>(what: &str, a: &GpuOut<T>, b: &GpuOut<T>) -> TestResult {
    ensure(a.loss.to_bits() == b.loss.to_bits(), || format!("{what}: loss {:e} vs {:e}", a.loss, b.loss))?;
    ensure(bits(&a.gs) == bits(&b.gs), || format!("{what}: student gradients differ"))?;
    let gt = |o: &GpuOut<T>| o.gt.as_ref().map(|g| bits(g));
    ensure(gt(a) == gt(b), || format!("{what}: teacher gradients differ"))
}

fn deterministic_bitwise(stream: &Stream) -> TestResult {
    let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: true };
    let small = Case::<f32>::random(4000, [2, 19, 17, 33]);
    for (dims, path) in [BIG, [1, 3, 129, 257]].into_iter().flat_map(|d| CWD_PATHS.map(|p| (d, p))) {
        let case = Case::<f32>::random(4001, dims);
        let mut cwd = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?.with_path(path);
        let first = cwd_gpu(stream, &mut cwd, &case)?;
        let again = cwd_gpu(stream, &mut cwd, &case)?;
        same_bits(&format!("cwd {path:?} {} twice", case.name()), &first, &again)?;
        // A smaller shape in between (the workspace keeps its size) and a fresh object.
        cwd_gpu(stream, &mut cwd, &small)?;
        let after = cwd_gpu(stream, &mut cwd, &case)?;
        same_bits(&format!("cwd {path:?} {} after another shape", case.name()), &first, &after)?;
        let mut fresh = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?.with_path(path);
        cwd_gpu(stream, &mut fresh, &small)?; // the workspace grows on the next call
        let grown = cwd_gpu(stream, &mut fresh, &case)?;
        same_bits(&format!("cwd {path:?} {} fresh object", case.name()), &first, &grown)?;
    }
    let config = PixelKdConfig { tau: 4.0, loss_weight: 10.0, reduction: Reduction::Mean, scale_tau2: true };
    for (dims, path) in [BIG, [2, 19, 64, 64], [2, 256, 33, 17]].into_iter().flat_map(|d| PIXEL_PATHS.map(|p| (d, p))) {
        let case = Case::<bf16>::random(4002, dims);
        let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?.with_path(path);
        let first = pixel_kd_gpu(stream, &mut pkd, &case)?;
        let again = pixel_kd_gpu(stream, &mut pkd, &case)?;
        same_bits(&format!("pixel_kd {path:?} {} twice", case.name()), &first, &again)?;
        let mut fresh = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?.with_path(path);
        let other = pixel_kd_gpu(stream, &mut fresh, &Case::<bf16>::random(4003, [1, 3, 5, 7]))?;
        ensure(other.loss.is_finite(), || "pixel_kd small case".into())?;
        let fresh_out = pixel_kd_gpu(stream, &mut fresh, &case)?;
        same_bits(&format!("pixel_kd {path:?} {} fresh object", case.name()), &first, &fresh_out)?;
    }
    Ok(())
}

fn forward_loss_equals_forward_backward_loss(stream: &Stream) -> TestResult {
    fn run<T: KdFloat>(stream: &Stream, dims: [usize; 4], seed: u64) -> TestResult {
        let case = Case::<T>::random(seed, dims);
        let s = upload(stream, &case.s)?;
        let t = upload(stream, &case.t)?;
        for teacher_grad in [false, true] {
            let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad };
            let mut cwd = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?;
            let fb = cwd_gpu(stream, &mut cwd, &case)?;
            let mut loss = upload(stream, &[f32::NAN])?;
            cwd.forward(&case.dims, &s, &t, &mut loss).or_msg("CwdCuda::forward")?;
            let f = download(stream, &loss)?[0];
            ensure(f.to_bits() == fb.loss.to_bits(), || {
                format!(
                    "cwd {} teacher_grad={teacher_grad}: forward {f:e} vs forward_backward {:e}",
                    case.name(),
                    fb.loss
                )
            })?;
        }
        for reduction in REDUCTIONS {
            let config = PixelKdConfig { tau: 2.0, loss_weight: 10.0, reduction, scale_tau2: true };
            let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?;
            let fb = pixel_kd_gpu(stream, &mut pkd, &case)?;
            let mut loss = upload(stream, &[f32::NAN])?;
            pkd.forward(&case.dims, &s, &t, &mut loss).or_msg("PixelKdCuda::forward")?;
            let f = download(stream, &loss)?[0];
            ensure(f.to_bits() == fb.loss.to_bits(), || {
                format!("pixel_kd {} {reduction:?}: forward {f:e} vs forward_backward {:e}", case.name(), fb.loss)
            })?;
        }
        Ok(())
    }
    run::<f32>(stream, BIG, 5000)?;
    run::<f32>(stream, [2, 19, 17, 33], 5001)?;
    run::<f16>(stream, [1, 3, 129, 257], 5002)?;
    run::<bf16>(stream, [4, 256, 9, 9], 5003)
}

/// `backward` with a device upstream `u` gives `u` times the `forward_backward` gradient, up to one rounding
/// of the product in the storage dtype (`eps_rel` of the gradient's max), and leaves the loss alone.
fn backward_scales_by_device_upstream(stream: &Stream) -> TestResult {
    fn run<T: KdFloat>(stream: &Stream, dims: [usize; 4], eps_rel: f64) -> TestResult {
        let case = Case::<T>::random(6000, dims);
        let s = upload(stream, &case.s)?;
        let t = upload(stream, &case.t)?;
        let check = |what: &str, got: &[T], base: &[T], u: f64| -> TestResult {
            let reference: Vec<f64> = base.iter().map(|v| u * v.to_f64()).collect();
            let c = Comparison::of(common::widen(got), reference.iter().copied());
            let ok = if u == 0.0 { got.iter().all(|v| v.to_f64() == 0.0) } else { c.passes(eps_rel) };
            ensure(ok, || format!("{what} {} upstream={u}: {c:?} (allowed {eps_rel:e})", case.name()))
        };
        for u in [2.5f32, -0.5, 0.0] {
            let up = upload(stream, &[u])?;
            // CWD, with the teacher gradient.
            let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: true };
            let mut cwd = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?;
            let fb = cwd_gpu(stream, &mut cwd, &case)?;
            let loss = upload(stream, &[fb.loss])?;
            let mut gs = nan_buffer::<T>(stream, case.numel())?;
            let mut gt = nan_buffer::<T>(stream, case.numel())?;
            cwd.backward(&case.dims, &s, &t, &up, &mut gs, Some(&mut gt)).or_msg("CwdCuda::backward")?;
            check("cwd grad.student", &download(stream, &gs)?, &fb.gs, u as f64)?;
            check("cwd grad.teacher", &download(stream, &gt)?, fb.gt.as_ref().unwrap(), u as f64)?;
            // The loss buffer (not passed to backward) keeps its value, and a forward_backward after a
            // backward gives the same bits (the kernels' last-block counter is left consistent).
            let kept = download(stream, &loss)?[0];
            ensure(kept.to_bits() == fb.loss.to_bits(), || format!("cwd: loss buffer changed to {kept:e}"))?;
            let after = cwd_gpu(stream, &mut cwd, &case)?;
            same_bits("cwd forward_backward after backward", &fb, &after)?;

            // Pixel KD.
            let config = PixelKdConfig { tau: 1.0, loss_weight: 10.0, reduction: Reduction::Sum, scale_tau2: false };
            let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?;
            let fb = pixel_kd_gpu(stream, &mut pkd, &case)?;
            let mut gs = nan_buffer::<T>(stream, case.numel())?;
            pkd.backward(&case.dims, &s, &t, &up, &mut gs).or_msg("PixelKdCuda::backward")?;
            check("pixel_kd grad.student", &download(stream, &gs)?, &fb.gs, u as f64)?;
            let after = pixel_kd_gpu(stream, &mut pkd, &case)?;
            same_bits("pixel_kd forward_backward after backward", &fb, &after)?;
        }
        Ok(())
    }
    run::<f32>(stream, [2, 19, 17, 33], 4.0 * f32::EPSILON as f64)?;
    run::<f32>(stream, [1, 3, 129, 257], 4.0 * f32::EPSILON as f64)?;
    run::<f16>(stream, [2, 19, 17, 33], 2f64.powi(-9))?;
    run::<bf16>(stream, [4, 256, 9, 9], 2f64.powi(-6))
}

/// The official pixel-KD setting (mean over N*C*H*W, weight 10) on f16 logits gives gradients below f16's
/// normal range; mixed-precision training scales the loss, which `backward`'s device upstream carries. With
/// a loss scale of 1024 the f16 gradients meet the f16 row of the tolerance table against the CPU's.
fn f16_gradients_with_amp_loss_scale(stream: &Stream) -> TestResult {
    let case = Case::<f16>::random(7000, [2, 19, 64, 64]);
    let config = PixelKdConfig::default();
    let upstream = 1024.0f32;
    let (sv, tv) = case.views()?;
    let cpu = PixelKdCpu::new(config).or_msg("cpu")?.backward(sv, tv, upstream as f64).or_msg("cpu")?;
    let s = upload(stream, &case.s)?;
    let t = upload(stream, &case.t)?;
    let up = upload(stream, &[upstream])?;
    let mut gs = nan_buffer::<f16>(stream, case.numel())?;
    let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?;
    pkd.backward(&case.dims, &s, &t, &up, &mut gs).or_msg("backward")?;
    let got = download(stream, &gs)?;
    let c = Comparison::of(common::widen(&got), cpu.grad_student.iter().copied());
    let tol = tolerance(DType::F16, OutputKind::Tensor);
    ensure(c.passes(tol), || format!("{c:?} > {tol}"))
}

// ---------------------------------------------------------------------------------------------------------
// The two CWD paths.

/// On a data-centre GPU the single pass applies to every benchmarked shape; `Auto` takes it there, and the
/// two paths agree with each other as well as with the CPU reference.
fn cwd_paths_on_this_device(stream: &Stream) -> TestResult {
    let cwd = CwdCuda::new(stream.clone(), CwdConfig::default()).or_msg("CwdCuda::new")?;
    let mut failures = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let max = cwd.single_pass_max_row_len(dtype);
        println!("    single pass: rows of up to {max} {dtype} elements on this device");
        for dims in [[8, 19, 64, 128], [8, 19, 512, 1024], [8, 256, 64, 128]] {
            match cwd.resolved_path(&dims, dtype) {
                Ok(CwdPath::SinglePass) => {}
                other => failures.push(format!("{dtype} {dims:?}: Auto resolves to {other:?}, not the single pass")),
            }
        }
    }
    let config = CwdConfig { tau: 2.0, loss_weight: 1.0, teacher_grad: true };
    let case = Case::<bf16>::random(4500, [2, 19, 97, 101]);
    let mut one = CwdCuda::new(stream.clone(), config).or_msg("new")?.with_path(CwdPath::SinglePass);
    let mut two = CwdCuda::new(stream.clone(), config).or_msg("new")?.with_path(CwdPath::TwoPass);
    let (a, b) = (cwd_gpu(stream, &mut one, &case)?, cwd_gpu(stream, &mut two, &case)?);
    let loss = Comparison::of([a.loss as f64], [b.loss as f64]);
    if !loss.passes(tolerance(DType::BF16, OutputKind::Loss)) {
        failures.push(format!("single vs two passes: loss {:e} vs {:e}", a.loss, b.loss));
    }
    let grad = Comparison::of(common::widen(&a.gs), common::widen(&b.gs));
    if !grad.passes(tolerance(DType::BF16, OutputKind::Tensor)) {
        failures.push(format!("single vs two passes: grad.student {grad:?}"));
    }
    verdict(failures)
}

/// The tiled pixel-KD kernel applies to every benchmarked shape (19 classes, 256 feature channels), and to
/// 1000 bf16 channels with the shared memory a data-centre GPU allows a block; `Auto` takes it there.
fn pixel_kd_paths_on_this_device(stream: &Stream) -> TestResult {
    let pkd = PixelKdCuda::new(stream.clone(), PixelKdConfig::default()).or_msg("PixelKdCuda::new")?;
    let mut failures = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for dims in [[8, 19, 64, 128], [8, 19, 512, 1024], [8, 256, 64, 128], [2, 150, 64, 64]] {
            match pkd.resolved_path(&dims, dtype) {
                Ok(PixelKdPath::Tiled) => {}
                other => failures.push(format!("{dtype} {dims:?}: Auto resolves to {other:?}, not the tiled kernel")),
            }
        }
    }
    if pkd.resolved_path(&[1, 1000, 8, 8], DType::BF16) != Ok(PixelKdPath::Tiled) {
        failures.push("1000 bf16 channels: expected the tiled kernel (a 32-pixel tile is 128,000 bytes)".into());
    }
    let case = Case::<f32>::random(4550, [2, 1000, 5, 7]);
    let (s, t) = case.views()?;
    let config = PixelKdConfig { tau: 2.0, loss_weight: 1.0, reduction: Reduction::Sum, scale_tau2: false };
    let cpu = PixelKdCpu::new(config).or_msg("cpu")?.forward_backward(s, t).or_msg("cpu")?;
    let mut auto = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?;
    println!("    1000 f32 channels: Auto takes {:?}", auto.resolved_path(&case.dims, DType::F32));
    let gpu = pixel_kd_gpu(stream, &mut auto, &case)?;
    compare(&format!("pixel_kd Auto {}", case.name()), &gpu, &cpu, &mut failures);
    verdict(failures)
}

/// Rows longer than the single pass takes on this device: `Auto` runs the two passes and matches the CPU
/// reference, a forced single pass is a typed error.
fn cwd_long_rows_take_two_passes(stream: &Stream) -> TestResult {
    let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: false };
    let mut auto = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?;
    let row = auto.single_pass_max_row_len(DType::F32) + 4099;
    let dims = [1, 2, 1, row];
    ensure(auto.resolved_path(&dims, DType::F32) == Ok(CwdPath::TwoPass), || format!("{dims:?}: not two passes"))?;
    let case = Case::<f32>::random(4600, dims);
    let (s, t) = case.views()?;
    let cpu = CwdCpu::new(config).or_msg("cpu")?.forward_backward(s, t).or_msg("cpu")?;
    let gpu = cwd_gpu(stream, &mut auto, &case)?;
    let mut failures = Vec::new();
    compare(&format!("cwd Auto {}", case.name()), &gpu, &cpu, &mut failures);
    let mut forced = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?.with_path(CwdPath::SinglePass);
    match cwd_gpu(stream, &mut forced, &case) {
        Err(e) if e.contains("Unsupported") => {}
        other => failures.push(format!("forced single pass on rows of {row}: {:?}", other.map(|o| o.loss))),
    }
    verdict(failures)
}

/// Hundreds of calls in a row on one object, shapes and entry points interleaved: the single pass's per-row
/// counters and the loss ticket must return to zero after every launch, or a later call would compute
/// from stale counts (or hang). Every repeat of a case must give the first result's bits.
fn cwd_many_calls_in_a_row(stream: &Stream) -> TestResult {
    let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: true };
    let cases = [
        Case::<f32>::random(4700, [2, 19, 64, 128]),
        Case::<f32>::random(4701, [1, 3, 129, 257]),
        Case::<f32>::random(4702, [8, 19, 8, 8]),
    ];
    for path in CWD_PATHS {
        let mut cwd = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?.with_path(path);
        let firsts: Vec<GpuOut<f32>> = cases.iter().map(|c| cwd_gpu(stream, &mut cwd, c)).collect::<Result<_, _>>()?;
        let case = &cases[0];
        let s = upload(stream, &case.s)?;
        let t = upload(stream, &case.t)?;
        let up = upload(stream, &[1.0f32])?;
        let mut loss = upload(stream, &[0.0f32])?;
        let mut gs = nan_buffer::<f32>(stream, case.numel())?;
        let mut gt = nan_buffer::<f32>(stream, case.numel())?;
        for _ in 0..100 {
            cwd.forward(&case.dims, &s, &t, &mut loss).or_msg("forward")?;
            cwd.backward(&case.dims, &s, &t, &up, &mut gs, Some(&mut gt)).or_msg("backward")?;
            cwd.forward_backward(&case.dims, &s, &t, &mut loss, &mut gs, Some(&mut gt)).or_msg("forward_backward")?;
        }
        stream.synchronize().or_msg("synchronize")?;
        for (i, c) in cases.iter().enumerate() {
            let again = cwd_gpu(stream, &mut cwd, c)?;
            same_bits(&format!("cwd {path:?} {} after 300 calls", c.name()), &firsts[i], &again)?;
        }
        let last =
            GpuOut { loss: download(stream, &loss)?[0], gs: download(stream, &gs)?, gt: Some(download(stream, &gt)?) };
        same_bits(&format!("cwd {path:?} {} the 300th call", case.name()), &firsts[0], &last)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Misaligned views: offsets of one element make the 16-byte vector loads start after a scalar head.

/// Uploads `values` at element offset `offset` of a longer buffer (NaN around it).
fn upload_at<T: KdFloat>(stream: &Stream, values: &[T], offset: usize) -> Result<CudaSlice<T>, String> {
    let mut padded = vec![T::from_f32(f32::NAN); offset];
    padded.extend_from_slice(values);
    padded.extend(std::iter::repeat_n(T::from_f32(f32::NAN), 3));
    upload(stream, &padded)
}

/// Element offsets of (student, teacher, grad_student, grad_teacher): equal offsets keep a common
/// alignment (vector path after a scalar head and before a scalar tail), unequal ones force the scalar path.
const OFFSETS: [[usize; 4]; 4] = [[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 3, 0], [3, 2, 1, 5]];

fn misaligned_cwd_case<T: KdFloat>(stream: &Stream, dims: [usize; 4], failures: &mut Vec<String>) -> TestResult {
    let case = Case::<T>::random(8000, dims);
    let n = case.numel();
    let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: true };
    let (sv, tv) = case.views()?;
    let cpu = CwdCpu::new(config).or_msg("cpu")?.forward_backward(sv, tv).or_msg("cpu")?;
    for (path, [os, ot, ogs, ogt]) in CWD_PATHS.into_iter().flat_map(|p| OFFSETS.map(|o| (p, o))) {
        let mut cwd = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?.with_path(path);
        let s = upload_at(stream, &case.s, os)?;
        let t = upload_at(stream, &case.t, ot)?;
        let mut gs = nan_buffer::<T>(stream, n + ogs + 3)?;
        let mut gt = nan_buffer::<T>(stream, n + ogt + 3)?;
        let mut loss = upload(stream, &[f32::NAN])?;
        cwd.forward_backward(
            &dims,
            &s.slice(os..os + n),
            &t.slice(ot..ot + n),
            &mut loss,
            &mut gs.slice_mut(ogs..ogs + n),
            Some(&mut gt.slice_mut(ogt..ogt + n)),
        )
        .or_msg("CwdCuda::forward_backward on views")?;
        let gs_all = download(stream, &gs)?;
        let gt_all = download(stream, &gt)?;
        let outside_untouched = |all: &[T], o: usize| all[..o].iter().chain(&all[o + n..]).all(|v| v.to_f64().is_nan());
        let what = format!("cwd {path:?} {} offsets {:?}", case.name(), [os, ot, ogs, ogt]);
        if !outside_untouched(&gs_all, ogs) || !outside_untouched(&gt_all, ogt) {
            failures.push(format!("{what}: wrote outside the gradient views"));
        }
        let gpu = GpuOut {
            loss: download(stream, &loss)?[0],
            gs: gs_all[ogs..ogs + n].to_vec(),
            gt: Some(gt_all[ogt..ogt + n].to_vec()),
        };
        compare(&what, &gpu, &cpu, failures);
    }
    Ok(())
}

fn misaligned_views_cwd(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for dims in [[1, 3, 129, 257], [2, 5, 9, 11], [1, 1, 1, 37]] {
        misaligned_cwd_case::<f32>(stream, dims, &mut failures)?;
        misaligned_cwd_case::<f16>(stream, dims, &mut failures)?;
        misaligned_cwd_case::<bf16>(stream, dims, &mut failures)?;
    }
    verdict(failures)
}

fn misaligned_pixel_kd_case<T: KdFloat>(stream: &Stream, dims: [usize; 4], failures: &mut Vec<String>) -> TestResult {
    let case = Case::<T>::random(8100, dims);
    let n = case.numel();
    let config = PixelKdConfig { tau: 2.0, loss_weight: 1.0, reduction: Reduction::Sum, scale_tau2: true };
    let (sv, tv) = case.views()?;
    let cpu = PixelKdCpu::new(config).or_msg("cpu")?.forward_backward(sv, tv).or_msg("cpu")?;
    for (path, [os, ot, ogs, _]) in PIXEL_PATHS.into_iter().flat_map(|p| OFFSETS.map(|o| (p, o))) {
        let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?.with_path(path);
        let s = upload_at(stream, &case.s, os)?;
        let t = upload_at(stream, &case.t, ot)?;
        let mut gs = nan_buffer::<T>(stream, n + ogs + 3)?;
        let mut loss = upload(stream, &[f32::NAN])?;
        pkd.forward_backward(
            &dims,
            &s.slice(os..os + n),
            &t.slice(ot..ot + n),
            &mut loss,
            &mut gs.slice_mut(ogs..ogs + n),
        )
        .or_msg("PixelKdCuda::forward_backward on views")?;
        let all = download(stream, &gs)?;
        let what = format!("pixel_kd {path:?} {} offsets {:?}", case.name(), [os, ot, ogs]);
        if !all[..ogs].iter().chain(&all[ogs + n..]).all(|v| v.to_f64().is_nan()) {
            failures.push(format!("{what}: wrote outside the gradient view"));
        }
        let gpu = GpuOut { loss: download(stream, &loss)?[0], gs: all[ogs..ogs + n].to_vec(), gt: None };
        compare(&what, &gpu, &cpu, failures);
    }
    Ok(())
}

fn misaligned_views_pixel_kd(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for dims in [[2, 19, 17, 33], [1, 7, 1, 9]] {
        misaligned_pixel_kd_case::<f32>(stream, dims, &mut failures)?;
        misaligned_pixel_kd_case::<f16>(stream, dims, &mut failures)?;
        misaligned_pixel_kd_case::<bf16>(stream, dims, &mut failures)?;
    }
    verdict(failures)
}

// ---------------------------------------------------------------------------------------------------------
// Errors that need a device. Each must come back before any work is queued: outputs keep their contents.

fn expect_err(what: &str, got: Result<(), KdError>, want: impl Fn(&KdError) -> bool) -> TestResult {
    match got {
        Err(e) if want(&e) => ensure(!e.to_string().is_empty(), || format!("{what}: empty message")),
        other => Err(format!("{what}: unexpected {other:?}")),
    }
}

fn error_paths_cwd(stream: &Stream) -> TestResult {
    let dims = [2, 3, 4, 5];
    let n = 120;
    let case = Case::<f32>::random(9000, dims);
    let s = upload(stream, &case.s)?;
    let t = upload(stream, &case.t)?;
    let short = upload(stream, &case.s[..n - 1])?;
    let sentinel = 7.0f32;
    let mut loss = upload(stream, &[sentinel])?;
    let mut gs = upload(stream, &vec![sentinel; n])?;
    let mut gt = upload(stream, &vec![sentinel; n])?;
    let mut gs_short = upload(stream, &vec![sentinel; n - 1])?;

    // Bad configurations are rejected by the GPU constructor too.
    for tau in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let r = CwdCuda::new(stream.clone(), CwdConfig { tau, ..CwdConfig::default() }).map(|_| ());
        expect_err(&format!("CwdCuda::new tau={tau}"), r, |e| {
            matches!(e, KdError::InvalidParameter { name: "tau", .. })
        })?;
    }
    let r = CwdCuda::new(stream.clone(), CwdConfig { loss_weight: f64::NAN, ..CwdConfig::default() }).map(|_| ());
    expect_err("CwdCuda::new lw=NaN", r, |e| matches!(e, KdError::InvalidParameter { name: "loss_weight", .. }))?;

    let mut off =
        CwdCuda::new(stream.clone(), CwdConfig { teacher_grad: false, ..CwdConfig::default() }).or_msg("new")?;
    let mut on =
        CwdCuda::new(stream.clone(), CwdConfig { teacher_grad: true, ..CwdConfig::default() }).or_msg("new")?;
    let up = upload(stream, &[1.0f32])?;

    let r = off.forward_backward(&dims, &s, &t, &mut loss, &mut gs_short, None);
    expect_err("grad_student too short", r, |e| {
        *e == KdError::BufferTooSmall { what: "grad_student", needed: n, len: n - 1 }
    })?;
    let r = on.forward_backward(&dims, &s, &t, &mut loss, &mut gs, Some(&mut gs_short));
    expect_err("grad_teacher too short", r, |e| {
        *e == KdError::BufferTooSmall { what: "grad_teacher", needed: n, len: n - 1 }
    })?;
    let r = off.forward_backward(&dims, &short, &t, &mut loss, &mut gs, None);
    expect_err("student too short", r, |e| *e == KdError::BufferTooSmall { what: "student", needed: n, len: n - 1 })?;
    let r = off.forward(&dims, &s, &short, &mut loss);
    expect_err("teacher too short", r, |e| *e == KdError::BufferTooSmall { what: "teacher", needed: n, len: n - 1 })?;
    let r = off.forward(&dims, &s, &t, &mut loss.slice_mut(0..0));
    expect_err("loss of length 0", r, |e| *e == KdError::BufferTooSmall { what: "loss", needed: 1, len: 0 })?;
    let r = off.forward_backward(&dims, &s, &t, &mut loss.slice_mut(0..0), &mut gs, None);
    expect_err("loss of length 0 (forward_backward)", r, |e| {
        matches!(e, KdError::BufferTooSmall { what: "loss", .. })
    })?;
    let r = off.backward(&dims, &s, &t, &up.slice(0..0), &mut gs, None);
    expect_err("upstream of length 0", r, |e| matches!(e, KdError::BufferTooSmall { what: "upstream", .. }))?;

    let r = on.forward_backward(&dims, &s, &t, &mut loss, &mut gs, None);
    expect_err("teacher_grad on, None", r, |e| matches!(e, KdError::OutputMismatch { what: "grad_teacher", .. }))?;
    let r = on.backward(&dims, &s, &t, &up, &mut gs, None);
    expect_err("teacher_grad on, None (backward)", r, |e| matches!(e, KdError::OutputMismatch { .. }))?;
    let r = off.forward_backward(&dims, &s, &t, &mut loss, &mut gs, Some(&mut gt));
    expect_err("teacher_grad off, Some", r, |e| matches!(e, KdError::OutputMismatch { what: "grad_teacher", .. }))?;
    let r = off.backward(&dims, &s, &t, &up, &mut gs, Some(&mut gt));
    expect_err("teacher_grad off, Some (backward)", r, |e| matches!(e, KdError::OutputMismatch { .. }))?;

    for bad in [&[2usize, 3, 20][..], &[1, 2, 3, 4, 5], &[]] {
        let r = off.forward_backward(bad, &s, &t, &mut loss, &mut gs, None);
        expect_err(&format!("shape {bad:?}"), r, |e| {
            *e == KdError::WrongRank { what: "student", expected: 4, got: bad.len() }
        })?;
    }
    let r = off.forward(&[2, 0, 4, 5], &s, &t, &mut loss);
    expect_err("zero dimension", r, |e| matches!(e, KdError::EmptyInput { .. }))?;
    let r = off.forward(&[2, 3, 4, 6], &s, &t, &mut loss);
    expect_err("shape larger than the buffers", r, |e| matches!(e, KdError::BufferTooSmall { what: "student", .. }))?;

    // A weight whose scale is not representable in f32 is refused at launch.
    for lw in [1e-300, 1e300] {
        let mut tiny =
            CwdCuda::new(stream.clone(), CwdConfig { loss_weight: lw, ..CwdConfig::default() }).or_msg("new")?;
        let r = tiny.forward(&dims, &s, &t, &mut loss);
        expect_err(&format!("loss_weight {lw}"), r, |e| matches!(e, KdError::InvalidParameter { .. }))?;
    }

    // Nothing was written by any failed call.
    stream.synchronize().or_msg("synchronize")?;
    ensure(download(stream, &loss)? == [sentinel], || "a failed call wrote the loss".into())?;
    for (name, buf) in [("grad_student", &gs), ("grad_teacher", &gt)] {
        ensure(download(stream, buf)?.iter().all(|&v| v == sentinel), || format!("a failed call wrote {name}"))?;
    }

    // The objects still work after the errors.
    let (sv, tv) = case.views()?;
    let cpu = CwdCpu::new(*on.config()).or_msg("cpu")?.forward_backward(sv, tv).or_msg("cpu")?;
    let gpu = cwd_gpu(stream, &mut on, &case)?;
    let mut failures = Vec::new();
    compare("cwd after errors", &gpu, &cpu, &mut failures);
    verdict(failures)
}

fn error_paths_pixel_kd(stream: &Stream) -> TestResult {
    let dims = [2, 3, 4, 5];
    let n = 120;
    let case = Case::<bf16>::random(9100, dims);
    let s = upload(stream, &case.s)?;
    let t = upload(stream, &case.t)?;
    let sentinel = bf16::from_f32(7.0);
    let mut loss = upload(stream, &[7.0f32])?;
    let mut gs = upload(stream, &vec![sentinel; n])?;
    let mut gs_short = upload(stream, &vec![sentinel; n - 1])?;
    let up = upload(stream, &[1.0f32])?;

    for tau in [0.0, -1.0, f64::NAN, f64::NEG_INFINITY] {
        let r = PixelKdCuda::new(stream.clone(), PixelKdConfig { tau, ..PixelKdConfig::default() }).map(|_| ());
        expect_err(&format!("PixelKdCuda::new tau={tau}"), r, |e| {
            matches!(e, KdError::InvalidParameter { name: "tau", .. })
        })?;
    }
    let mut pkd = PixelKdCuda::new(stream.clone(), PixelKdConfig::default()).or_msg("new")?;
    let r = pkd.forward_backward(&dims, &s, &t, &mut loss, &mut gs_short);
    expect_err("grad_student too short", r, |e| {
        *e == KdError::BufferTooSmall { what: "grad_student", needed: n, len: n - 1 }
    })?;
    let r = pkd.backward(&dims, &s, &t, &up, &mut gs_short);
    expect_err("grad_student too short (backward)", r, |e| matches!(e, KdError::BufferTooSmall { .. }))?;
    let r = pkd.forward(&dims, &s, &t, &mut loss.slice_mut(0..0));
    expect_err("loss of length 0", r, |e| *e == KdError::BufferTooSmall { what: "loss", needed: 1, len: 0 })?;
    let r = pkd.forward(&dims, &s.slice(0..n - 1), &t, &mut loss);
    expect_err("student too short", r, |e| matches!(e, KdError::BufferTooSmall { what: "student", .. }))?;
    let r = pkd.backward(&dims, &s, &t, &up.slice(0..0), &mut gs);
    expect_err("upstream of length 0", r, |e| matches!(e, KdError::BufferTooSmall { what: "upstream", .. }))?;
    for bad in [&[2usize, 3, 20][..], &[1, 2, 3, 4, 5]] {
        let r = pkd.forward(bad, &s, &t, &mut loss);
        expect_err(&format!("shape {bad:?}"), r, |e| matches!(e, KdError::WrongRank { got, .. } if *got == bad.len()))?;
    }
    let r = pkd.forward(&[2, 3, 0, 5], &s, &t, &mut loss);
    expect_err("zero dimension", r, |e| matches!(e, KdError::EmptyInput { .. }))?;
    let mut tiny = PixelKdCuda::new(stream.clone(), PixelKdConfig { loss_weight: 1e-300, ..PixelKdConfig::default() })
        .or_msg("new")?;
    let r = tiny.forward(&dims, &s, &t, &mut loss);
    expect_err("loss_weight 1e-300", r, |e| matches!(e, KdError::InvalidParameter { .. }))?;

    stream.synchronize().or_msg("synchronize")?;
    ensure(download(stream, &loss)? == [7.0], || "a failed call wrote the loss".into())?;
    ensure(download(stream, &gs)?.iter().all(|&v| v == sentinel), || "a failed call wrote grad_student".into())?;

    // The object still works after the errors.
    let (sv, tv) = case.views()?;
    let cpu = PixelKdCpu::new(*pkd.config()).or_msg("cpu")?.forward_backward(sv, tv).or_msg("cpu")?;
    let gpu = pixel_kd_gpu(stream, &mut pkd, &case)?;
    let mut failures = Vec::new();
    compare("pixel_kd after errors", &gpu, &cpu, &mut failures);
    verdict(failures)
}

// ---------------------------------------------------------------------------------------------------------
// CUDA graphs: training stacks capture the loss step once and replay it. A replay must give the bits of the
// captured call every time, which also needs every kernel to leave its counters at zero.

/// One loss call on (loss, grad_student) buffers, as captured into a graph.
type LossCall<'a> = dyn FnMut(&mut CudaSlice<f32>, &mut CudaSlice<bf16>) -> Result<(), KdError> + 'a;

fn graph_capture_replays(stream: &Stream) -> TestResult {
    use kd_kernels::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let ctx = stream.context().clone();
    // SAFETY: the buffers of this test are used on one stream; cudarc's cross-stream events are not needed, and
    // waits on events recorded before a capture began are not allowed inside it.
    unsafe { ctx.disable_event_tracking() };
    let capture = ctx.new_stream().or_msg("new_stream")?; // the legacy default stream cannot be captured
    let case = Case::<bf16>::random(9500, [2, 19, 64, 96]);
    let s = upload(&capture, &case.s)?;
    let t = upload(&capture, &case.t)?;
    let mut loss = upload(&capture, &[f32::NAN])?;
    let mut gs = nan_buffer::<bf16>(&capture, case.numel())?;

    let mut replay = |what: String, call: &mut LossCall<'_>| -> TestResult {
        // Outside the capture first: the workspace grows on the first call, and allocations cannot be captured.
        call(&mut loss, &mut gs).or_msg(&format!("{what}: first call"))?;
        capture.synchronize().or_msg("synchronize")?;
        let expected = GpuOut { loss: download(&capture, &loss)?[0], gs: download(&capture, &gs)?, gt: None };
        capture.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).or_msg("begin_capture")?;
        let captured = call(&mut loss, &mut gs);
        let graph = capture.end_capture(CUgraphInstantiate_flags(0)).or_msg(&format!("{what}: end_capture"));
        captured.or_msg(&format!("{what}: the call under capture"))?;
        let graph = graph?.ok_or_else(|| format!("{what}: the capture recorded nothing"))?;
        for i in 0..5 {
            capture.memset_zeros(&mut loss).or_msg("memset")?;
            capture.memset_zeros(&mut gs).or_msg("memset")?;
            graph.launch().or_msg("graph launch")?;
            capture.synchronize().or_msg("synchronize")?;
            let got = GpuOut { loss: download(&capture, &loss)?[0], gs: download(&capture, &gs)?, gt: None };
            same_bits(&format!("{what}: replay {i}"), &expected, &got)?;
        }
        Ok(())
    };
    let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: false };
    for path in CWD_PATHS {
        let mut cwd = CwdCuda::new(capture.clone(), config).or_msg("CwdCuda::new")?.with_path(path);
        replay(format!("cwd {path:?}"), &mut |loss, gs| cwd.forward_backward(&case.dims, &s, &t, loss, gs, None))?;
    }
    for path in PIXEL_PATHS {
        let mut pkd =
            PixelKdCuda::new(capture.clone(), PixelKdConfig::default()).or_msg("PixelKdCuda::new")?.with_path(path);
        replay(format!("pixel_kd {path:?}"), &mut |loss, gs| pkd.forward_backward(&case.dims, &s, &t, loss, gs))?;
    }
    Ok(())
}
