//! What the two same-shape NCHW softmax losses (CWD, pixel KD) share in the GPU tests: random cases with
//! outliers, one call downloaded, the comparison with the CPU reference, and the properties stated once
//! over both (exact zeros, close students, determinism, entry points, device upstream, CUDA graphs).

use half::{bf16, f16};
use kd_kernels::cpu::CpuOutput;
use std::cell::RefCell;

use kd_kernels::cuda::LossCuda;
use kd_kernels::cudarc::driver::{CudaGraph, CudaSlice, DevicePtr, DevicePtrMut};
use kd_kernels::cwd::{Cwd, CwdConfig, CwdCpu, CwdCuda, CwdPath, CwdRawBuffers};
use kd_kernels::family::{Family, PairBuffers, PairFamily};
use kd_kernels::pixel_kd::{
    PixelKd, PixelKdConfig, PixelKdCpu, PixelKdCuda, PixelKdPath, PixelKdRawBuffers, Reduction,
};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::{DType, GradOptions, KdError, KdFloat};
use ndarray::ArrayView4;

use crate::common::{self, PairScenario, SplitMix64};
use crate::harness::{
    bits, download, ensure, expect_err, gpu_tests, nan_buffer, upload, upload_at, verdict, OrMsg, Stream, TestFn,
    TestResult,
};

pub(crate) const TESTS: &[(&str, TestFn)] = gpu_tests![
    trivial_softmax_gives_exact_zero,
    identical_inputs_give_zero,
    close_student_loss_within_tolerance,
    deterministic_bitwise,
    forward_loss_equals_forward_backward_loss,
    backward_scales_by_device_upstream,
];

/// Last of the whole suite: they turn off cudarc's event tracking and add streams to the context.
pub(crate) const LAST: &[(&str, TestFn)] =
    gpu_tests![graph_capture_replays, reserve_then_capture, launch_raw_on_a_second_stream];

/// Inputs of one case, already in the storage dtype; the CPU reference gets exactly these values.
pub(crate) struct Case<T> {
    pub(crate) dims: [usize; 4],
    pub(crate) s: Vec<T>,
    pub(crate) t: Vec<T>,
}

impl<T: KdFloat> Case<T> {
    /// Logits ~ N(0, 4) rounded to `T`, with a few +-30 outliers (at least 2, ~1 per 20k elements).
    pub(crate) fn random(seed: u64, dims: [usize; 4]) -> Self {
        let numel: usize = dims.iter().product();
        let mut rng = SplitMix64::new(seed);
        let outliers = (numel / 20_000).max(2);
        let s = common::to_dtype(&common::logits(&mut rng, numel, 2.0, outliers));
        let t = common::to_dtype(&common::logits(&mut rng, numel, 2.0, outliers));
        Case { dims, s, t }
    }

    /// The inputs of one of the shared scenarios, in `T`.
    pub(crate) fn of(scenario: &PairScenario) -> Self {
        let (s, t) = scenario.logits();
        Case { dims: scenario.dims, s: common::to_dtype(&s), t: common::to_dtype(&t) }
    }

    pub(crate) fn numel(&self) -> usize {
        self.s.len()
    }

    pub(crate) fn views(&self) -> Result<(ArrayView4<'_, T>, ArrayView4<'_, T>), String> {
        Ok((
            ArrayView4::from_shape(self.dims, &self.s).or_msg("student view")?,
            ArrayView4::from_shape(self.dims, &self.t).or_msg("teacher view")?,
        ))
    }

    pub(crate) fn name(&self) -> String {
        let [n, c, h, w] = self.dims;
        format!("{}[{n}x{c}x{h}x{w}]", T::DTYPE)
    }
}

/// What one GPU call produced, downloaded.
pub(crate) struct GpuOut<T> {
    pub(crate) loss: f32,
    pub(crate) gs: Vec<T>,
    pub(crate) gt: Option<Vec<T>>,
}

/// The inputs of a pair call, no output yet.
pub(crate) fn pair<'a, T>(s: &'a dyn DevicePtr<T>, t: &'a dyn DevicePtr<T>) -> PairBuffers<'a, T> {
    PairBuffers::new(s, t)
}

