//! SKD on the GPU against the f64 CPU reference: odd shapes in every dtype (`Cs != Ct` and `Cs = Ct`, pool 2
//! and 1), the bench's shape, exact zeros for identical inputs, bitwise determinism, the device upstream
//! scalar, accumulate + scale, error paths, and the tensor-core Gram of 16-bit inputs with `Cs = Ct` at sizes
//! the emulator does not reach. (The recorded fixtures run in `fixtures::fixtures_pass_on_cuda`.)

use half::{bf16, f16};
use kd_kernels::skd::{
    check_shapes, gram_path, GramPath, RelationShapes, Skd, SkdBuffers, SkdConfig, SkdCuda, SkdPool,
};
use kd_kernels::{GradOptions, KdError, KdFloat};

use crate::common::{widen, SplitMix64};
use crate::harness::{
    close, download, ensure, expect_err, gpu_tests, nan_buffer, random, upload, verdict, OrMsg, Stream, TestFn,
    TestResult,
};
use crate::student_grad::{check_call, deterministic, reference, Inputs};

pub(crate) const TESTS: &[(&str, TestFn)] = gpu_tests![
    skd_matches_cpu::<f32, f16, bf16>,
    skd_bench_shape_f32,
    skd_identical_inputs_exactly_zero,
    skd_deterministic_bitwise,
    skd_backward_upstream_and_accumulate,
    skd_error_paths,
    skd_tensor_core_gram::<f16, bf16>,
];

fn shapes(s: [usize; 4], ct: usize) -> Result<RelationShapes, String> {
    check_shapes(&s, &[s[0], ct, s[2], s[3]]).or_msg("shapes")
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
        let config = SkdConfig { loss_weight: 100.0, pool };
        check_call::<Skd, T>(stream, config, &Inputs::random(90 + i as u64, dims, dims[1]), &mut failures)?;
    }
    let dims = [2, 24, 45, 67];
    let teacher = random::<T>(95, dims.iter().product(), 1.0);
    let mut rng = SplitMix64::new(96);
    let student: Vec<T> = teacher.iter().map(|v| T::from_f64(v.to_f64() + 1e-3 * rng.normal())).collect();
    let close_student = Inputs { student_dims: dims, teacher_dims: dims, student, teacher };
    let config = SkdConfig { loss_weight: 1000.0, pool: SkdPool::Max2x2 };
    let first = check_call::<Skd, T>(stream, config, &close_student, &mut failures)?;
    let again = check_call::<Skd, T>(stream, config, &close_student, &mut failures)?;
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
        check_call::<Skd, T>(stream, config, &Inputs::random(10 + i as u64, s, ct), &mut failures)?;
    }
    verdict(failures)
}

fn skd_bench_shape_f32(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    check_call::<Skd, f32>(stream, SkdConfig::default(), &Inputs::random(77, [2, 128, 64, 128], 256), &mut failures)?;
    verdict(failures)
}

fn skd_identical_inputs_exactly_zero(stream: &Stream) -> TestResult {
    let shapes = shapes([2, 48, 33, 31], 48)?;
    let s = upload(stream, &random::<bf16>(3, shapes.student.numel(), 1.0))?;
    let mut skd = SkdCuda::new(stream.clone(), SkdConfig::default()).or_msg("SkdCuda::new")?;
    let mut loss = nan_buffer::<f32>(stream, 1)?;
    let mut grad = nan_buffer::<bf16>(stream, shapes.student.numel())?;
    skd.forward_backward(&shapes, &s, &s, &mut loss, &mut grad).or_msg("forward_backward")?;
    let loss = download(stream, &loss)?[0];
    ensure(loss == 0.0, || format!("loss {loss}"))?;
    ensure(download(stream, &grad)?.iter().all(|g| g.to_f64() == 0.0), || "a non-zero gradient".into())
}

fn skd_deterministic_bitwise(stream: &Stream) -> TestResult {
    deterministic::<Skd, bf16>(stream, SkdConfig::default(), &Inputs::random(5, [4, 128, 64, 96], 256))
}

fn skd_backward_upstream_and_accumulate(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    let inputs = Inputs::<f32>::random(1, [2, 40, 17, 23], 24);
    let shapes = shapes(inputs.student_dims, 24)?;
    let config = SkdConfig::default();
    let numel = shapes.student.numel();
    let reference = reference::<Skd, f32>(&config, &inputs)?;
    let (ds, dt) = (upload(stream, &inputs.student)?, upload(stream, &inputs.teacher)?);
    let mut skd = SkdCuda::new(stream.clone(), config).or_msg("SkdCuda::new")?;
    let upstream = upload(stream, &[-1.75f32])?;
    let mut grad = nan_buffer::<f32>(stream, numel)?;
    skd.backward(&shapes, &ds, &dt, &upstream, &mut grad).or_msg("backward")?;
    let want: Vec<f64> = reference.grad_student.iter().map(|g| -1.75 * g).collect();
    close("backward upstream", &widen(&download(stream, &grad)?), &want, 1e-4, &mut failures);
    let initial = random::<f32>(9, numel, 1.0);
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
    let s = upload(stream, &random::<f32>(1, 60, 1.0))?;
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
    let t = upload(stream, &random::<f32>(2, 90, 1.0))?;
    let nothing = SkdBuffers::<f32>::new(&s, &t);
    expect_err("no output", skd.call(&shapes, nothing), |e| matches!(e, KdError::OutputMismatch { .. }))
}
