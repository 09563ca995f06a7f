//! IFVD on the GPU against the f64 CPU reference: odd shapes in every dtype and label dtype, the recorded
//! fixtures, the bench's shape with 19 and 150 classes, bitwise determinism, the device upstream scalar,
//! accumulate + scale, and error paths.

use half::{bf16, f16};
use kd_kernels::ifvd::{
    check_shapes, IfvdBuffers, IfvdConfig, IfvdCpu, IfvdCpuOutput, IfvdCuda, IfvdLabels, IfvdShapes,
};
use kd_kernels::tolerance::{tolerance, OutputKind};
use kd_kernels::{GradOptions, KdError, KdFloat};
use ndarray::{ArrayView3, ArrayView4};

use crate::common::{widen, SplitMix64};
use crate::harness::{
    bits, close, download, ensure, expect_err, gpu_tests, nan_buffer, random, upload, verdict, OrMsg, Stream, TestFn,
    TestResult,
};

pub(crate) const TESTS: &[(&str, TestFn)] = gpu_tests![
    ifvd_matches_cpu::<f32, f16, bf16>,
    ifvd_bench_shape_f32,
    ifvd_deterministic_bitwise,
    ifvd_backward_upstream_and_accumulate,
    ifvd_error_paths,
];

/// Labels in patches of 4 x 8, drawn from `[0, range)` with one patch in six 255.
fn labels(seed: u64, dims: [usize; 3], range: usize) -> Vec<i64> {
    let mut rng = SplitMix64::new(seed);
    let [n, h, w] = dims;
    let (rows, cols) = (h.div_ceil(4), w.div_ceil(8));
    let patches: Vec<i64> =
        (0..n * rows * cols).map(|_| if rng.below(6) == 0 { 255 } else { rng.below(range) as i64 }).collect();
    (0..n * h * w).map(|i| patches[((i / (h * w)) * rows + (i / w) % h / 4) * cols + i % w / 8]).collect()
}

/// The device labels of one call, in one of the three dtypes.
enum DeviceLabels {
    U8(kd_kernels::cudarc::driver::CudaSlice<u8>),
    I32(kd_kernels::cudarc::driver::CudaSlice<i32>),
    I64(kd_kernels::cudarc::driver::CudaSlice<i64>),
}

impl DeviceLabels {
    fn new(stream: &Stream, values: &[i64], which: usize) -> Result<Self, String> {
        Ok(match which % 3 {
            0 => DeviceLabels::U8(
                stream.clone_htod(&values.iter().map(|&v| v as u8).collect::<Vec<_>>()).or_msg("htod")?,
            ),
            1 => DeviceLabels::I32(
                stream.clone_htod(&values.iter().map(|&v| v as i32).collect::<Vec<_>>()).or_msg("htod")?,
            ),
            _ => DeviceLabels::I64(stream.clone_htod(values).or_msg("htod")?),
        })
    }

    fn get(&self) -> IfvdLabels<'_> {
        match self {
            DeviceLabels::U8(l) => IfvdLabels::U8(l),
            DeviceLabels::I32(l) => IfvdLabels::I32(l),
            DeviceLabels::I64(l) => IfvdLabels::I64(l),
        }
    }
}

/// The CPU reference on `s`, `t` and the labels `l`.
fn reference<T: KdFloat>(
    config: IfvdConfig,
    shapes: &IfvdShapes,
    s: &[T],
    t: &[T],
    l: &[i64],
) -> Result<IfvdCpuOutput, String> {
    IfvdCpu::new(config)
        .or_msg("IfvdCpu::new")?
        .forward_backward(
            ArrayView4::from_shape(shapes.student.dims(), s).or_msg("view")?,
            ArrayView4::from_shape(shapes.teacher().dims(), t).or_msg("view")?,
            ArrayView3::from_shape(shapes.label_dims(), l).or_msg("view")?,
        )
        .or_msg("cpu")
}

/// One forward_backward call against the CPU reference.
fn one_case<T: KdFloat>(
    stream: &Stream,
    config: IfvdConfig,
    shapes: IfvdShapes,
    seed: u64,
    failures: &mut Vec<String>,
) -> TestResult {
    let (numel_s, numel_t) = (shapes.student.numel(), shapes.teacher().numel());
    let s = random::<T>(seed, numel_s, 1.0);
    let t = random::<T>(seed + 1, numel_t, 1.0);
    let l = labels(seed + 2, shapes.label_dims(), config.num_classes + 1);
    let reference = reference(config, &shapes, &s, &t, &l)?;
    let (ds, dt) = (upload(stream, &s)?, upload(stream, &t)?);
    let dl = DeviceLabels::new(stream, &l, seed as usize)?;
    let mut loss = nan_buffer::<f32>(stream, 1)?;
    let mut grad = nan_buffer::<T>(stream, numel_s)?;
    let mut ifvd = IfvdCuda::new(stream.clone(), config).or_msg("IfvdCuda::new")?;
    ifvd.forward_backward(&shapes, &ds, &dt, dl.get(), &mut loss, &mut grad).or_msg("forward_backward")?;
    let what = format!("{} {:?} K {}", T::DTYPE, shapes, config.num_classes);
    let got = download(stream, &loss)?[0] as f64;
    close(&format!("{what} loss"), &[got], &[reference.loss], tolerance(T::DTYPE, OutputKind::Loss), failures);
    let want: Vec<f64> = reference.grad_student.iter().copied().collect();
    close(
        &format!("{what} grad"),
        &widen(&download(stream, &grad)?),
        &want,
        tolerance(T::DTYPE, OutputKind::Tensor),
        failures,
    );
    Ok(())
}

