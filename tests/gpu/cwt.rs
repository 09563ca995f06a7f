//! CWT on the GPU: the kernels against the f64 CPU reference on random shapes in every dtype (forward,
//! forward_backward, backward with the device upstream scalar, accumulate + scale), bitwise determinism,
//! and typed errors. Registered by the lead in `tests/gpu/main.rs` (`mod cwt;`, `cwt::TESTS`).

use half::{bf16, f16};
use kd_kernels::cudarc::driver::CudaSlice;
use kd_kernels::cwt::{
    CwtBuffers, CwtConfig, CwtCuda, CwtNormalize, CwtOutput, CwtParamBuffers, CwtParamGrads, CwtShapes,
};
use kd_kernels::tolerance::{tolerance, OutputKind};
use kd_kernels::{DType, GradOptions, KdError, KdFloat};

use crate::common::widen;
use crate::harness::{
    close, download, ensure, gpu_tests, nan_buffer, upload, verdict, OrMsg, Stream, TestFn, TestResult,
};

/// The inputs and reference every harness's CWT tests share.
#[path = "../common/cwt.rs"]
mod shared;

use shared::{gradients, CwtInputs};

pub(crate) const TESTS: &[(&str, TestFn)] =
    gpu_tests![cwt_matches_cpu::<f32, f16, bf16>, cwt_deterministic_bitwise, cwt_error_paths];

/// (student [N, Cs, H, W], Ch, Ct): odd channels, tile edges, a shape with several pixel chunks. The small
/// shapes take a block per 64 x 64 tile and several weight-gradient splits; the last has chunks of more 64-pixel
/// tiles than a 132-SM device has SMs in every dtype, so it takes the fused backward there (`cwt_forward_store`,
/// `cwt_grad_input`; `src/cwt/plan.rs`). f16 and bf16 run the tensor-core tiles.
const SHAPES: [([usize; 4], usize, usize); 6] = [
    ([2, 7, 5, 6], 13, 5),
    ([1, 64, 8, 8], 65, 63),
    ([3, 17, 13, 11], 32, 130),
    ([2, 256, 10, 15], 256, 256),
    ([1, 3, 40, 50], 4, 2),
    ([2, 9, 120, 120], 33, 7),
];

/// The shared kernel inputs (`shared`), unquantized, of a student `dims` and an MLP `Cs -> ch -> ct`.
fn inputs(seed: u64, dims: [usize; 4], ch: usize, ct: usize) -> CwtInputs {
    CwtInputs::for_kernels(seed, dims, CwtShapes { cs: dims[1], ch, ct }, false)
}

struct Device<T> {
    s: CudaSlice<T>,
    t: CudaSlice<T>,
    w1: CudaSlice<f32>,
    b1: CudaSlice<f32>,
    w2: CudaSlice<f32>,
    b2: CudaSlice<f32>,
}

fn device<T: KdFloat>(stream: &Stream, h: &CwtInputs) -> Result<Device<T>, String> {
    let s: Vec<T> = h.student.iter().map(|&x| T::from_f32(x)).collect();
    let t: Vec<T> = h.teacher.iter().map(|&x| T::from_f32(x)).collect();
    Ok(Device {
        s: upload(stream, &s)?,
        t: upload(stream, &t)?,
        w1: upload(stream, &h.w1)?,
        b1: upload(stream, &h.b1)?,
        w2: upload(stream, &h.w2)?,
        b2: upload(stream, &h.b2)?,
    })
}

struct Grads<T> {
    s: CudaSlice<T>,
    w1: CudaSlice<f32>,
    b1: CudaSlice<f32>,
    w2: CudaSlice<f32>,
    b2: CudaSlice<f32>,
}

fn nan_grads<T: KdFloat>(stream: &Stream, h: &CwtInputs) -> Result<Grads<T>, String> {
    Ok(Grads {
        s: nan_buffer(stream, h.student.len())?,
        w1: nan_buffer(stream, h.w1.len())?,
        b1: nan_buffer(stream, h.b1.len())?,
        w2: nan_buffer(stream, h.w2.len())?,
        b2: nan_buffer(stream, h.b2.len())?,
    })
}