/// One `forward_backward` of any pair family on `case`, with the teacher gradient where the configuration
/// gives it, downloaded.
pub(crate) fn pair_gpu<F: PairFamily, T: KdFloat>(
    stream: &Stream,
    loss_object: &mut LossCuda<F>,
    case: &Case<T>,
) -> Result<GpuOut<T>, String> {
    let s = upload(stream, &case.s)?;
    let t = upload(stream, &case.t)?;
    let mut loss = upload(stream, &[f32::NAN])?;
    let mut gs = nan_buffer::<T>(stream, case.numel())?;
    let mut gt =
        if F::teacher_grad(loss_object.config()) { Some(nan_buffer::<T>(stream, case.numel())?) } else { None };
    let buffers = PairBuffers {
        loss: Some(&mut loss),
        grad_student: Some(&mut gs),
        grad_teacher: gt.as_mut().map(|g| g as &mut dyn DevicePtrMut<T>),
        ..pair(&s, &t)
    };
    loss_object.call(&case.dims, F::pair_buffers(buffers)).or_msg(&format!("{}: forward_backward", F::NAME))?;
    Ok(GpuOut {
        loss: download(stream, &loss)?[0],
        gs: download(stream, &gs)?,
        gt: gt.map(|g| download(stream, &g)).transpose()?,
    })
}

/// One `forward_backward` of `loss_object` on `case` against its family's CPU reference (with the object's
/// configuration) under the tolerance table; failures go to `failures`.
pub(crate) fn matches_cpu<F: PairFamily, T: KdFloat>(
    what: &str,
    stream: &Stream,
    loss_object: &mut LossCuda<F>,
    case: &Case<T>,
    failures: &mut Vec<String>,
) -> TestResult {
    let (s, t) = case.views()?;
    let cpu = F::cpu(loss_object.config(), s, t).or_msg(&format!("{what}: cpu"))?;
    let gpu = pair_gpu(stream, loss_object, case)?;
    compare(what, &gpu, &cpu, failures);
    Ok(())
}

/// The GPU constructor of `F` refuses each temperature of `taus` (`with_tau` makes the configuration) with a
/// typed error naming `tau`.
pub(crate) fn bad_taus_rejected<F: Family>(
    stream: &Stream,
    taus: [f64; 4],
    with_tau: impl Fn(f64) -> F::Config,
) -> TestResult {
    for tau in taus {
        let r = LossCuda::<F>::new(stream.clone(), with_tau(tau)).map(drop);
        expect_err(&format!("{} new tau={tau}", F::NAME), r, |e| {
            matches!(e, KdError::InvalidParameter { name: "tau", .. })
        })?;
    }
    Ok(())
}

