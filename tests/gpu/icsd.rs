//! ICSD / AICSD on the GPU against the f64 CPU reference: random odd shapes in every dtype and both variants,
//! the recorded fixtures, bitwise determinism, the device upstream scalar, accumulate + scale, the one-call
//! AICSD objective, and error paths. Registered by the lead in the table of `tests/gpu/main.rs`.

use half::{bf16, f16};
use kd_kernels::family::PairBuffers;
use kd_kernels::icsd::{
    AicsdConfig, AicsdCpu, AicsdCuda, IcsdBuffers, IcsdConfig, IcsdCpu, IcsdCpuOutput, IcsdCuda, IcsdVariant,
};
use kd_kernels::tolerance::{tolerance, OutputKind};
use kd_kernels::{DType, GradOptions, KdError, KdFloat};
use ndarray::ArrayView4;

use crate::common::{widen, SplitMix64};
use crate::harness::{
    close, download, ensure, gpu_tests, nan_buffer, upload, verdict, OrMsg, Stream, TestFn, TestResult,
};

pub(crate) const TESTS: &[(&str, TestFn)] = gpu_tests![
    icsd_matches_cpu::<f32, f16, bf16>,
    icsd_large_official_f32,
    icsd_deterministic_bitwise,
    icsd_backward_upstream_and_accumulate,
    aicsd_one_call_matches_cpu,
    icsd_error_paths,
];

const VARIANTS: [IcsdVariant; 2] = [IcsdVariant::Official, IcsdVariant::Paper];

/// ICSD's inputs: values ~ N(0, 2^2) (`harness::random`).
fn random<T: KdFloat>(seed: u64, numel: usize) -> Vec<T> {
    crate::harness::random(seed, numel, 2.0)
}

/// The CPU reference's `forward_backward` on `s` and `t`.
fn reference<T: KdFloat>(config: IcsdConfig, dims: [usize; 4], s: &[T], t: &[T]) -> Result<IcsdCpuOutput, String> {
    IcsdCpu::new(config)
        .or_msg("IcsdCpu::new")?
        .forward_backward(
            ArrayView4::from_shape(dims, s).or_msg("view")?,
            ArrayView4::from_shape(dims, t).or_msg("view")?,
        )
        .or_msg("cpu")
}

/// One forward_backward + forward_matrices call against the CPU reference.
fn one_case<T: KdFloat>(
    stream: &Stream,
    config: IcsdConfig,
    dims: [usize; 4],
    seed: u64,
    failures: &mut Vec<String>,
) -> TestResult {
    let numel: usize = dims.iter().product();
    let cc = dims[1] * dims[1];
    let s = random::<T>(seed, numel);
    let t = random::<T>(seed + 1, numel);
    let reference = reference(config, dims, &s, &t)?;
    let (ds, dt) = (upload(stream, &s)?, upload(stream, &t)?);
    let mut loss = nan_buffer::<f32>(stream, 1)?;
    let mut grad = nan_buffer::<T>(stream, numel)?;
    let mut ms = nan_buffer::<f32>(stream, cc)?;
    let mut mt = nan_buffer::<f32>(stream, cc)?;
    let mut icsd = IcsdCuda::new(stream.clone(), config).or_msg("IcsdCuda::new")?;
    icsd.forward_backward(&dims, &ds, &dt, &mut loss, &mut grad).or_msg("forward_backward")?;
    let what = format!("{:?} {} {dims:?}", config.variant, T::DTYPE);
    let l = download(stream, &loss)?[0] as f64;
    close(&format!("{what} loss"), &[l], &[reference.loss], tolerance(T::DTYPE, OutputKind::Loss), failures);
    let g = widen(&download(stream, &grad)?);
    let rg: Vec<f64> = reference.grad_student.iter().copied().collect();
    close(&format!("{what} grad"), &g, &rg, tolerance(T::DTYPE, OutputKind::Tensor), failures);
    let mut loss2 = nan_buffer::<f32>(stream, 1)?;
    icsd.forward_matrices(&dims, &ds, &dt, &mut loss2, &mut ms, &mut mt).or_msg("forward_matrices")?;
    let got: Vec<f64> = download(stream, &ms)?.into_iter().chain(download(stream, &mt)?).map(f64::from).collect();
    let want: Vec<f64> = reference.sim_student.iter().chain(reference.sim_teacher.iter()).copied().collect();
    close(&format!("{what} sims"), &got, &want, tolerance(DType::F32, OutputKind::Tensor), failures);
    Ok(())
}

fn icsd_matches_cpu<T: KdFloat>(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    let mut rng = SplitMix64::new(0x1c5d ^ T::DTYPE.size() as u64);
    for variant in VARIANTS {
        for (i, mut dims) in [[2, 21, 9, 7], [1, 19, 33, 65], [3, 5, 1, 31], [2, 3, 17, 1]].into_iter().enumerate() {
            if i == 0 {
                // One random odd shape per variant and dtype besides the fixed ones.
                dims = [1 + rng.below(3), 2 + rng.below(24), 1 + 2 * rng.below(20), 1 + 2 * rng.below(40)];
            }
            let config = IcsdConfig { variant, ..IcsdConfig::default() };
            one_case::<T>(stream, config, dims, 10 + i as u64, &mut failures)?;
        }
    }
    verdict(failures)
}

fn icsd_large_official_f32(stream: &Stream) -> TestResult {
    // Pascal-like classes at a modest resolution: many blocks in every kernel.
    let mut failures = Vec::new();
    one_case::<f32>(stream, IcsdConfig::default(), [2, 21, 129, 129], 77, &mut failures)?;
    one_case::<f32>(
        stream,
        IcsdConfig { variant: IcsdVariant::Paper, ..IcsdConfig::default() },
        [2, 21, 65, 97],
        78,
        &mut failures,
    )?;
    verdict(failures)
}