/// Compares downloaded gradients with `reference` (+ `base` when accumulating): the student's to the row of
/// `T`, the parameters' (f32) to the f32 row (see `shared::gradients`).
fn compare_grads<T: KdFloat>(
    failures: &mut Vec<String>,
    what: &str,
    stream: &Stream,
    g: &Grads<T>,
    reference: &CwtOutput,
    base: f64,
) -> Result<(), String> {
    let got = [
        widen(&download(stream, &g.s)?),
        widen(&download(stream, &g.w1)?),
        widen(&download(stream, &g.b1)?),
        widen(&download(stream, &g.w2)?),
        widen(&download(stream, &g.b2)?),
    ];
    for ((name, want), got) in gradients(reference).into_iter().zip(got) {
        let dtype = if name == "grad.student" { T::DTYPE } else { DType::F32 };
        let want: Vec<f64> = want.into_iter().map(|x| x + base).collect();
        close(&format!("{what} {name}"), &got, &want, tolerance(dtype, OutputKind::Tensor), failures);
    }
    Ok(())
}

fn cwt_matches_cpu<T: KdFloat>(stream: &Stream) -> TestResult {
    let mut failures = Vec::new();
    for (i, (dims, ch, ct)) in SHAPES.into_iter().enumerate() {
        let h = inputs(8000 + i as u64, dims, ch, ct);
        let normalize = if i % 2 == 0 { CwtNormalize::Batch } else { CwtNormalize::Mean };
        let config = CwtConfig { loss_weight: 0.5, normalize };
        let d = device::<T>(stream, &h)?;
        let params = CwtParamBuffers { w1: &d.w1, b1: &d.b1, w2: &d.w2, b2: &d.b2 };
        let mut cwt = CwtCuda::with_shapes(stream.clone(), config, h.shapes).or_msg("CwtCuda::new")?;
        let what = format!("{} {dims:?} Ch {ch} Ct {ct}", T::DTYPE);
        let reference = h.reference::<T>(config, 1.0);

        // forward
        let mut loss = nan_buffer::<f32>(stream, 1)?;
        cwt.forward(&dims, &d.s, &d.t, &params, &mut loss).or_msg("forward")?;
        let l = download(stream, &loss)?[0] as f64;
        let loss_row = tolerance(T::DTYPE, OutputKind::Loss);
        close(&format!("{what} forward loss"), &[l], &[reference.loss], loss_row, &mut failures);

        // forward_backward
        let mut g = nan_grads::<T>(stream, &h)?;
        let mut loss = nan_buffer::<f32>(stream, 1)?;
        let grads = CwtParamGrads { w1: &mut g.w1, b1: &mut g.b1, w2: &mut g.w2, b2: &mut g.b2 };
        cwt.forward_backward(&dims, &d.s, &d.t, &params, &mut loss, &mut g.s, grads).or_msg("forward_backward")?;
        let l = download(stream, &loss)?[0] as f64;
        close(&format!("{what} loss"), &[l], &[reference.loss], loss_row, &mut failures);
        compare_grads(&mut failures, &format!("{what} forward_backward"), stream, &g, &reference, 0.0)?;

        // backward with the device upstream scalar, accumulating onto ones, scaled by 2.
        let upstream = upload(stream, &[-0.75f32])?;
        let mut g = Grads {
            s: upload(stream, &vec![T::from_f32(1.0); h.student.len()])?,
            w1: upload(stream, &vec![1f32; h.w1.len()])?,
            b1: upload(stream, &vec![1f32; h.b1.len()])?,
            w2: upload(stream, &vec![1f32; h.w2.len()])?,
            b2: upload(stream, &vec![1f32; h.b2.len()])?,
        };
        let grads = CwtParamGrads { w1: &mut g.w1, b1: &mut g.b1, w2: &mut g.w2, b2: &mut g.b2 };
        let options = GradOptions { scale: 2.0, accumulate: true };
        let buffers = CwtBuffers {
            upstream: Some(&upstream),
            grad_student: Some(&mut g.s),
            grads: Some(grads),
            options,
            ..CwtBuffers::new(&d.s, &d.t, params)
        };
        cwt.call(&dims, buffers).or_msg("backward, accumulating")?;
        let scaled = h.reference::<T>(config, -1.5);
        compare_grads(&mut failures, &format!("{what} backward accumulate"), stream, &g, &scaled, 1.0)?;
    }
    verdict(failures)
}

