//! PKD on the GPU: the kernels against the f64 CPU reference on several levels in every dtype (the benches'
//! feature pyramid at a small batch among them), forward / backward with upstream, determinism, accumulation,
//! identical inputs, and typed errors.

use kd_kernels::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use kd_kernels::half::{bf16, f16};
use kd_kernels::ndarray::ArrayView4;
use kd_kernels::pkd::{PkdBuffers, PkdConfig, PkdCpu, PkdCpuOutput, PkdCuda, PkdLevels, MAX_LEVELS};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::{DType, GradOptions, KdError, KdFloat};

use crate::common::{quantize, SplitMix64};
use crate::harness::{bits, download, ensure, expect_err, gpu_tests, upload, OrMsg, Stream, TestFn, TestResult};

pub(crate) const TESTS: &[(&str, TestFn)] = gpu_tests![
    pkd_matches_cpu_every_dtype,
    pkd_backward_deterministic_and_accumulates,
    pkd_identical_inputs_give_zero,
    pkd_errors,
];

/// Odd levels (several chunks a channel, planes shorter than a block), and the benches' pyramid at 2 images.
fn layouts() -> Vec<Vec<[usize; 4]>> {
    let fpn = [[100, 152], [50, 76], [25, 38], [13, 19], [7, 10]].map(|[h, w]| [2, 256, h, w]).to_vec();
    vec![vec![[2, 5, 7, 9], [3, 3, 65, 70], [1, 2, 1, 3]], vec![[1, 7, 129, 65]], fpn]
}

struct Case {
    levels: PkdLevels,
    student: Vec<Vec<f32>>,
    teacher: Vec<Vec<f32>>,
}

fn case(seed: u64, dims: &[[usize; 4]]) -> Case {
    let mut rng = SplitMix64::new(seed);
    let mut teacher = Vec::new();
    let mut student = Vec::new();
    for &[n, c, h, w] in dims {
        let shift: Vec<f64> = (0..c).map(|ch| if ch == 0 { 300.0 } else { 2.0 * rng.normal() }).collect();
        // Channels of different scales (0.5, 1.5, 2.5) and means, channel 0 at 300.
        let t: Vec<f32> = (0..n * c * h * w)
            .map(|i| {
                let ch = (i / (h * w)) % c;
                quantize(rng.normal() * (0.5 + (ch % 3) as f64) + shift[ch]) as f32
            })
            .collect();
        student.push(t.iter().map(|&v| quantize(0.8 * v as f64 + 0.6 * rng.normal()) as f32).collect());
        teacher.push(t);
    }
    Case { levels: PkdLevels::same(dims).unwrap(), student, teacher }
}

fn rounded<T: KdFloat>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

fn reference<T: KdFloat>(c: &Case, upstream: f64) -> PkdCpuOutput {
    let wide = |v: &[Vec<f32>]| -> Vec<Vec<f64>> {
        v.iter().map(|x| rounded::<T>(x).iter().map(|y| y.to_f64()).collect()).collect()
    };
    let (s, t) = (wide(&c.student), wide(&c.teacher));
    let sv: Vec<ArrayView4<'_, f64>> =
        s.iter().zip(c.levels.shapes()).map(|(x, d)| ArrayView4::from_shape(d.dims(), &x[..]).unwrap()).collect();
    let tv: Vec<ArrayView4<'_, f64>> =
        t.iter().zip(c.levels.shapes()).map(|(x, d)| ArrayView4::from_shape(d.dims(), &x[..]).unwrap()).collect();
    PkdCpu::new(PkdConfig { loss_weight: 6.0 }).unwrap().backward(&sv, &tv, upstream).unwrap()
}

/// One call; `upstream` Some runs `backward` (no loss). Gradients start as `initial` (else NaN sentinels).
fn run_gpu<T: KdFloat>(
    stream: &Stream,
    c: &Case,
    upstream: Option<f32>,
    options: GradOptions,
    initial: Option<&[Vec<T>]>,
) -> Result<(f32, Vec<Vec<T>>), String> {
    let s = c.student.iter().map(|v| upload(stream, &rounded::<T>(v))).collect::<Result<Vec<_>, _>>()?;
    let t = c.teacher.iter().map(|v| upload(stream, &rounded::<T>(v))).collect::<Result<Vec<_>, _>>()?;
    let mut g: Vec<CudaSlice<T>> = Vec::new();
    for (l, v) in c.student.iter().enumerate() {
        let start = initial.map_or_else(|| vec![T::from_f32(f32::NAN); v.len()], |i| i[l].clone());
        g.push(upload(stream, &start)?);
    }
    let mut loss = upload(stream, &[f32::NAN])?;
    let up = upload(stream, &[upstream.unwrap_or(1.0)])?;
    {
        let sr: Vec<&dyn DevicePtr<T>> = s.iter().map(|x| x as _).collect();
        let tr: Vec<&dyn DevicePtr<T>> = t.iter().map(|x| x as _).collect();
        let grads: Vec<&mut dyn DevicePtrMut<T>> = g.iter_mut().map(|x| x as _).collect();
        let mut pkd = PkdCuda::new(stream.clone(), PkdConfig { loss_weight: 6.0 }).or_msg("PkdCuda::new")?;
        let buffers = PkdBuffers {
            loss: if upstream.is_none() { Some(&mut loss) } else { None },
            grad_student: grads,
            upstream: upstream.map(|_| &up as &dyn DevicePtr<f32>),
            options,
            ..PkdBuffers::new(&sr, &tr)
        };
        pkd.call(&c.levels, buffers).or_msg("PkdCuda::call")?;
    }
    let grads = g.iter().map(|x| download(stream, x)).collect::<Result<Vec<_>, _>>()?;
    Ok((download(stream, &loss)?[0], grads))
}