/// Compares a GPU result with the CPU reference under the tolerance table; failures go to `failures`.
pub(crate) fn compare<T: KdFloat>(what: &str, gpu: &GpuOut<T>, cpu: &CpuOutput, failures: &mut Vec<String>) {
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

/// The largest shape of the comparisons: CWD rows of 2^19 split into chunks, more pixels than one wave.
pub(crate) const BIG: [usize; 4] = [1, 2, 512, 1024];

/// Both CWD kernels, forced (every shape of `common::PAIR_SCENARIOS` fits the single pass on a data-centre
/// GPU).
pub(crate) const CWD_PATHS: [CwdPath; 2] = [CwdPath::SinglePass, CwdPath::TwoPass];

/// Both pixel-KD kernels, forced (every channel count of `common::PAIR_SCENARIOS` fits a tile).
pub(crate) const PIXEL_PATHS: [PixelKdPath; 2] = [PixelKdPath::Tiled, PixelKdPath::PerPixel];

pub(crate) const REDUCTIONS: [Reduction; 4] =
    [Reduction::Mean, Reduction::BatchMean, Reduction::Sum, Reduction::PixelMean];

/// Element offsets of (student, teacher, grad_student, grad_teacher): equal offsets keep a common
/// alignment (vector path after a scalar head and before a scalar tail), unequal ones force the scalar path.
pub(crate) const OFFSETS: [[usize; 4]; 4] = [[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 3, 0], [3, 2, 1, 5]];

/// Every path of `paths` on sub-buffers at the element offsets of [`OFFSETS`] (NaN around each), in every
/// dtype, on random cases of each shape of `shapes` (from `seed`): the results match the CPU reference, and
/// nothing is written outside the gradient views.
pub(crate) fn misaligned_views<F: PairFamily>(
    stream: &Stream,
    config: F::Config,
    paths: &[F::Path],
    seed: u64,
    shapes: &[[usize; 4]],
) -> TestResult {
    let mut failures = Vec::new();
    for &dims in shapes {
        misaligned_case::<F, f32>(stream, &config, paths, &Case::random(seed, dims), &mut failures)?;
        misaligned_case::<F, f16>(stream, &config, paths, &Case::random(seed, dims), &mut failures)?;
        misaligned_case::<F, bf16>(stream, &config, paths, &Case::random(seed, dims), &mut failures)?;
    }
    verdict(failures)
}

fn misaligned_case<F: PairFamily, T: KdFloat>(
    stream: &Stream,
    config: &F::Config,
    paths: &[F::Path],
    case: &Case<T>,
    failures: &mut Vec<String>,
) -> TestResult {
    let (n, dims) = (case.numel(), case.dims);
    let (sv, tv) = case.views()?;
    let cpu = F::cpu(config, sv, tv).or_msg("cpu")?;
    for (&path, offsets) in paths.iter().flat_map(|p| OFFSETS.map(|o| (p, o))) {
        let [os, ot, ogs, ogt] = offsets;
        let mut loss_object = LossCuda::<F>::new(stream.clone(), config.clone()).or_msg("new")?.with_path(path);
        let s = upload_at(stream, &case.s, os)?;
        let t = upload_at(stream, &case.t, ot)?;
        let mut gs = nan_buffer::<T>(stream, n + ogs + 3)?;
        let mut gt = if F::teacher_grad(config) { Some(nan_buffer::<T>(stream, n + ogt + 3)?) } else { None };
        let mut loss = upload(stream, &[f32::NAN])?;
        let (sv, tv) = (s.slice(os..os + n), t.slice(ot..ot + n));
        let mut gsv = gs.slice_mut(ogs..ogs + n);
        let mut gtv = gt.as_mut().map(|g| g.slice_mut(ogt..ogt + n));
        let buffers = PairBuffers {
            loss: Some(&mut loss),
            grad_student: Some(&mut gsv),
            grad_teacher: gtv.as_mut().map(|g| g as &mut dyn DevicePtrMut<T>),
            ..pair(&sv, &tv)
        };
        loss_object.call(&dims, F::pair_buffers(buffers)).or_msg(&format!("{}: forward_backward on views", F::NAME))?;
        let gs_all = download(stream, &gs)?;
        let gt_all = gt.map(|g| download(stream, &g)).transpose()?;
        let outside_untouched = |all: &[T], o: usize| all[..o].iter().chain(&all[o + n..]).all(|v| v.to_f64().is_nan());
        let what = format!("{} {path:?} {} offsets {offsets:?}", F::NAME, case.name());
        if !outside_untouched(&gs_all, ogs) || !gt_all.as_ref().is_none_or(|g| outside_untouched(g, ogt)) {
            failures.push(format!("{what}: wrote outside the gradient views"));
        }
        let gpu = GpuOut {
            loss: download(stream, &loss)?[0],
            gs: gs_all[ogs..ogs + n].to_vec(),
            gt: gt_all.map(|g| g[ogt..ogt + n].to_vec()),
        };
        compare(&what, &gpu, &cpu, failures);
    }
    Ok(())
}

pub(crate) fn same_bits<T: KdFloat>(what: &str, a: &GpuOut<T>, b: &GpuOut<T>) -> TestResult {
    ensure(a.loss.to_bits() == b.loss.to_bits(), || format!("{what}: loss {:e} vs {:e}", a.loss, b.loss))?;
    ensure(bits(&a.gs) == bits(&b.gs), || format!("{what}: student gradients differ"))?;
    let gt = |o: &GpuOut<T>| o.gt.as_ref().map(|g| bits(g));
    ensure(gt(a) == gt(b), || format!("{what}: teacher gradients differ"))
}

/// Softmaxes over one element (CWD with H*W = 1, pixel KD with C = 1) are exactly 1, so the reference loss
/// and gradients are exactly 0; with an all-zero reference the relative error is absolute (over `TINY`), so
/// the GPU must produce exact zeros too.
pub(crate) fn trivial_softmax_gives_exact_zero(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for (seed, dims) in [(1u64, [1, 1, 1, 1]), (2, [2, 5, 1, 1]), (3, [3, 7, 1, 1]), (4, [1, 1, 1, 1])] {
        let case = Case::<f32>::random(3000 + seed, dims);
        for tau in [1.0, 4.0] {
            let config = CwdConfig { tau, loss_weight: 3.0, teacher_grad: true };
            let (s, t) = case.views()?;
            let cpu = CwdCpu::new(config).or_msg("cpu")?.forward_backward(s, t).or_msg("cpu")?;
            let mut cwd = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?;
            let gpu = pair_gpu(stream, &mut cwd, &case)?;
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
                let gpu = pair_gpu(stream, &mut pkd, &case)?;
                compare(&format!("pixel_kd {} tau={tau} {reduction:?}", case.name()), &gpu, &cpu, &mut failures);
            }
        }
    }
    verdict(failures)
}

