//! SKD on the GPU against the f64 CPU reference: odd shapes in every dtype (`Cs != Ct` and `Cs = Ct`, pool 2
//! and 1), the bench's shape, exact zeros for identical inputs, bitwise determinism, the device upstream
//! scalar, accumulate + scale, error paths, and the tensor-core Gram of 16-bit inputs with `Cs = Ct` at sizes
//! the emulator does not reach. (The recorded fixtures run in `fixtures::fixtures_pass_on_cuda`.)

use half::{bf16, f16};
use kd_kernels::skd::{
    check_shapes, gram_path, GramPath, RelationShapes, SkdBuffers, SkdConfig, SkdCpu, SkdCuda, SkdPool,
};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::{CpuOutput, GradOptions, KdError, KdFloat};
use ndarray::ArrayView4;

use crate::common::SplitMix64;
use crate::harness::{
    bits, download, ensure, expect_err, nan_buffer, upload, verdict, OrMsg, Stream, TestFn, TestResult,
};

pub(crate) const TESTS: &[(&str, TestFn)] = &[
    ("skd_matches_cpu_f32", skd_matches_cpu::<f32>),
    ("skd_matches_cpu_f16", skd_matches_cpu::<f16>),
    ("skd_matches_cpu_bf16", skd_matches_cpu::<bf16>),
    ("skd_bench_shape_f32", skd_bench_shape),
    ("skd_identical_inputs_exactly_zero", skd_identical_inputs_exactly_zero),
    ("skd_deterministic_bitwise", skd_deterministic_bitwise),
    ("skd_backward_upstream_and_accumulate", skd_backward_upstream_and_accumulate),
    ("skd_error_paths", skd_error_paths),
    ("skd_tensor_core_gram_f16", skd_tensor_core_gram::<f16>),
    ("skd_tensor_core_gram_bf16", skd_tensor_core_gram::<bf16>),
];

fn random<T: KdFloat>(seed: u64, numel: usize) -> Vec<T> {
    let mut rng = SplitMix64::new(seed);
    (0..numel).map(|_| T::from_f32(((rng.normal() * 1024.0).round() / 1024.0) as f32)).collect()
}

fn close(what: &str, got: &[f64], reference: &[f64], tol: f64, failures: &mut Vec<String>) {
    let c = Comparison::of(got.iter().copied(), reference.iter().copied());
    if got.len() != reference.len() || !c.passes(tol) {
        failures.push(format!("{what}: {c:?} > {tol:e} (lengths {} / {})", got.len(), reference.len()));
    }
}

fn widen<T: KdFloat>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

fn shapes(s: [usize; 4], ct: usize) -> Result<RelationShapes, String> {
    check_shapes(&s, &[s[0], ct, s[2], s[3]]).or_msg("shapes")
}

fn reference<T: KdFloat>(config: SkdConfig, shapes: &RelationShapes, s: &[T], t: &[T]) -> Result<CpuOutput, String> {
    SkdCpu::new(config)
        .or_msg("SkdCpu::new")?
        .forward_backward(
            ArrayView4::from_shape(shapes.student.dims(), s).or_msg("view")?,
            ArrayView4::from_shape(shapes.teacher().dims(), t).or_msg("view")?,
        )
        .or_msg("cpu")
}

/// One forward_backward call against the CPU reference.
fn one_case<T: KdFloat>(
    stream: &Stream,
    config: SkdConfig,
    shapes: RelationShapes,
    seed: u64,
    failures: &mut Vec<String>,
) -> TestResult {
    let (numel_s, numel_t) = (shapes.student.numel(), shapes.teacher().numel());
    let s = random::<T>(seed, numel_s);
    let t = random::<T>(seed + 1, numel_t);
    check_call(stream, config, &shapes, &s, &t, failures).map(|_| ())
}