fn check<T: KdFloat>(stream: &Stream, c: &Case) -> TestResult {
    let r = reference::<T>(c, 1.0);
    let (loss, grads) = run_gpu::<T>(stream, c, None, GradOptions::OVERWRITE, None)?;
    let cmp = Comparison::of([loss as f64], [r.loss]);
    ensure(cmp.passes(tolerance(T::DTYPE, OutputKind::Loss)), || format!("{}: loss {cmp:?}", T::DTYPE))?;
    for (l, (g, want)) in grads.iter().zip(&r.grad_student).enumerate() {
        let cmp = Comparison::of(g.iter().map(|x| x.to_f64()), want.iter().copied());
        ensure(cmp.passes(tolerance(T::DTYPE, OutputKind::Tensor)), || format!("{}: level {l} {cmp:?}", T::DTYPE))?;
    }
    Ok(())
}

fn pkd_matches_cpu_every_dtype(stream: &Stream) -> TestResult {
    for (seed, dims) in layouts().iter().enumerate() {
        let c = case(seed as u64 + 1, dims);
        check::<f32>(stream, &c)?;
        check::<f16>(stream, &c)?;
        check::<bf16>(stream, &c)?;
    }
    Ok(())
}

fn pkd_backward_deterministic_and_accumulates(stream: &Stream) -> TestResult {
    let c = case(9, &layouts()[0]);
    let r = reference::<f32>(&c, -1.5);
    let (_, a) = run_gpu::<f32>(stream, &c, Some(-1.5), GradOptions::OVERWRITE, None)?;
    let (_, b) = run_gpu::<f32>(stream, &c, Some(-1.5), GradOptions::OVERWRITE, None)?;
    for (l, (x, y)) in a.iter().zip(&b).enumerate() {
        ensure(bits(x) == bits(y), || format!("level {l}: gradients differ between runs"))?;
        let cmp = Comparison::of(x.iter().map(|&v| v as f64), r.grad_student[l].iter().copied());
        ensure(cmp.passes(tolerance(DType::F32, OutputKind::Tensor)), || format!("backward level {l}: {cmp:?}"))?;
    }
    let (_, acc) = run_gpu::<f32>(stream, &c, Some(-1.5), GradOptions { scale: 2.0, accumulate: true }, Some(&a))?;
    for (l, (x, y)) in a.iter().zip(&acc).enumerate() {
        let cmp = Comparison::of(y.iter().map(|&v| v as f64), x.iter().map(|&v| 3.0 * v as f64));
        ensure(cmp.passes(1e-6), || format!("accumulate + scale, level {l}: {cmp:?}"))?;
    }
    Ok(())
}

fn pkd_identical_inputs_give_zero(stream: &Stream) -> TestResult {
    let mut c = case(11, &layouts()[0]);
    c.student = c.teacher.clone();
    let (loss, grads) = run_gpu::<bf16>(stream, &c, None, GradOptions::OVERWRITE, None)?;
    ensure(loss == 0.0, || format!("loss {loss}"))?;
    ensure(grads.iter().flatten().all(|g| g.to_f32() == 0.0), || "a non-zero gradient".to_string())
}

fn pkd_errors(stream: &Stream) -> TestResult {
    let mut pkd = PkdCuda::new(stream.clone(), PkdConfig::default()).or_msg("PkdCuda::new")?;
    let too_many = PkdLevels::same(&[[1, 1, 1, 2]; MAX_LEVELS + 1]).or_msg("levels")?;
    expect_err("9 levels", pkd.reserve(&too_many, DType::F32), |e| matches!(e, KdError::TooLarge { .. }))?;
    let levels = PkdLevels::same(&[[1, 2, 3, 4]]).or_msg("levels")?;
    let small = upload(stream, &[0f32; 23])?;
    let big = upload(stream, &[0f32; 24])?;
    let mut loss = upload(stream, &[0f32])?;
    let (sr, tr): ([&dyn DevicePtr<f32>; 1], [&dyn DevicePtr<f32>; 1]) = ([&small], [&big]);
    let got = pkd.forward(&levels, &sr, &tr, &mut loss);
    expect_err("a short student", got, |e| matches!(e, KdError::BufferTooSmall { .. }))
}