pub(crate) fn identical_inputs_give_zero(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for dims in [[2, 19, 17, 33], [1, 3, 129, 257]] {
        let mut case = Case::<bf16>::random(3100, dims);
        case.t = case.s.clone();
        let mut cwd = CwdCuda::new(stream.clone(), CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: true })
            .or_msg("CwdCuda::new")?;
        let gpu = pair_gpu(stream, &mut cwd, &case)?;
        let all_zero = |v: &[bf16]| v.iter().all(|x| x.to_f32() == 0.0);
        if gpu.loss != 0.0 || !all_zero(&gpu.gs) || !all_zero(gpu.gt.as_deref().unwrap_or(&[])) {
            failures.push(format!("cwd {}: loss {:e} or a gradient is not exactly 0", case.name(), gpu.loss));
        }
        let mut pkd = PixelKdCuda::new(stream.clone(), PixelKdConfig::default()).or_msg("PixelKdCuda::new")?;
        let gpu = pair_gpu(stream, &mut pkd, &case)?;
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
pub(crate) fn close_student_loss_within_tolerance(stream: &Stream) -> TestResult {
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
            let gpu = pair_gpu(stream, &mut cwd, &case)?;
            compare(&format!("cwd {} tau={tau}", case.name()), &gpu, &cpu, &mut failures);

            let config = PixelKdConfig { tau, loss_weight: 10.0, reduction: Reduction::Mean, scale_tau2: true };
            let cpu = PixelKdCpu::new(config).or_msg("cpu")?.forward_backward(sv, tv).or_msg("cpu")?;
            let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?;
            let gpu = pair_gpu(stream, &mut pkd, &case)?;
            compare(&format!("pixel_kd {} tau={tau}", case.name()), &gpu, &cpu, &mut failures);
        }
    }
    verdict(failures)
}

pub(crate) fn deterministic_bitwise(stream: &Stream) -> TestResult {
    let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: true };
    let small = Case::<f32>::random(4000, [2, 19, 17, 33]);
    for (dims, path) in [BIG, [1, 3, 129, 257]].into_iter().flat_map(|d| CWD_PATHS.map(|p| (d, p))) {
        let case = Case::<f32>::random(4001, dims);
        let mut cwd = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?.with_path(path);
        let first = pair_gpu(stream, &mut cwd, &case)?;
        let again = pair_gpu(stream, &mut cwd, &case)?;
        same_bits(&format!("cwd {path:?} {} twice", case.name()), &first, &again)?;
        // A smaller shape in between (the workspace keeps its size) and a fresh object.
        pair_gpu(stream, &mut cwd, &small)?;
        let after = pair_gpu(stream, &mut cwd, &case)?;
        same_bits(&format!("cwd {path:?} {} after another shape", case.name()), &first, &after)?;
        let mut fresh = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?.with_path(path);
        pair_gpu(stream, &mut fresh, &small)?; // the workspace grows on the next call
        let grown = pair_gpu(stream, &mut fresh, &case)?;
        same_bits(&format!("cwd {path:?} {} fresh object", case.name()), &first, &grown)?;
    }
    let config = PixelKdConfig { tau: 4.0, loss_weight: 10.0, reduction: Reduction::Mean, scale_tau2: true };
    for (dims, path) in [BIG, [2, 19, 64, 64], [2, 256, 33, 17]].into_iter().flat_map(|d| PIXEL_PATHS.map(|p| (d, p))) {
        let case = Case::<bf16>::random(4002, dims);
        let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?.with_path(path);
        let first = pair_gpu(stream, &mut pkd, &case)?;
        let again = pair_gpu(stream, &mut pkd, &case)?;
        same_bits(&format!("pixel_kd {path:?} {} twice", case.name()), &first, &again)?;
        let mut fresh = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?.with_path(path);
        let other = pair_gpu(stream, &mut fresh, &Case::<bf16>::random(4003, [1, 3, 5, 7]))?;
        ensure(other.loss.is_finite(), || "pixel_kd small case".into())?;
        let fresh_out = pair_gpu(stream, &mut fresh, &case)?;
        same_bits(&format!("pixel_kd {path:?} {} fresh object", case.name()), &first, &fresh_out)?;
    }
    Ok(())
}