/// One forward_backward call on `s` and `t` against the CPU reference; returns the loss's and the gradient's
/// bits.
fn check_call<T: KdFloat>(
    stream: &Stream,
    config: SkdConfig,
    shapes: &RelationShapes,
    s: &[T],
    t: &[T],
    failures: &mut Vec<String>,
) -> Result<(u32, Vec<u64>), String> {
    let numel_s = shapes.student.numel();
    let reference = reference(config, shapes, s, t)?;
    let (ds, dt) = (upload(stream, s)?, upload(stream, t)?);
    let mut loss = nan_buffer::<f32>(stream, 1)?;
    let mut grad = nan_buffer::<T>(stream, numel_s)?;
    let mut skd = SkdCuda::new(stream.clone(), config).or_msg("SkdCuda::new")?;
    skd.forward_backward(shapes, &ds, &dt, &mut loss, &mut grad).or_msg("forward_backward")?;
    let what = format!("{} {:?} {:?}", T::DTYPE, shapes, config);
    let got = download(stream, &loss)?[0];
    close(&format!("{what} loss"), &[got as f64], &[reference.loss], tolerance(T::DTYPE, OutputKind::Loss), failures);
    let want: Vec<f64> = reference.grad_student.iter().copied().collect();
    let grad = download(stream, &grad)?;
    close(&format!("{what} grad"), &widen(&grad), &want, tolerance(T::DTYPE, OutputKind::Tensor), failures);
    Ok((got.to_bits(), bits(&grad)))
}

/// The tensor-core Gram (`GramPath::TensorCores`) where the emulator tests do not reach: several 64-row tiles
/// (the last one partial), 8 chunks of over 1024 pixels (several 128-pixel accumulator spans each, the last
/// one partial), a student within 1e-3 of its teacher (weighted so that its gradient is not subnormal in f16),
/// and the same bits twice.
fn skd_tensor_core_gram<T: KdFloat>(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    let cases = [([2, 96, 64, 128], SkdPool::Max2x2), ([1, 40, 130, 141], SkdPool::None)];
    for (i, (dims, pool)) in cases.into_iter().enumerate() {
        let shapes = shapes(dims, dims[1])?;
        ensure(gram_path(&shapes, T::DTYPE) == GramPath::TensorCores, || format!("{shapes:?}: CUDA-core Gram"))?;
        // A weight that keeps f16 gradients (which shrink as 1 / P) above the subnormals.
        one_case::<T>(stream, SkdConfig { loss_weight: 100.0, pool }, shapes, 90 + i as u64, &mut failures)?;
    }
    let shapes = shapes([2, 24, 45, 67], 24)?;
    let t = random::<T>(95, shapes.teacher().numel());
    let mut rng = SplitMix64::new(96);
    let s: Vec<T> = t.iter().map(|v| T::from_f64(v.to_f64() + 1e-3 * rng.normal())).collect();
    let config = SkdConfig { loss_weight: 1000.0, pool: SkdPool::Max2x2 };
    let first = check_call(stream, config, &shapes, &s, &t, &mut failures)?;
    let again = check_call(stream, config, &shapes, &s, &t, &mut failures)?;
    ensure(first == again, || "two runs differ".into())?;
    verdict(failures)
}

fn skd_matches_cpu<T: KdFloat>(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    let cases = [
        ([2, 5, 9, 11], 7, SkdPool::Max2x2),
        ([2, 6, 9, 7], 6, SkdPool::Max2x2),
        ([3, 70, 33, 65], 40, SkdPool::Max2x2),
        ([1, 33, 1, 31], 33, SkdPool::None),
        ([2, 64, 40, 40], 96, SkdPool::None),
    ];
    for (i, (s, ct, pool)) in cases.into_iter().enumerate() {
        let config = SkdConfig { loss_weight: 2.0, pool };
        one_case::<T>(stream, config, shapes(s, ct)?, 10 + i as u64, &mut failures)?;
    }
    verdict(failures)
}

fn skd_bench_shape(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    one_case::<f32>(stream, SkdConfig::default(), shapes([2, 128, 64, 128], 256)?, 77, &mut failures)?;
    verdict(failures)
}