fn shapes(s: [usize; 4], ct: usize, label_hw: [usize; 2]) -> Result<IfvdShapes, String> {
    check_shapes(&s, &[s[0], ct, s[2], s[3]], &[s[0], label_hw[0], label_hw[1]]).or_msg("shapes")
}

fn ifvd_matches_cpu<T: KdFloat>(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    let cases = [
        ([2, 5, 9, 11], 7, [17, 21], 5),
        ([3, 70, 33, 65], 260, [66, 130], 19),
        ([1, 33, 1, 31], 4, [1, 31], 3),
        ([2, 64, 40, 40], 96, [20, 20], 150),
    ];
    for (i, (s, ct, l, k)) in cases.into_iter().enumerate() {
        one_case::<T>(
            stream,
            IfvdConfig { num_classes: k, loss_weight: 20.0 },
            shapes(s, ct, l)?,
            10 + i as u64,
            &mut failures,
        )?;
    }
    verdict(failures)
}

fn ifvd_bench_shape_f32(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    one_case::<f32>(stream, IfvdConfig::new(19), shapes([8, 256, 64, 128], 256, [512, 1024])?, 77, &mut failures)?;
    one_case::<f32>(stream, IfvdConfig::new(150), shapes([2, 256, 64, 128], 512, [512, 512])?, 78, &mut failures)?;
    verdict(failures)
}

fn ifvd_deterministic_bitwise(stream: &Stream) -> TestResult {
    let shapes = shapes([4, 128, 64, 96], 256, [128, 192])?;
    let s = upload(stream, &random::<bf16>(5, shapes.student.numel(), 1.0))?;
    let t = upload(stream, &random::<bf16>(6, shapes.teacher().numel(), 1.0))?;
    let l = DeviceLabels::new(stream, &labels(7, shapes.label_dims(), 19), 2)?;
    let mut ifvd = IfvdCuda::new(stream.clone(), IfvdConfig::new(19)).or_msg("IfvdCuda::new")?;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let mut loss = nan_buffer::<f32>(stream, 1)?;
        let mut grad = nan_buffer::<bf16>(stream, shapes.student.numel())?;
        ifvd.forward_backward(&shapes, &s, &t, l.get(), &mut loss, &mut grad).or_msg("forward_backward")?;
        runs.push((download(stream, &loss)?[0].to_bits(), bits(&download(stream, &grad)?)));
    }
    ensure(runs.windows(2).all(|w| w[0] == w[1]), || "runs differ".into())
}

fn ifvd_backward_upstream_and_accumulate(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    let shapes = shapes([2, 40, 17, 23], 24, [34, 46])?;
    let config = IfvdConfig::new(7);
    let numel = shapes.student.numel();
    let (s, t) = (random::<f32>(1, numel, 1.0), random::<f32>(2, shapes.teacher().numel(), 1.0));
    let l = labels(3, shapes.label_dims(), 8);
    let reference = reference(config, &shapes, &s, &t, &l)?;
    let (ds, dt) = (upload(stream, &s)?, upload(stream, &t)?);
    let dl = DeviceLabels::new(stream, &l, 2)?;
    let mut ifvd = IfvdCuda::new(stream.clone(), config).or_msg("IfvdCuda::new")?;
    let upstream = upload(stream, &[-1.75f32])?;
    let mut grad = nan_buffer::<f32>(stream, numel)?;
    ifvd.backward(&shapes, &ds, &dt, dl.get(), &upstream, &mut grad).or_msg("backward")?;
    let want: Vec<f64> = reference.grad_student.iter().map(|g| -1.75 * g).collect();
    close("backward upstream", &widen(&download(stream, &grad)?), &want, 1e-4, &mut failures);
    let initial = random::<f32>(9, numel, 1.0);
    let mut grad = upload(stream, &initial)?;
    let buffers = IfvdBuffers {
        grad_student: Some(&mut grad),
        options: GradOptions { scale: 0.5, accumulate: true },
        ..IfvdBuffers::new(&ds, &dt, dl.get())
    };
    ifvd.call(&shapes, buffers).or_msg("accumulate")?;
    let want: Vec<f64> = reference.grad_student.iter().zip(&initial).map(|(g, &i)| i as f64 + 0.5 * g).collect();
    close("accumulate + scale", &widen(&download(stream, &grad)?), &want, 1e-4, &mut failures);
    verdict(failures)
}

fn ifvd_error_paths(stream: &Stream) -> TestResult {
    let shapes = shapes([1, 4, 3, 5], 4, [3, 5])?;
    let s = upload(stream, &random::<f32>(1, 60, 1.0))?;
    let short = stream.clone_htod(&[0i64; 5]).or_msg("htod")?;
    let mut loss = nan_buffer::<f32>(stream, 1)?;
    let mut ifvd = IfvdCuda::new(stream.clone(), IfvdConfig::new(3)).or_msg("IfvdCuda::new")?;
    expect_err("labels too short", ifvd.forward(&shapes, &s, &s, IfvdLabels::I64(&short), &mut loss), |e| {
        matches!(e, KdError::BufferTooSmall { what: "labels", .. })
    })?;
    expect_err("num_classes 0", IfvdCuda::new(stream.clone(), IfvdConfig::new(0)).map(drop), |e| {
        matches!(e, KdError::InvalidParameter { name: "num_classes", .. })
    })?;
    let labels = stream.clone_htod(&[0i64; 15]).or_msg("htod")?;
    let nothing = IfvdBuffers::<f32>::new(&s, &s, IfvdLabels::I64(&labels));
    expect_err("no output", ifvd.call(&shapes, nothing), |e| matches!(e, KdError::OutputMismatch { .. }))
}