pub(crate) fn forward_loss_equals_forward_backward_loss(stream: &Stream) -> TestResult {
    fn run<T: KdFloat>(stream: &Stream, dims: [usize; 4], seed: u64) -> TestResult {
        let case = Case::<T>::random(seed, dims);
        let s = upload(stream, &case.s)?;
        let t = upload(stream, &case.t)?;
        for teacher_grad in [false, true] {
            let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad };
            let mut cwd = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?;
            let fb = pair_gpu(stream, &mut cwd, &case)?;
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
            let fb = pair_gpu(stream, &mut pkd, &case)?;
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
pub(crate) fn backward_scales_by_device_upstream(stream: &Stream) -> TestResult {
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
            let fb = pair_gpu(stream, &mut cwd, &case)?;
            let loss = upload(stream, &[fb.loss])?;
            let mut gs = nan_buffer::<T>(stream, case.numel())?;
            let mut gt = nan_buffer::<T>(stream, case.numel())?;
            let backward = PairBuffers {
                upstream: Some(&up),
                grad_student: Some(&mut gs),
                grad_teacher: Some(&mut gt),
                ..pair(&s, &t)
            };
            cwd.call(&case.dims, backward).or_msg("CwdCuda::backward")?;
            check("cwd grad.student", &download(stream, &gs)?, &fb.gs, u as f64)?;
            check("cwd grad.teacher", &download(stream, &gt)?, fb.gt.as_ref().unwrap(), u as f64)?;
            // The loss buffer (not passed to backward) keeps its value, and a forward_backward after a
            // backward gives the same bits (the kernels' last-block counter is left consistent).
            let kept = download(stream, &loss)?[0];
            ensure(kept.to_bits() == fb.loss.to_bits(), || format!("cwd: loss buffer changed to {kept:e}"))?;
            let after = pair_gpu(stream, &mut cwd, &case)?;
            same_bits("cwd forward_backward after backward", &fb, &after)?;

            // Pixel KD.
            let config = PixelKdConfig { tau: 1.0, loss_weight: 10.0, reduction: Reduction::Sum, scale_tau2: false };
            let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?;
            let fb = pair_gpu(stream, &mut pkd, &case)?;
            let mut gs = nan_buffer::<T>(stream, case.numel())?;
            pkd.backward(&case.dims, &s, &t, &up, &mut gs).or_msg("PixelKdCuda::backward")?;
            check("pixel_kd grad.student", &download(stream, &gs)?, &fb.gs, u as f64)?;
            let after = pair_gpu(stream, &mut pkd, &case)?;
            same_bits("pixel_kd forward_backward after backward", &fb, &after)?;
        }
        Ok(())
    }
    run::<f32>(stream, [2, 19, 17, 33], 4.0 * f32::EPSILON as f64)?;
    run::<f32>(stream, [1, 3, 129, 257], 4.0 * f32::EPSILON as f64)?;
    run::<f16>(stream, [2, 19, 17, 33], 2f64.powi(-9))?;
    run::<bf16>(stream, [4, 256, 9, 9], 2f64.powi(-6))
}

/// One loss call on (loss, grad_student) buffers, as captured into a graph.
pub(crate) type LossCall<'a> = dyn FnMut(&mut CudaSlice<f32>, &mut CudaSlice<bf16>) -> Result<(), KdError> + 'a;

