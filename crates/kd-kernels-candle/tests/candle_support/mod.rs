//! Shared by the candle tests (`tests/candle_ops.rs` on the CPU, `tests/candle_cuda.rs` on a GPU): a module per
//! registered family (`{module}.rs`, declared from the crate's registry: a family cannot be registered without
//! its candle tests) with its loss written in candle's own tensor ops or its CPU reference, and checks that
//! take the device, so the CPU and the GPU run the same bodies; here, what the families' checks share, and the
//! checks across families (layouts, misuse, the training example).
//!
//! Each module lists its checks in `candle_tests! { test_name => check, ... }`, a macro the including binary
//! defines before `mod candle_support;`: `#[test]`s in `tests/candle_ops.rs`, a `TESTS` table for the GPU
//! harness in `tests/candle_cuda.rs`.
//!
//! Every comparison uses `kd_kernels::tolerance`: the loss against the 1e-4 row, gradients against the
//! row of their dtype (the ops write them in the input dtype, so a rounding to it is expected).
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use kd_kernels::cpu::PairReference;
use kd_kernels::cwd::CwdConfig;
use kd_kernels::pixel_kd::PixelKdConfig;
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels_candle::{Cwd, PixelKd};
use ndarray::ArrayView4;

macro_rules! family_modules {
    ($($variant:ident => $module:ident :: $marker:ident, $name:literal, $fixtures:ident;)*) => {
        $(pub mod $module;)*
    };
}
kd_kernels::for_each_family!(family_modules);

#[path = "../../examples/train_candle.rs"]
pub mod train_candle;
use train_candle as train;

pub type TestResult = Result<(), String>;

pub trait OrMsg<T> {
    fn or_msg(self, what: &str) -> Result<T, String>;
}

impl<T, E: std::fmt::Display> OrMsg<T> for Result<T, E> {
    fn or_msg(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// The dtypes the ops take on `device`: the kernels' three, and f64 on the CPU (the reference's arithmetic).
pub fn dtypes(device: &Device) -> Vec<DType> {
    let mut d = DTYPES.to_vec();
    if device.is_cpu() {
        d.push(DType::F64);
    }
    d
}

pub fn kd_dtype(dtype: DType) -> kd_kernels::DType {
    match dtype {
        DType::F32 => kd_kernels::DType::F32,
        DType::F16 => kd_kernels::DType::F16,
        DType::BF16 => kd_kernels::DType::BF16,
        // f64 on the CPU: the table's tightest row (the op's gradients are the f64 reference's, unrounded).
        DType::F64 => kd_kernels::DType::F32,
        other => panic!("no tolerance row for {other:?}"),
    }
}

/// Deterministic logits spread over about +-3 (a fixed pseudo-random sequence, so failures reproduce).
pub fn logits(shape: &[usize], seed: u64, device: &Device) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64 * 6.0 - 3.0) as f32
        })
        .collect();
    Tensor::from_vec(values, shape, device).expect("host tensor")
}

/// `got` against `reference` under the tolerance of `dtype` and `kind`.
pub fn compare(what: &str, got: &Tensor, reference: &Tensor, dtype: DType, kind: OutputKind) -> TestResult {
    if got.dims() != reference.dims() {
        return Err(format!("{what}: shape {:?}, reference {:?}", got.dims(), reference.dims()));
    }
    if got.dtype() != reference.dtype() && kind == OutputKind::Tensor {
        return Err(format!("{what}: dtype {:?}, expected {:?}", got.dtype(), reference.dtype()));
    }
    let flat = |t: &Tensor| -> Result<Vec<f64>, String> {
        t.to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f64>()).or_msg(what)
    };
    let c = Comparison::of(flat(got)?, flat(reference)?);
    let tol = tolerance(kd_dtype(dtype), kind);
    if c.passes(tol) && c.ref_max_abs > 0.0 {
        Ok(())
    } else {
        Err(format!("{what} ({dtype:?}): max_rel_err {:e} > {tol:e} (ref_max_abs {:e})", c.max_rel_err, c.ref_max_abs))
    }
}

pub fn scalar(t: &Tensor) -> Result<f64, String> {
    t.to_dtype(DType::F64).and_then(|t| t.to_scalar::<f64>()).or_msg("scalar")
}

// ---------------------------------------------------------------------------------------------------------
// What the losses in candle's own ops (fp32, straight from docs/losses.md, each in its family's module) share.