fn skd_identical_inputs_exactly_zero(stream: &Stream) -> TestResult {
    let shapes = shapes([2, 48, 33, 31], 48)?;
    let s = upload(stream, &random::<bf16>(3, shapes.student.numel()))?;
    let mut skd = SkdCuda::new(stream.clone(), SkdConfig::default()).or_msg("SkdCuda::new")?;
    let mut loss = nan_buffer::<f32>(stream, 1)?;
    let mut grad = nan_buffer::<bf16>(stream, shapes.student.numel())?;
    skd.forward_backward(&shapes, &s, &s, &mut loss, &mut grad).or_msg("forward_backward")?;
    let loss = download(stream, &loss)?[0];
    ensure(loss == 0.0, || format!("loss {loss}"))?;
    ensure(download(stream, &grad)?.iter().all(|g| g.to_f64() == 0.0), || "a non-zero gradient".into())
}

fn skd_deterministic_bitwise(stream: &Stream) -> TestResult {
    let shapes = shapes([4, 128, 64, 96], 256)?;
    let s = upload(stream, &random::<bf16>(5, shapes.student.numel()))?;
    let t = upload(stream, &random::<bf16>(6, shapes.teacher().numel()))?;
    let mut skd = SkdCuda::new(stream.clone(), SkdConfig::default()).or_msg("SkdCuda::new")?;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let mut loss = nan_buffer::<f32>(stream, 1)?;
        let mut grad = nan_buffer::<bf16>(stream, shapes.student.numel())?;
        skd.forward_backward(&shapes, &s, &t, &mut loss, &mut grad).or_msg("forward_backward")?;
        runs.push((download(stream, &loss)?[0].to_bits(), bits(&download(stream, &grad)?)));
    }
    ensure(runs.windows(2).all(|w| w[0] == w[1]), || "runs differ".into())
}

fn skd_backward_upstream_and_accumulate(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    let shapes = shapes([2, 40, 17, 23], 24)?;
    let config = SkdConfig::default();
    let numel = shapes.student.numel();
    let (s, t) = (random::<f32>(1, numel), random::<f32>(2, shapes.teacher().numel()));
    let reference = reference(config, &shapes, &s, &t)?;
    let (ds, dt) = (upload(stream, &s)?, upload(stream, &t)?);
    let mut skd = SkdCuda::new(stream.clone(), config).or_msg("SkdCuda::new")?;
    let upstream = upload(stream, &[-1.75f32])?;
    let mut grad = nan_buffer::<f32>(stream, numel)?;
    skd.backward(&shapes, &ds, &dt, &upstream, &mut grad).or_msg("backward")?;
    let want: Vec<f64> = reference.grad_student.iter().map(|g| -1.75 * g).collect();
    close("backward upstream", &widen(&download(stream, &grad)?), &want, 1e-4, &mut failures);
    let initial = random::<f32>(9, numel);
    let mut grad = upload(stream, &initial)?;
    let buffers = SkdBuffers {
        grad_student: Some(&mut grad),
        options: GradOptions { scale: 0.5, accumulate: true },
        ..SkdBuffers::new(&ds, &dt)
    };
    skd.call(&shapes, buffers).or_msg("accumulate")?;
    let want: Vec<f64> = reference.grad_student.iter().zip(&initial).map(|(g, &i)| i as f64 + 0.5 * g).collect();
    close("accumulate + scale", &widen(&download(stream, &grad)?), &want, 1e-4, &mut failures);
    verdict(failures)
}

fn skd_error_paths(stream: &Stream) -> TestResult {
    let shapes = shapes([1, 4, 3, 5], 6)?;
    let s = upload(stream, &random::<f32>(1, 60))?;
    let mut loss = nan_buffer::<f32>(stream, 1)?;
    let mut skd = SkdCuda::new(stream.clone(), SkdConfig::default()).or_msg("SkdCuda::new")?;
    expect_err("teacher too short", skd.forward(&shapes, &s, &s, &mut loss), |e| {
        matches!(e, KdError::BufferTooSmall { .. })
    })?;
    expect_err(
        "loss_weight NaN",
        SkdCuda::new(stream.clone(), SkdConfig { loss_weight: f64::NAN, ..SkdConfig::default() }).map(drop),
        |e| matches!(e, KdError::InvalidParameter { .. }),
    )?;
    let t = upload(stream, &random::<f32>(2, 90))?;
    let nothing = SkdBuffers::<f32>::new(&s, &t);
    expect_err("no output", skd.call(&shapes, nothing), |e| matches!(e, KdError::OutputMismatch { .. }))
}