pub(crate) fn graph_capture_replays(stream: &Stream) -> TestResult {
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
        replay(format!("cwd {path:?}"), &mut |loss, gs| cwd.forward_backward(&case.dims, &s, &t, loss, gs))?;
    }
    for path in PIXEL_PATHS {
        let mut pkd =
            PixelKdCuda::new(capture.clone(), PixelKdConfig::default()).or_msg("PixelKdCuda::new")?.with_path(path);
        replay(format!("pixel_kd {path:?}"), &mut |loss, gs| pkd.forward_backward(&case.dims, &s, &t, loss, gs))?;
    }
    Ok(())
}

/// Turns off cudarc's event tracking (see [`graph_capture_replays`]) and returns a new stream of the context.
fn untracked_second_stream(stream: &Stream) -> Result<Stream, String> {
    let ctx = stream.context().clone();
    // SAFETY: the buffers of these tests are used on one stream at a time, with explicit synchronisation
    // between streams; waits on events recorded before a capture began are not allowed inside it.
    unsafe { ctx.disable_event_tracking() };
    ctx.new_stream().or_msg("new_stream") // the legacy default stream cannot be captured
}

/// Captures `call` on `capture` into a graph: the call's result, and the graph where one was recorded and
/// instantiated. The capture is ended whatever the call returned, and the stream left out of capture mode.
fn capture_call(
    capture: &Stream,
    loss: &mut CudaSlice<f32>,
    gs: &mut CudaSlice<bf16>,
    call: &mut LossCall<'_>,
) -> Result<(Result<(), KdError>, Option<CudaGraph>), String> {
    use kd_kernels::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode, CUstreamCaptureStatus};
    capture.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).or_msg("begin_capture")?;
    let result = call(loss, gs);
    let graph = capture.end_capture(CUgraphInstantiate_flags(0));
    let status = capture.capture_status().or_msg("capture_status")?;
    ensure(status == CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE, || format!("still capturing: {status:?}"))?;
    // A call refused before any launch leaves an empty graph, which a driver may decline to instantiate.
    let graph = match (&result, graph) {
        (Ok(()), graph) => graph.or_msg("end_capture")?,
        (Err(_), graph) => graph.ok().flatten(),
    };
    Ok((result, graph))
}

/// A loss object's workspace cannot grow while its stream is captured: the call returns
/// `KdError::WorkspaceTooSmall` (and the capture ends cleanly); after `reserve`, the first call the object
/// ever makes is captured, and the graph replays to the bits of a direct call, which matches the CPU
/// reference. The raw layer is held to the same rule on a captured stream that is not the loss's own.
pub(crate) fn reserve_then_capture(stream: &Stream) -> TestResult {
    let capture = untracked_second_stream(stream)?;
    let case = Case::<bf16>::random(9600, [2, 19, 40, 56]);
    let s = upload(&capture, &case.s)?;
    let t = upload(&capture, &case.t)?;
    let mut loss = upload(&capture, &[f32::NAN])?;
    let mut gs = nan_buffer::<bf16>(&capture, case.numel())?;
    let mut failures = Vec::new();

    let check: &mut CaptureCheck<'_> = &mut |what, unreserved, reserve, call, cpu, failures| {
        let (result, _) = capture_call(&capture, &mut loss, &mut gs, unreserved)?;
        if !matches!(result, Err(KdError::WorkspaceTooSmall { .. })) {
            failures.push(format!("{what}: growth under capture gave {result:?}, not WorkspaceTooSmall"));
        }
        reserve().or_msg(&format!("{what}: reserve"))?;
        let (result, graph) = capture_call(&capture, &mut loss, &mut gs, call)?;
        result.or_msg(&format!("{what}: the call under capture after reserve"))?;
        let graph = graph.ok_or_else(|| format!("{what}: the capture recorded nothing"))?;
        let mut replays = Vec::new();
        for _ in 0..3 {
            capture.memset_zeros(&mut loss).or_msg("memset")?;
            capture.memset_zeros(&mut gs).or_msg("memset")?;
            graph.launch().or_msg("graph launch")?;
            capture.synchronize().or_msg("synchronize")?;
            replays.push(GpuOut { loss: download(&capture, &loss)?[0], gs: download(&capture, &gs)?, gt: None });
        }
        call(&mut loss, &mut gs).or_msg(&format!("{what}: direct call"))?;
        capture.synchronize().or_msg("synchronize")?;
        let direct = GpuOut { loss: download(&capture, &loss)?[0], gs: download(&capture, &gs)?, gt: None };
        for (i, replay) in replays.iter().enumerate() {
            same_bits(&format!("{what}: replay {i} against a direct call"), &direct, replay)?;
        }
        compare(&what, &direct, cpu, failures);
        Ok(())
    };

    let dims = case.dims;
    let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: false };
    let inputs = (&capture, &case, &s, &t);
    capture_on_every_path::<Cwd>(inputs, config, &CWD_PATHS, check, &mut failures)?;
    capture_on_every_path::<PixelKd>(inputs, PixelKdConfig::default(), &PIXEL_PATHS, check, &mut failures)?;

    // The raw layer on a captured stream that is not the loss's own: growth is refused there too.
    let mut cwd = CwdCuda::new(stream.clone(), CwdConfig::default()).or_msg("CwdCuda::new")?;
    let buffers = CwdRawBuffers {
        student: raw_address(&s, &capture),
        teacher: raw_address(&t, &capture),
        loss: raw_address(&loss, &capture),
        grad_student: raw_address(&gs, &capture),
        ..CwdRawBuffers::default()
    };
    let (result, _) = capture_call(&capture, &mut loss, &mut gs, &mut |_, _| {
        // SAFETY: `capture` belongs to the loss's context; the addresses are live buffers of that context of
        // the sizes `dims` needs, used by no other stream meanwhile.
        unsafe { cwd.launch_raw(capture.cu_stream(), &dims, DType::BF16, &buffers, GradOptions::OVERWRITE) }.map(drop)
    })?;
    if !matches!(result, Err(KdError::WorkspaceTooSmall { .. })) {
        failures.push(format!("cwd launch_raw: growth under capture of its stream gave {result:?}"));
    }
    verdict(failures)
}