/// `log_softmax` along `dim` as `z - LSE(z)`.
pub fn log_softmax(z: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let max = z.max_keepdim(dim)?.detach();
    let shifted = z.broadcast_sub(&max)?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(dim)?.log()?)
}

// ---------------------------------------------------------------------------------------------------------
// Checks: the op's loss and gradients against the reference's, every dtype.

const SHAPE: [usize; 4] = [2, 5, 6, 7];

/// One `(student, teacher) -> loss` family: the op's loss and student gradient (and, where `teacher_var`,
/// the teacher's) equal the reference's and its autograd, for every dtype; the upstream gradient (the loss
/// times 3) scales the gradient.
fn check_pair(
    device: &Device,
    name: &str,
    teacher_var: bool,
    op: &dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    reference: &dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> TestResult {
    let mut failures = Vec::new();
    for dtype in dtypes(device) {
        let what = format!("{name} {dtype:?}");
        let s = Var::from_tensor(&logits(&SHAPE, 1, device).to_dtype(dtype).or_msg(&what)?).or_msg(&what)?;
        let t = Var::from_tensor(&logits(&SHAPE, 2, device).to_dtype(dtype).or_msg(&what)?).or_msg(&what)?;
        let t_in = if teacher_var { t.as_tensor().clone() } else { t.as_tensor().detach() };
        let got = op(s.as_tensor(), &t_in).or_msg(&what)?;
        if got.dtype() != DType::F32 || !got.dims().is_empty() {
            failures.push(format!("{what}: the loss is {:?} {:?}, not an f32 scalar", got.dtype(), got.dims()));
        }
        let want = reference(s.as_tensor(), &t_in).or_msg(&what)?;
        let run = |loss: &Tensor, scale: f64| -> Result<(Tensor, Option<Tensor>), String> {
            let grads = loss.affine(scale, 0.0).and_then(|l| l.backward()).or_msg(&what)?;
            let gs = grads.get(s.as_tensor()).ok_or(format!("{what}: no student gradient"))?.clone();
            Ok((gs, grads.get(t.as_tensor()).cloned()))
        };
        let (gs, gt) = run(&got, 3.0)?;
        let (ws, wt) = run(&want, 3.0)?;
        let checks = [
            compare(&format!("{what} loss"), &got, &want, dtype, OutputKind::Loss),
            compare(&format!("{what} grad student (upstream 3)"), &gs, &ws, dtype, OutputKind::Tensor),
        ];
        failures.extend(checks.into_iter().filter_map(Result::err));
        match (teacher_var, gt, wt) {
            (false, None, None) => {}
            (true, Some(gt), Some(wt)) => {
                if let Err(e) = compare(&format!("{what} grad teacher"), &gt, &wt, dtype, OutputKind::Tensor) {
                    failures.push(e);
                }
            }
            (_, gt, wt) => failures.push(format!(
                "{what}: teacher gradient present in op {} / reference {}",
                gt.is_some(),
                wt.is_some()
            )),
        }
    }
    verdict(failures)
}

pub fn verdict(failures: Vec<String>) -> TestResult {
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} failure(s):\n    {}", failures.len(), failures.join("\n    ")))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Checks against the crate's f64 CPU reference on the inputs' values (the families without a candle-ops
// reference), and the relation ops' (student `[N, Cs, H, W]`, teacher `[N, Ct, H, W]`) shared checks.

/// The factor on the loss before `backward`: the gradients must come out times it.
pub const UPSTREAM: f64 = 3.0;

/// A tensor's values in f64 on the host, and its dims.
pub fn host(t: &Tensor) -> Result<(Vec<f64>, Vec<usize>), String> {
    let values =
        t.to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f64>()).or_msg("host")?;
    Ok((values, t.dims().to_vec()))
}

pub fn view4(values: &(Vec<f64>, Vec<usize>)) -> ArrayView4<'_, f64> {
    ArrayView4::from_shape(<[usize; 4]>::try_from(values.1.as_slice()).expect("rank 4"), &values.0).expect("shape")
}

/// `UPSTREAM * grad` in `dtype` on `device`, the expected gradient.
pub fn expected(grad: &ndarray::Array4<f64>, dtype: DType, device: &Device) -> Result<Tensor, String> {
    let values: Vec<f64> = grad.iter().map(|g| g * UPSTREAM).collect();
    Tensor::from_vec(values, grad.shape(), device).and_then(|t| t.to_dtype(dtype)).or_msg("expected gradient")
}

