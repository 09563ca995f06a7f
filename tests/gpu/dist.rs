//! DIST on the GPU against the f64 CPU reference: random odd shapes in every dtype, the bench shape, bitwise
//! determinism, forward = forward_backward's loss, the device upstream with accumulate + scale, and error
//! paths. The recorded fixtures run in `fixtures::fixtures_pass_on_cuda` (DIST is a pair family).

use half::{bf16, f16};
use kd_kernels::dist::{DistConfig, DistCuda};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::{GradOptions, KdError, KdFloat};

use crate::harness::{
    download, ensure, expect_err, gpu_tests, nan_buffer, upload, verdict, OrMsg, Stream, TestFn, TestResult,
};
use crate::pair::{matches_cpu, pair, pair_gpu, same_bits, Case};

pub(crate) const TESTS: &[(&str, TestFn)] = gpu_tests![
    dist_matches_cpu::<f32, f16, bf16>,
    dist_bench_shape_f32,
    dist_deterministic_bitwise,
    dist_backward_upstream_accumulate_scale,
    dist_error_paths,
];

const WEIGHTED: DistConfig = DistConfig { tau: 2.0, beta: 1.5, gamma: 0.5, loss_weight: 3.0 };

fn one_case<T: KdFloat>(stream: &Stream, config: DistConfig, case: &Case<T>, failures: &mut Vec<String>) -> TestResult {
    let mut dist = DistCuda::new(stream.clone(), config).or_msg("DistCuda::new")?;
    matches_cpu(&format!("dist {} {config:?}", case.name()), stream, &mut dist, case, failures)
}

fn dist_matches_cpu<T: KdFloat>(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for (seed, dims) in
        [(1u64, [2, 19, 17, 33]), (2, [3, 7, 5, 13]), (3, [1, 1, 3, 5]), (4, [4, 150, 9, 11]), (5, [1, 3, 129, 257])]
    {
        let case = Case::<T>::random(7000 + seed, dims);
        for config in [DistConfig::default(), WEIGHTED] {
            one_case(stream, config, &case, &mut failures)?;
        }
    }
    verdict(failures)
}

fn dist_bench_shape_f32(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    one_case(stream, DistConfig::default(), &Case::<f32>::random(7100, [8, 19, 128, 256]), &mut failures)?;
    verdict(failures)
}

fn dist_deterministic_bitwise(stream: &Stream) -> TestResult {
    for dims in [[8, 19, 128, 256], [2, 150, 33, 17]] {
        let case = Case::<bf16>::random(7200, dims);
        let mut dist = DistCuda::new(stream.clone(), WEIGHTED).or_msg("DistCuda::new")?;
        let first = pair_gpu(stream, &mut dist, &case)?;
        let again = pair_gpu(stream, &mut dist, &case)?;
        same_bits(&format!("dist {}", case.name()), &first, &again)?;
    }
    Ok(())
}

/// `forward` gives `forward_backward`'s loss bit for bit; `backward` with a device upstream, a scale and
/// accumulation gives `initial + scale * upstream * gradient`.
fn dist_backward_upstream_accumulate_scale(stream: &Stream) -> TestResult {
    let case = Case::<f32>::random(7300, [2, 19, 17, 33]);
    let mut dist = DistCuda::new(stream.clone(), WEIGHTED).or_msg("DistCuda::new")?;
    let fb = pair_gpu(stream, &mut dist, &case)?;
    let s = upload(stream, &case.s)?;
    let t = upload(stream, &case.t)?;
    let mut loss = upload(stream, &[f32::NAN])?;
    dist.forward(&case.dims, &s, &t, &mut loss).or_msg("DistCuda::forward")?;
    let f = download(stream, &loss)?[0];
    ensure(f.to_bits() == fb.loss.to_bits(), || format!("forward {f:e} vs forward_backward {:e}", fb.loss))?;
    let initial: Vec<f32> = (0..case.numel()).map(|i| 1e-3 * ((i % 7) as f32 - 3.0)).collect();
    for (u, scale) in [(2.5f32, -0.75), (-0.5, 4.0)] {
        let up = upload(stream, &[u])?;
        let mut gs = upload(stream, &initial)?;
        let buffers = kd_kernels::family::PairBuffers {
            upstream: Some(&up),
            grad_student: Some(&mut gs),
            options: GradOptions { scale, accumulate: true },
            ..pair(&s, &t)
        };
        dist.call(&case.dims, buffers).or_msg("DistCuda::backward")?;
        let got = crate::common::widen(&download(stream, &gs)?);
        let want: Vec<f64> =
            fb.gs.iter().zip(&initial).map(|(g, i)| *i as f64 + scale * u as f64 * *g as f64).collect();
        let c = Comparison::of(got, want);
        ensure(c.passes(tolerance(kd_kernels::DType::F32, OutputKind::Tensor)), || {
            format!("upstream {u} scale {scale}: {c:?}")
        })?;
    }
    Ok(())
}

fn dist_error_paths(stream: &Stream) -> TestResult {
    let s = upload(stream, &[0.0f32; 24])?;
    let mut loss = nan_buffer::<f32>(stream, 1)?;
    let mut dist = DistCuda::new(stream.clone(), DistConfig::default()).or_msg("DistCuda::new")?;
    expect_err("short buffer", dist.forward(&[2, 3, 2, 3], &s, &s, &mut loss).map(drop), |e| {
        matches!(e, KdError::BufferTooSmall { .. })
    })?;
    let big = upload(stream, &vec![0.0f32; 2049])?;
    expect_err("too many classes", dist.forward(&[1, 2049, 1, 1], &big, &big, &mut loss).map(drop), |e| {
        matches!(e, KdError::TooLarge { .. })
    })?;
    expect_err(
        "tau 0",
        DistCuda::new(stream.clone(), DistConfig { tau: 0.0, ..DistConfig::default() }).map(drop),
        |e| matches!(e, KdError::InvalidParameter { name: "tau", .. }),
    )
}