/// What [`reserve_then_capture`] checks of one loss object: its name, a call of an unreserved object, the
/// reservation, the call of the reserved object, and the CPU reference.
type CaptureCheck<'a> = dyn FnMut(
        String,
        &mut LossCall<'_>,
        &mut dyn FnMut() -> Result<(), KdError>,
        &mut LossCall<'_>,
        &CpuOutput,
        &mut Vec<String>,
    ) -> TestResult
    + 'a;

/// [`reserve_then_capture`]'s check on each of `paths` of the pair family `F`, on `case` (uploaded as `s`
/// and `t`) on the stream `capture`.
fn capture_on_every_path<F: PairFamily>(
    (capture, case, s, t): (&Stream, &Case<bf16>, &CudaSlice<bf16>, &CudaSlice<bf16>),
    config: F::Config,
    paths: &[F::Path],
    check: &mut CaptureCheck<'_>,
    failures: &mut Vec<String>,
) -> TestResult {
    let (sv, tv) = case.views()?;
    let cpu = F::cpu(&config, sv, tv).or_msg("cpu")?;
    let dims = case.dims;
    for &path in paths {
        let new = || LossCuda::<F>::new(capture.clone(), config.clone()).or_msg("new").map(|l| l.with_path(path));
        let (mut unreserved, reserved) = (new()?, RefCell::new(new()?));
        check(
            format!("{} {path:?}", F::NAME),
            &mut |loss, gs| unreserved.forward_backward(&dims, s, t, loss, gs),
            &mut || reserved.borrow_mut().reserve(&dims, DType::BF16),
            &mut |loss, gs| reserved.borrow_mut().forward_backward(&dims, s, t, loss, gs),
            &cpu,
            failures,
        )?;
    }
    Ok(())
}

/// The device address of a buffer for the raw layer. cudarc's event tracking is off in [`LAST`]'s tests, so
/// the guard it returns records nothing and can be dropped at once.
fn raw_address<T>(buffer: &CudaSlice<T>, stream: &Stream) -> u64 {
    let (address, _guard) = buffer.device_ptr(stream);
    address
}