pub fn features(shape: &[usize], seed: u64, dtype: DType, device: &Device) -> Result<Tensor, String> {
    logits(shape, seed, device).to_dtype(dtype).or_msg("features")
}

/// The error's message, or a failure when the call succeeded.
pub fn message<T>(result: candle_core::Result<T>, what: &str) -> Result<String, String> {
    match result {
        Ok(_) => Err(format!("{what}: accepted")),
        Err(e) => Ok(e.to_string()),
    }
}

pub fn expect_in(message: &str, needle: &str, what: &str) -> TestResult {
    if message.contains(needle) {
        Ok(())
    } else {
        Err(format!("{what}: the message does not say {needle:?}: {message}"))
    }
}

/// `(student, teacher)` dims: other channels with odd sides (ceil-mode edge windows), and the same channels.
const SHAPES: [([usize; 4], [usize; 4]); 2] = [([2, 5, 5, 7], [2, 3, 5, 7]), ([1, 4, 7, 3], [1, 4, 7, 3])];

type RelationOp<'a> = dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + 'a;

/// One op against the CPU reference `R` for its configuration, on every shape and dtype.
pub fn check_relation<R: PairReference>(
    device: &Device,
    tag: &str,
    config: R::Config,
    op: &RelationOp<'_>,
) -> TestResult {
    let cpu = R::new(config).or_msg("cpu")?;
    for (k, (s_dims, t_dims)) in SHAPES.iter().enumerate() {
        for dtype in dtypes(device) {
            let tag = format!("{tag} {s_dims:?} vs {t_dims:?} {dtype:?}");
            let student = Var::from_tensor(&features(s_dims, 30 + k as u64, dtype, device)?).or_msg("var")?;
            let teacher = features(t_dims, 40 + k as u64, dtype, device)?;
            let loss = op(student.as_tensor(), &teacher).or_msg(&tag)?;
            let grads = loss.affine(UPSTREAM, 0.0).and_then(|l| l.backward()).or_msg("backward")?;
            let (s_host, t_host) = (host(student.as_tensor())?, host(&teacher)?);
            let want = cpu.gradients(view4(&s_host), view4(&t_host), 1.0).or_msg("cpu")?;
            let want_loss = Tensor::new(want.loss as f32, device).or_msg("loss")?;
            compare(&format!("{tag} loss"), &loss, &want_loss, dtype, OutputKind::Loss)?;
            let got = grads.get(student.as_tensor()).ok_or(format!("{tag}: no gradient for the student"))?;
            let want_grad = expected(&want.grad_student, dtype, device)?;
            compare(&format!("{tag} d/d student"), got, &want_grad, dtype, OutputKind::Tensor)?;
        }
    }
    Ok(())
}

/// A relation op's misuse (student `[2, 3, 4, 5]`, teacher `[2, 2, 4, 5]`): teachers of another plane, batch
/// or dtype, a student of rank 3 or of integers: an error whose message says what to fix.
pub fn check_relation_errors(device: &Device, name: &str, op: &RelationOp<'_>) -> TestResult {
    let f = |shape: &[usize], seed| features(shape, seed, DType::F32, device);
    let (s, t) = (f(&[2, 3, 4, 5], 1)?, f(&[2, 2, 4, 5], 2)?);
    let m = message(op(&s, &f(&[2, 2, 5, 4], 2)?), &format!("{name} teacher of another H x W"))?;
    expect_in(&m, "N, H and W", &format!("{name} teacher of another H x W"))?;
    message(op(&s, &f(&[3, 2, 4, 5], 2)?), &format!("{name} teacher of another batch"))?;
    message(op(&s.flatten_from(2).or_msg("rank 3")?, &t), &format!("{name} student of rank 3"))?;
    let m = message(op(&s, &t.to_dtype(DType::F16).or_msg("f16")?), &format!("{name} teacher of another dtype"))?;
    expect_in(&m, "teacher", &format!("{name} teacher of another dtype"))?;
    message(op(&s.to_dtype(DType::U32).or_msg("u32")?, &t), &format!("{name} integer student"))?;
    Ok(())
}

