//! CWD on the GPU: every kernel against the CPU reference, the paths, long rows, many calls, misaligned
//! views, errors that need a device, the raw layer, gradient accumulation and scaling.

use half::{bf16, f16};
use kd_kernels::cudarc::driver::{DevicePtr, DevicePtrMut};
use kd_kernels::cwd::{Cwd, CwdConfig, CwdCpu, CwdCuda, CwdPath};
use kd_kernels::family::PairBuffers;
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::{DType, KdError, KdFloat};

use crate::common;
use crate::common::PAIR_SCENARIOS;
use crate::harness::{
    download, ensure, expect_err, gpu_tests, nan_buffer, upload, verdict, OrMsg, Stream, TestFn, TestResult,
};
use crate::pair::{
    bad_taus_rejected, compare, matches_cpu, misaligned_views, pair_gpu, same_bits, Case, GpuOut, CWD_PATHS,
};

pub(crate) const TESTS: &[(&str, TestFn)] = gpu_tests![
    cwd_paths_on_this_device,
    cwd_matches_cpu::<f32, f16, bf16>,
    cwd_long_rows_take_two_passes,
    cwd_many_calls_in_a_row,
    misaligned_views_cwd,
    error_paths_cwd,
];

/// Every shared scenario (`common::PAIR_SCENARIOS`) on both kernels, with and without the teacher gradient.
pub(crate) fn cwd_matches_cpu<T: KdFloat>(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for scenario in &PAIR_SCENARIOS {
        let case = Case::<T>::of(scenario);
        // One CPU run (with the teacher gradient) serves both GPU configurations.
        let config = CwdConfig { teacher_grad: true, ..scenario.cwd_config(T::DTYPE) };
        let (s, t) = case.views()?;
        let cpu = CwdCpu::new(config).or_msg("CwdCpu::new")?.forward_backward(s, t).or_msg("CwdCpu")?;
        for teacher_grad in [false, true] {
            for path in CWD_PATHS {
                let mut cwd = CwdCuda::new(stream.clone(), CwdConfig { teacher_grad, ..config })
                    .or_msg("CwdCuda::new")?
                    .with_path(path);
                let gpu = pair_gpu(stream, &mut cwd, &case)?;
                if gpu.gt.is_some() != teacher_grad {
                    failures.push(format!("{}: teacher gradient presence", case.name()));
                }
                let what =
                    format!("cwd {path:?} {} ({}) {config:?} teacher_grad={teacher_grad}", case.name(), scenario.name);
                compare(&what, &gpu, &cpu, &mut failures);
            }
        }
    }
    verdict(failures)
}

/// On a data-centre GPU the single pass applies to every benchmarked shape; `Auto` takes it there, and the
/// two paths agree with each other as well as with the CPU reference.
pub(crate) fn cwd_paths_on_this_device(stream: &Stream) -> TestResult {
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
    let (a, b) = (pair_gpu(stream, &mut one, &case)?, pair_gpu(stream, &mut two, &case)?);
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

/// Rows longer than the single pass takes on this device: `Auto` runs the two passes and matches the CPU
/// reference, a forced single pass is a typed error.
pub(crate) fn cwd_long_rows_take_two_passes(stream: &Stream) -> TestResult {
    let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: false };
    let mut auto = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?;
    let row = auto.single_pass_max_row_len(DType::F32) + 4099;
    let dims = [1, 2, 1, row];
    ensure(auto.resolved_path(&dims, DType::F32) == Ok(CwdPath::TwoPass), || format!("{dims:?}: not two passes"))?;
    let case = Case::<f32>::random(4600, dims);
    let (s, t) = case.views()?;
    let cpu = CwdCpu::new(config).or_msg("cpu")?.forward_backward(s, t).or_msg("cpu")?;
    let gpu = pair_gpu(stream, &mut auto, &case)?;
    let mut failures = Vec::new();
    compare(&format!("cwd Auto {}", case.name()), &gpu, &cpu, &mut failures);
    let mut forced = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?.with_path(CwdPath::SinglePass);
    match pair_gpu(stream, &mut forced, &case) {
        Err(e) if e.contains("Unsupported") => {}
        other => failures.push(format!("forced single pass on rows of {row}: {:?}", other.map(|o| o.loss))),
    }
    verdict(failures)
}