/// `launch_raw` on a stream other than the loss's own (as burn or a C caller would): the same bits as the
/// typed call on the loss's stream, on every kernel, including the first call of an object (the workspace
/// grows while the call's stream is another one) and a forward alone.
pub(crate) fn launch_raw_on_a_second_stream(stream: &Stream) -> TestResult {
    let other = untracked_second_stream(stream)?;
    let case = Case::<f32>::random(9700, [2, 19, 33, 47]);
    let s = upload(stream, &case.s)?;
    let t = upload(stream, &case.t)?;
    let mut failures = Vec::new();
    let outputs = |teacher: bool| -> Result<_, String> {
        let grad_teacher = if teacher { Some(nan_buffer::<f32>(stream, case.numel())?) } else { None };
        Ok((upload(stream, &[f32::NAN])?, nan_buffer::<f32>(stream, case.numel())?, grad_teacher))
    };
    let fetch = |on: &Stream, (loss, gs, gt): &(CudaSlice<f32>, CudaSlice<f32>, Option<CudaSlice<f32>>)| {
        on.synchronize().or_msg("synchronize")?;
        Ok::<_, String>(GpuOut {
            loss: download(on, loss)?[0],
            gs: download(on, gs)?,
            gt: gt.as_ref().map(|g| download(on, g)).transpose()?,
        })
    };

    let config = CwdConfig { tau: 2.0, loss_weight: 3.0, teacher_grad: true };
    for path in CWD_PATHS {
        let mut typed = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?.with_path(path);
        let expected = pair_gpu(stream, &mut typed, &case)?;
        let mut raw = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?.with_path(path);
        let out = outputs(true)?;
        stream.synchronize().or_msg("synchronize")?; // the uploads are on `stream`
        let buffers = CwdRawBuffers {
            student: raw_address(&s, &other),
            teacher: raw_address(&t, &other),
            loss: raw_address(&out.0, &other),
            grad_student: raw_address(&out.1, &other),
            grad_teacher: out.2.as_ref().map_or(0, |g| raw_address(g, &other)),
            upstream: 0,
        };
        // SAFETY: `other` belongs to the loss's context; every address is a live buffer of that context of
        // the size the shape needs, and `stream` is idle while `other` runs.
        let resolved =
            unsafe { raw.launch_raw(other.cu_stream(), &case.dims, DType::F32, &buffers, GradOptions::OVERWRITE) };
        ensure(resolved.as_ref().is_ok_and(|&p| p == path), || format!("cwd {path:?} launch_raw: {resolved:?}"))?;
        same_bits(&format!("cwd {path:?} launch_raw on a second stream"), &expected, &fetch(&other, &out)?)?;

        // The loss alone, through the raw layer, against the typed forward.
        let (mut loss, alone) = (upload(stream, &[f32::NAN])?, upload(stream, &[f32::NAN])?);
        typed.forward(&case.dims, &s, &t, &mut loss).or_msg("CwdCuda::forward")?;
        stream.synchronize().or_msg("synchronize")?;
        let forward_only =
            CwdRawBuffers { loss: raw_address(&alone, &other), grad_student: 0, grad_teacher: 0, ..buffers };
        // SAFETY: as above.
        unsafe { raw.launch_raw(other.cu_stream(), &case.dims, DType::F32, &forward_only, GradOptions::OVERWRITE) }
            .or_msg("cwd launch_raw, loss alone")?;
        other.synchronize().or_msg("synchronize")?;
        let (a, b) = (download(stream, &loss)?[0], download(&other, &alone)?[0]);
        if a.to_bits() != b.to_bits() {
            failures.push(format!("cwd {path:?}: raw forward {b:e} vs typed {a:e}"));
        }
    }

    let config = PixelKdConfig { tau: 2.0, loss_weight: 10.0, reduction: Reduction::PixelMean, scale_tau2: true };
    for path in PIXEL_PATHS {
        let mut typed = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?.with_path(path);
        let expected = pair_gpu(stream, &mut typed, &case)?;
        let mut raw = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?.with_path(path);
        let out = outputs(false)?;
        stream.synchronize().or_msg("synchronize")?;
        let buffers = PixelKdRawBuffers {
            student: raw_address(&s, &other),
            teacher: raw_address(&t, &other),
            loss: raw_address(&out.0, &other),
            grad_student: raw_address(&out.1, &other),
            ..PixelKdRawBuffers::default()
        };
        // SAFETY: as for CWD above.
        let resolved =
            unsafe { raw.launch_raw(other.cu_stream(), &case.dims, DType::F32, &buffers, GradOptions::OVERWRITE) };
        ensure(resolved.as_ref().is_ok_and(|&p| p == path), || format!("pixel_kd {path:?} launch_raw: {resolved:?}"))?;
        same_bits(&format!("pixel_kd {path:?} launch_raw on a second stream"), &expected, &fetch(&other, &out)?)?;
    }
    verdict(failures)
}