/// Strided (transposed) and offset (narrowed) inputs give the gradients of the same values laid out
/// contiguously, and the gradient reaches the original tensors in their own layout.
pub fn check_layouts(device: &Device) -> TestResult {
    let cwd = Cwd::new(CwdConfig::default()).or_msg("Cwd::new")?;
    let kd = PixelKd::new(PixelKdConfig::default()).or_msg("PixelKd::new")?;
    let [n, c, h, w] = SHAPE;
    let mut failures = Vec::new();
    for dtype in DTYPES {
        let what = format!("layouts {dtype:?}");
        let step = |s: &Tensor, t: &Tensor| -> candle_core::Result<Tensor> { cwd.loss(s, t)? + kd.loss(s, t)? };
        // Contiguous baseline.
        let s = Var::from_tensor(&logits(&SHAPE, 11, device).to_dtype(dtype).or_msg(&what)?).or_msg(&what)?;
        let t = logits(&SHAPE, 12, device).to_dtype(dtype).or_msg(&what)?;
        let base = step(s.as_tensor(), &t).or_msg(&what)?;
        let base_grad = base.backward().or_msg(&what)?.get(s.as_tensor()).cloned().ok_or("no grad")?;

        // Strided: the student stored as [N, H, C, W] and transposed to [N, C, H, W].
        let stored = Var::from_tensor(&s.as_tensor().transpose(1, 2).and_then(|x| x.contiguous()).or_msg(&what)?)
            .or_msg(&what)?;
        let view = stored.as_tensor().transpose(1, 2).or_msg(&what)?;
        if view.is_contiguous() {
            failures.push(format!("{what}: the transposed view is contiguous; the test tests nothing"));
        }
        let loss =
            step(&view, &t.transpose(2, 3).and_then(|x| x.contiguous()).and_then(|x| x.transpose(2, 3)).or_msg(&what)?)
                .or_msg(&what)?;
        let grad = loss.backward().or_msg(&what)?.get(stored.as_tensor()).cloned().ok_or("no grad (strided)")?;
        failures.extend(compare(&format!("{what} strided loss"), &loss, &base, dtype, OutputKind::Loss).err());
        let grad = grad.transpose(1, 2).or_msg(&what)?;
        failures.extend(compare(&format!("{what} strided grad"), &grad, &base_grad, dtype, OutputKind::Tensor).err());

        // Offset: the student is the second half of a [2N, C, H, W] tensor (contiguous, start offset > 0).
        let other = logits(&SHAPE, 13, device).to_dtype(dtype).or_msg(&what)?;
        let both = Var::from_tensor(&Tensor::cat(&[&other, s.as_tensor()], 0).or_msg(&what)?).or_msg(&what)?;
        let half = both.as_tensor().narrow(0, n, n).or_msg(&what)?;
        if !half.is_contiguous() || half.layout().start_offset() == 0 {
            failures.push(format!("{what}: the narrowed view is not an offset contiguous view"));
        }
        let t_both = Tensor::cat(&[&t, &other], 0).or_msg(&what)?;
        let t_half = t_both.narrow(0, 0, n).or_msg(&what)?;
        let loss = step(&half, &t_half).or_msg(&what)?;
        let grad = loss.backward().or_msg(&what)?.get(both.as_tensor()).cloned().ok_or("no grad (offset)")?;
        failures.extend(compare(&format!("{what} offset loss"), &loss, &base, dtype, OutputKind::Loss).err());
        let (first, second) = (grad.narrow(0, 0, n).or_msg(&what)?, grad.narrow(0, n, n).or_msg(&what)?);
        failures.extend(compare(&format!("{what} offset grad"), &second, &base_grad, dtype, OutputKind::Tensor).err());
        let untouched = first.abs().and_then(|x| x.to_dtype(DType::F32)).and_then(|x| x.max_all()).or_msg(&what)?;
        if scalar(&untouched)? != 0.0 {
            failures.push(format!("{what}: gradient leaked into the other half of the storage"));
        }
        let _ = (c, h, w);
    }
    verdict(failures)
}