/// Hundreds of calls in a row on one object, shapes and entry points interleaved: the single pass's per-row
/// counters and the loss ticket must return to zero after every launch, or a later call would compute
/// from stale counts (or hang). Every repeat of a case must give the first result's bits.
pub(crate) fn cwd_many_calls_in_a_row(stream: &Stream) -> TestResult {
    let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: true };
    let cases = [
        Case::<f32>::random(4700, [2, 19, 64, 128]),
        Case::<f32>::random(4701, [1, 3, 129, 257]),
        Case::<f32>::random(4702, [8, 19, 8, 8]),
    ];
    for path in CWD_PATHS {
        let mut cwd = CwdCuda::new(stream.clone(), config).or_msg("CwdCuda::new")?.with_path(path);
        let firsts: Vec<GpuOut<f32>> = cases.iter().map(|c| pair_gpu(stream, &mut cwd, c)).collect::<Result<_, _>>()?;
        let case = &cases[0];
        let s = upload(stream, &case.s)?;
        let t = upload(stream, &case.t)?;
        let up = upload(stream, &[1.0f32])?;
        let mut loss = upload(stream, &[0.0f32])?;
        let mut gs = nan_buffer::<f32>(stream, case.numel())?;
        let mut gt = nan_buffer::<f32>(stream, case.numel())?;
        for _ in 0..100 {
            cwd.forward(&case.dims, &s, &t, &mut loss).or_msg("forward")?;
            let backward = both_gradients((&s, &t), None, Some(&up), (&mut gs, &mut gt));
            cwd.call(&case.dims, backward).or_msg("backward")?;
            let both = both_gradients((&s, &t), Some(&mut loss), None, (&mut gs, &mut gt));
            cwd.call(&case.dims, both).or_msg("forward_backward")?;
        }
        stream.synchronize().or_msg("synchronize")?;
        for (i, c) in cases.iter().enumerate() {
            let again = pair_gpu(stream, &mut cwd, c)?;
            same_bits(&format!("cwd {path:?} {} after 300 calls", c.name()), &firsts[i], &again)?;
        }
        let last =
            GpuOut { loss: download(stream, &loss)?[0], gs: download(stream, &gs)?, gt: Some(download(stream, &gt)?) };
        same_bits(&format!("cwd {path:?} {} the 300th call", case.name()), &firsts[0], &last)?;
    }
    Ok(())
}

/// The buffers of a call writing both gradients: with the loss, or (given `upstream`) a backward.
fn both_gradients<'a, T>(
    (s, t): (&'a dyn DevicePtr<T>, &'a dyn DevicePtr<T>),
    loss: Option<&'a mut dyn DevicePtrMut<f32>>,
    upstream: Option<&'a dyn DevicePtr<f32>>,
    (gs, gt): (&'a mut dyn DevicePtrMut<T>, &'a mut dyn DevicePtrMut<T>),
) -> PairBuffers<'a, T> {
    PairBuffers { loss, upstream, grad_student: Some(gs), grad_teacher: Some(gt), ..PairBuffers::new(s, t) }
}

/// Both kernels on misaligned sub-buffers (see `pair::misaligned_views`), in every dtype.
pub(crate) fn misaligned_views_cwd(stream: &Stream) -> TestResult {
    let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: true };
    misaligned_views::<Cwd>(stream, config, &CWD_PATHS, 8000, &[[1, 3, 129, 257], [2, 5, 9, 11], [1, 1, 1, 37]])
}

