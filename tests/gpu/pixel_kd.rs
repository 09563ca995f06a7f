//! Pixel KD on the GPU: both kernels against the CPU reference, the paths, the AMP loss scale, misaligned
//! views, errors that need a device, the raw layer, gradient accumulation and scaling.

use half::{bf16, f16};
use kd_kernels::pixel_kd::{PixelKd, PixelKdConfig, PixelKdCpu, PixelKdCuda, PixelKdPath, Reduction};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::{DType, KdError, KdFloat};

use crate::common;
use crate::common::PAIR_SCENARIOS;
use crate::harness::{
    download, ensure, expect_err, gpu_tests, nan_buffer, upload, verdict, OrMsg, Stream, TestFn, TestResult,
};
use crate::pair::{bad_taus_rejected, compare, matches_cpu, misaligned_views, pair_gpu, Case, PIXEL_PATHS};

pub(crate) const TESTS: &[(&str, TestFn)] = gpu_tests![
    pixel_kd_paths_on_this_device,
    pixel_kd_matches_cpu::<f32, f16, bf16>,
    f16_gradients_with_amp_loss_scale,
    misaligned_views_pixel_kd,
    error_paths_pixel_kd,
];

/// Every shared scenario (`common::PAIR_SCENARIOS`) on both kernels.
pub(crate) fn pixel_kd_matches_cpu<T: KdFloat>(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for scenario in &PAIR_SCENARIOS {
        let case = Case::<T>::of(scenario);
        let config = scenario.pixel_kd_config(T::DTYPE);
        let (s, t) = case.views()?;
        let cpu = PixelKdCpu::new(config).or_msg("PixelKdCpu::new")?.forward_backward(s, t).or_msg("cpu")?;
        for path in PIXEL_PATHS {
            let mut pkd = PixelKdCuda::new(stream.clone(), config).or_msg("PixelKdCuda::new")?.with_path(path);
            let gpu = pair_gpu(stream, &mut pkd, &case)?;
            let what = format!("pixel_kd {path:?} {} ({}) {config:?}", case.name(), scenario.name);
            compare(&what, &gpu, &cpu, &mut failures);
        }
    }
    verdict(failures)
}

/// The tiled pixel-KD kernel applies to every benchmarked shape (19 classes, 256 feature channels), and to
/// 1000 bf16 channels with the shared memory a data-centre GPU allows a block; `Auto` takes it there.
pub(crate) fn pixel_kd_paths_on_this_device(stream: &Stream) -> TestResult {
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
    let gpu = pair_gpu(stream, &mut auto, &case)?;
    compare(&format!("pixel_kd Auto {}", case.name()), &gpu, &cpu, &mut failures);
    verdict(failures)
}

/// The official pixel-KD setting (mean over N*C*H*W, weight 10) on f16 logits gives gradients below f16's
/// normal range; mixed-precision training scales the loss, which `backward`'s device upstream carries. With
/// a loss scale of 1024 the f16 gradients meet the f16 row of the tolerance table against the CPU's.
pub(crate) fn f16_gradients_with_amp_loss_scale(stream: &Stream) -> TestResult {
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

/// Both kernels on misaligned sub-buffers (see `pair::misaligned_views`), in every dtype.
pub(crate) fn misaligned_views_pixel_kd(stream: &Stream) -> TestResult {
    let config = PixelKdConfig { tau: 2.0, loss_weight: 1.0, reduction: Reduction::Sum, scale_tau2: true };
    misaligned_views::<PixelKd>(stream, config, &PIXEL_PATHS, 8100, &[[2, 19, 17, 33], [1, 7, 1, 9]])
}

pub(crate) fn error_paths_pixel_kd(stream: &Stream) -> TestResult {
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

    let bad_taus = [0.0, -1.0, f64::NAN, f64::NEG_INFINITY];
    bad_taus_rejected::<PixelKd>(stream, bad_taus, |tau| PixelKdConfig { tau, ..PixelKdConfig::default() })?;
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
    let mut failures = Vec::new();
    matches_cpu("pixel_kd after errors", stream, &mut pkd, &case, &mut failures)?;
    verdict(failures)
}