/// Misuse gives an error whose message says what to fix, never a panic.
pub fn check_errors(device: &Device) -> TestResult {
    let cwd = Cwd::new(CwdConfig::default()).or_msg("Cwd::new")?;
    let s = logits(&SHAPE, 1, device);
    let mut failures = Vec::new();
    let mut expect = |what: &str, r: candle_core::Result<Tensor>, needle: &str| match r {
        Ok(_) => failures.push(format!("{what}: accepted")),
        Err(e) if e.to_string().contains(needle) => {}
        Err(e) => failures.push(format!("{what}: error {e:?} does not mention {needle:?}")),
    };
    let f64s = s.to_dtype(DType::F64).or_msg("f64")?;
    if !device.is_cpu() {
        // The CPU takes f64 (checked in every family's test); the kernels do not.
        expect("f64 input on the GPU", cwd.loss(&f64s, &f64s), "unsupported dtype");
    }
    expect("mixed dtypes", cwd.loss(&s, &s.to_dtype(DType::F16).or_msg("f16")?), "teacher");
    let other = logits(&[2, 5, 6, 8], 2, device);
    expect("shape mismatch", cwd.loss(&s, &other), "teacher");
    let rank3 = logits(&[2, 5, 6], 2, device);
    expect("rank 3", cwd.loss(&rank3, &rank3), "rank-4");
    expect("integer input", cwd.loss(&s.to_dtype(DType::U32).or_msg("u32")?, &s), "unsupported dtype");
    let bad_tau = Cwd::new(CwdConfig { tau: 0.0, ..CwdConfig::default() });
    if !matches!(&bad_tau, Err(e) if e.to_string().contains("tau")) {
        expect("tau 0", Err(candle_core::Error::Msg("tau 0 accepted or unexplained".into())), "never");
    }
    verdict(failures)
}

// ---------------------------------------------------------------------------------------------------------
// The training example (`examples/train_candle.rs`): the loss falls, and step 0 is the formula.

/// Step 0's five losses from the references of `candle_support`, for the example's initial student.
fn step0_reference(device: &Device) -> candle_core::Result<[f64; 5]> {
    let (cwd, kd, icsd, cwt, semckd) = train::configs();
    let run = train::setup(device)?;
    let (features, logits) = run.student.forward(&run.input)?;
    let t = &run.teacher_logits;
    let [w1, b1, w2, b2] = &run.mlp;
    let params = [w1.as_tensor(), b1.as_tensor(), w2.as_tensor(), b2.as_tensor()];
    let value = |x: candle_core::Tensor| x.to_dtype(DType::F64)?.to_scalar::<f64>();
    Ok([
        value(cwd::cwd_reference(&logits, t, &cwd)?)?,
        value(pixel_kd::pixel_kd_reference(&logits, t, &kd)?)?,
        value(icsd::icsd_reference(&logits, t, &icsd)?)?,
        value(cwt::cwt_reference(&features, &run.teacher_features, params, &cwt)?)?,
        value(semckd::semckd_reference(&train::SemckdStep::new(&run, &features, &logits)?.view(), &semckd)?)?,
    ])
}

pub fn check_training(device: &Device) -> Result<(), String> {
    let steps = 30;
    let log =
        train::train(device, DType::F32, steps, train::LEARNING_RATE).map_err(|e| format!("training failed: {e}"))?;
    let first = &log[0];
    let got = [first.cwd, first.pixel_kd, first.icsd, first.cwt, first.semckd];
    let want = step0_reference(device).map_err(|e| format!("reference failed: {e}"))?;
    for (name, (g, w)) in ["cwd", "pixel kd", "icsd", "cwt", "semckd"].iter().zip(got.iter().zip(want)) {
        let c = Comparison::of([*g], [w]);
        if !c.passes(tolerance(kd_kernels::DType::F32, OutputKind::Loss)) || w <= 0.0 {
            return Err(format!("step 0 {name}: op {g}, candle ops {w} (max_rel_err {:e})", c.max_rel_err));
        }
    }
    let total0 = got.iter().sum::<f64>();
    if (first.total - total0).abs() > 1e-5 * total0 {
        return Err(format!("step 0 total {} is not the sum of its terms {total0}", first.total));
    }
    let last = log[steps - 1].total;
    // A real decrease, not noise: at least 20% over the run, and the last steps below the first ones.
    // NaN fails too.
    if last.partial_cmp(&(0.8 * first.total)) != Some(std::cmp::Ordering::Less) {
        return Err(format!("the loss did not fall: {} -> {last}", first.total));
    }
    let head: f64 = log[..5].iter().map(|s| s.total).sum();
    let tail: f64 = log[steps - 5..].iter().map(|s| s.total).sum();
    if tail.partial_cmp(&head) != Some(std::cmp::Ordering::Less) {
        return Err(format!("the last five steps ({tail}) are not below the first five ({head})"));
    }
    Ok(())
}

candle_tests! {
    strided_and_offset_inputs_are_handled => check_layouts,
    misuse_is_an_error_that_says_what_to_fix => check_errors,
}