fn cwt_deterministic_bitwise(stream: &Stream) -> TestResult {
    let h = inputs(9001, [2, 96, 33, 17], 130, 70);
    let d = device::<bf16>(stream, &h)?;
    let params = CwtParamBuffers { w1: &d.w1, b1: &d.b1, w2: &d.w2, b2: &d.b2 };
    let mut cwt = CwtCuda::with_shapes(stream.clone(), CwtConfig::default(), h.shapes).or_msg("new")?;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let mut g = nan_grads::<bf16>(stream, &h)?;
        let mut loss = nan_buffer::<f32>(stream, 1)?;
        let grads = CwtParamGrads { w1: &mut g.w1, b1: &mut g.b1, w2: &mut g.w2, b2: &mut g.b2 };
        cwt.forward_backward(&h.dims, &d.s, &d.t, &params, &mut loss, &mut g.s, grads).or_msg("forward_backward")?;
        let mut bits: Vec<u64> = download(stream, &loss)?.iter().map(|v| v.to_bits() as u64).collect();
        bits.extend(download(stream, &g.s)?.iter().map(|v| v.to_bits() as u64));
        for b in [&g.w1, &g.b1, &g.w2, &g.b2] {
            bits.extend(download(stream, b)?.iter().map(|v| v.to_bits() as u64));
        }
        runs.push(bits);
    }
    ensure(runs[0] == runs[1] && runs[1] == runs[2], || "results differ between runs".into())
}

fn cwt_error_paths(stream: &Stream) -> TestResult {
    let h = inputs(9100, [2, 4, 3, 3], 5, 6);
    let d = device::<f32>(stream, &h)?;
    let params = CwtParamBuffers { w1: &d.w1, b1: &d.b1, w2: &d.w2, b2: &d.b2 };
    let mut cwt = CwtCuda::with_shapes(stream.clone(), CwtConfig::default(), h.shapes).or_msg("new")?;
    let mut loss = nan_buffer::<f32>(stream, 1)?;
    let mut failures = Vec::new();
    // Student channels other than Cs.
    match cwt.forward(&[2, 5, 3, 3], &d.s, &d.t, &params, &mut loss) {
        Err(KdError::ShapeMismatch { what: "student", .. }) => {}
        other => failures.push(format!("wrong channels: {other:?}")),
    }
    // A zero dimension.
    match cwt.forward(&[2, 4, 0, 3], &d.s, &d.t, &params, &mut loss) {
        Err(KdError::EmptyInput { .. }) => {}
        other => failures.push(format!("zero dimension: {other:?}")),
    }
    // A parameter buffer too small for the shapes.
    let short = upload(stream, &h.w1[..7])?;
    let bad = CwtParamBuffers { w1: &short, ..params };
    match cwt.forward(&h.dims, &d.s, &d.t, &bad, &mut loss) {
        Err(KdError::BufferTooSmall { .. }) => {}
        other => failures.push(format!("short W1: {other:?}")),
    }
    // Zero channels at construction.
    match CwtCuda::with_shapes(stream.clone(), CwtConfig::default(), CwtShapes { cs: 4, ch: 0, ct: 6 }) {
        Err(KdError::EmptyInput { .. }) => {}
        other => failures.push(format!("zero hidden width: {:?}", other.map(|_| ()))),
    }
    verdict(failures)
}