fn icsd_deterministic_bitwise(stream: &Stream) -> TestResult {
    let dims = [2, 19, 64, 96];
    let numel: usize = dims.iter().product();
    let (ds, dt) = (upload(stream, &random::<bf16>(5, numel))?, upload(stream, &random::<bf16>(6, numel))?);
    for variant in VARIANTS {
        let mut icsd = IcsdCuda::new(stream.clone(), IcsdConfig { variant, ..IcsdConfig::default() }).or_msg("new")?;
        let mut run = || -> Result<(u32, Vec<u16>), String> {
            let mut loss = nan_buffer::<f32>(stream, 1)?;
            let mut grad = nan_buffer::<bf16>(stream, numel)?;
            icsd.forward_backward(&dims, &ds, &dt, &mut loss, &mut grad).or_msg("forward_backward")?;
            Ok((download(stream, &loss)?[0].to_bits(), download(stream, &grad)?.iter().map(|g| g.to_bits()).collect()))
        };
        let (a, b) = (run()?, run()?);
        ensure(a == b, || format!("{variant:?}: two runs differ"))?;
    }
    Ok(())
}

fn icsd_backward_upstream_and_accumulate(stream: &Stream) -> TestResult {
    let dims = [2, 7, 13, 11];
    let numel: usize = dims.iter().product();
    let s = random::<f32>(20, numel);
    let t = random::<f32>(21, numel);
    let initial = random::<f32>(22, numel);
    let mut failures = Vec::new();
    for variant in VARIANTS {
        let config = IcsdConfig { variant, ..IcsdConfig::default() };
        let r = reference(config, dims, &s, &t)?;
        let (ds, dt) = (upload(stream, &s)?, upload(stream, &t)?);
        let upstream = upload(stream, &[-2.0f32])?;
        let mut grad = upload(stream, &initial)?;
        let mut icsd = IcsdCuda::new(stream.clone(), config).or_msg("new")?;
        let options = GradOptions { scale: 0.5, accumulate: true };
        let pair = PairBuffers {
            upstream: Some(&upstream),
            grad_student: Some(&mut grad),
            options,
            ..PairBuffers::new(&ds, &dt)
        };
        icsd.call(&dims, IcsdBuffers { pair, sim_student: None, sim_teacher: None })
            .or_msg("backward, accumulating")?;
        let want: Vec<f64> = r.grad_student.iter().zip(&initial).map(|(g, &i)| i as f64 - g).collect();
        close(
            &format!("{variant:?} upstream+accumulate"),
            &widen(&download(stream, &grad)?),
            &want,
            1e-4,
            &mut failures,
        );
    }
    verdict(failures)
}

fn aicsd_one_call_matches_cpu(stream: &Stream) -> TestResult {
    let dims = [2, 21, 33, 31];
    let numel: usize = dims.iter().product();
    let s = random::<f32>(30, numel);
    let t = random::<f32>(31, numel);
    let config = AicsdConfig::default();
    let cpu = AicsdCpu::new(config).or_msg("cpu")?;
    let mut gpu = AicsdCuda::new(stream.clone(), config).or_msg("AicsdCuda::new")?;
    let (ds, dt) = (upload(stream, &s)?, upload(stream, &t)?);
    let mut failures = Vec::new();
    for epoch in [0.0, 37.0, 120.0] {
        let r = cpu
            .forward_backward(
                ArrayView4::from_shape(dims, &s[..]).or_msg("view")?,
                ArrayView4::from_shape(dims, &t[..]).or_msg("view")?,
                epoch,
            )
            .or_msg("cpu")?;
        let mut loss = nan_buffer::<f32>(stream, 1)?;
        let mut grad = nan_buffer::<f32>(stream, numel)?;
        gpu.forward_backward(&dims, epoch, &ds, &dt, &mut loss, &mut grad).or_msg("aicsd")?;
        close(&format!("aicsd loss @{epoch}"), &[download(stream, &loss)?[0] as f64], &[r.loss], 1e-4, &mut failures);
        let want: Vec<f64> = r.grad_student.iter().copied().collect();
        close(&format!("aicsd grad @{epoch}"), &widen(&download(stream, &grad)?), &want, 1e-4, &mut failures);
    }
    verdict(failures)
}

fn icsd_error_paths(stream: &Stream) -> TestResult {
    let mut icsd = IcsdCuda::new(stream.clone(), IcsdConfig::default()).or_msg("new")?;
    let small = upload(stream, &[0.0f32; 8])?;
    let mut loss = nan_buffer::<f32>(stream, 1)?;
    let r = icsd.forward(&[2, 3, 4, 5], &small, &small, &mut loss);
    ensure(matches!(r, Err(KdError::BufferTooSmall { .. })), || format!("short buffer: {r:?}"))?;
    let r = icsd.forward(&[2, 3, 4], &small, &small, &mut loss);
    ensure(matches!(r, Err(KdError::WrongRank { .. })), || format!("rank 3: {r:?}"))?;
    let r = icsd.forward(&[2, 0, 2, 2], &small, &small, &mut loss);
    ensure(matches!(r, Err(KdError::EmptyInput { .. })), || format!("zero dim: {r:?}"))?;
    let r = IcsdCuda::new(stream.clone(), IcsdConfig { tau: 0.0, ..IcsdConfig::default() });
    ensure(matches!(r, Err(KdError::InvalidParameter { .. })), || "tau 0 accepted".to_string())
}