pub(crate) fn error_paths_cwd(stream: &Stream) -> TestResult {
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
    bad_taus_rejected::<Cwd>(stream, [0.0, -1.0, f64::NAN, f64::INFINITY], |tau| CwdConfig {
        tau,
        ..CwdConfig::default()
    })?;
    let r = CwdCuda::new(stream.clone(), CwdConfig { loss_weight: f64::NAN, ..CwdConfig::default() }).map(|_| ());
    expect_err("CwdCuda::new lw=NaN", r, |e| matches!(e, KdError::InvalidParameter { name: "loss_weight", .. }))?;

    let mut off =
        CwdCuda::new(stream.clone(), CwdConfig { teacher_grad: false, ..CwdConfig::default() }).or_msg("new")?;
    let mut on =
        CwdCuda::new(stream.clone(), CwdConfig { teacher_grad: true, ..CwdConfig::default() }).or_msg("new")?;
    let up = upload(stream, &[1.0f32])?;

    let r = off.forward_backward(&dims, &s, &t, &mut loss, &mut gs_short);
    expect_err("grad_student too short", r, |e| {
        *e == KdError::BufferTooSmall { what: "grad_student", needed: n, len: n - 1 }
    })?;
    let r = on.call(&dims, both_gradients((&s, &t), Some(&mut loss), None, (&mut gs, &mut gs_short))).map(drop);
    expect_err("grad_teacher too short", r, |e| {
        *e == KdError::BufferTooSmall { what: "grad_teacher", needed: n, len: n - 1 }
    })?;
    let r = off.forward_backward(&dims, &short, &t, &mut loss, &mut gs);
    expect_err("student too short", r, |e| *e == KdError::BufferTooSmall { what: "student", needed: n, len: n - 1 })?;
    let r = off.forward(&dims, &s, &short, &mut loss);
    expect_err("teacher too short", r, |e| *e == KdError::BufferTooSmall { what: "teacher", needed: n, len: n - 1 })?;
    let r = off.forward(&dims, &s, &t, &mut loss.slice_mut(0..0));
    expect_err("loss of length 0", r, |e| *e == KdError::BufferTooSmall { what: "loss", needed: 1, len: 0 })?;
    let r = off.forward_backward(&dims, &s, &t, &mut loss.slice_mut(0..0), &mut gs);
    expect_err("loss of length 0 (forward_backward)", r, |e| {
        matches!(e, KdError::BufferTooSmall { what: "loss", .. })
    })?;
    let r = off.backward(&dims, &s, &t, &up.slice(0..0), &mut gs);
    expect_err("upstream of length 0", r, |e| matches!(e, KdError::BufferTooSmall { what: "upstream", .. }))?;

    let r = on.forward_backward(&dims, &s, &t, &mut loss, &mut gs);
    expect_err("teacher_grad on, None", r, |e| matches!(e, KdError::OutputMismatch { what: "grad_teacher", .. }))?;
    let r = on.backward(&dims, &s, &t, &up, &mut gs);
    expect_err("teacher_grad on, None (backward)", r, |e| matches!(e, KdError::OutputMismatch { .. }))?;
    let r = off.call(&dims, both_gradients((&s, &t), Some(&mut loss), None, (&mut gs, &mut gt))).map(drop);
    expect_err("teacher_grad off, Some", r, |e| matches!(e, KdError::OutputMismatch { what: "grad_teacher", .. }))?;
    let r = off.call(&dims, both_gradients((&s, &t), None, Some(&up), (&mut gs, &mut gt))).map(drop);
    expect_err("teacher_grad off, Some (backward)", r, |e| matches!(e, KdError::OutputMismatch { .. }))?;

    for bad in [&[2usize, 3, 20][..], &[1, 2, 3, 4, 5], &[]] {
        let r = off.forward_backward(bad, &s, &t, &mut loss, &mut gs);
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
    let mut failures = Vec::new();
    matches_cpu("cwd after errors", stream, &mut on, &case, &mut failures)?;
    verdict(failures)
}
