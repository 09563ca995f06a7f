//! Shared by the candle tests (`tests/candle_ops.rs` on the CPU, `tests/candle_cuda.rs` on a GPU): each
//! loss written in candle's own tensor ops (the reference whose autograd the ops must match), and checks
//! that take the device, so the CPU and the GPU run the same bodies.
//!
//! Every comparison uses `kd_kernels::tolerance`: the loss against the 1e-4 row, gradients against the
//! row of their dtype (the ops write them in the input dtype, so a rounding to it is expected).
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use kd_kernels::cwd::CwdConfig;
use kd_kernels::cwt::{CwtConfig, CwtNormalize, CwtShapes};
use kd_kernels::dist::DistConfig;
use kd_kernels::icsd::{AicsdConfig, IcsdConfig, IcsdVariant};
use kd_kernels::pixel_kd::{PixelKdConfig, Reduction};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels_candle::{Aicsd, Cwd, Cwt, Dist, Icsd, PixelKd};

pub mod pkd_ifvd;
pub mod semckd;
pub mod skd_cirkd;

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
// The losses in candle's own ops (fp32), straight from docs/losses.md.

/// `log_softmax` along `dim` as `z - LSE(z)`.
pub fn log_softmax(z: &Tensor, dim: usize) -> candle_core::Result<Tensor> {
    let max = z.max_keepdim(dim)?.detach();
    let shifted = z.broadcast_sub(&max)?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(dim)?.log()?)
}

/// CWD, §1.3: rows (n, c), a softmax over H*W of x / tau, `w tau^2 / (N C) sum_r KL(pT || pS)`.
pub fn cwd_reference(s: &Tensor, t: &Tensor, cfg: &CwdConfig) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = s.dims4()?;
    let rows = |x: &Tensor| x.to_dtype(DType::F32)?.reshape((n * c, h * w))?.affine(1.0 / cfg.tau, 0.0);
    let log_ps = log_softmax(&rows(s)?, 1)?;
    let log_pt = log_softmax(&rows(t)?, 1)?;
    let kl = (log_pt.exp()? * (log_pt - log_ps)?)?.sum_all()?;
    kl.affine(cfg.loss_weight * cfg.tau * cfg.tau / (n * c) as f64, 0.0)
}

/// Pixel KD, §2.2: a softmax over C of x / tau per pixel, the summed KL over the reduction's divisor.
pub fn pixel_kd_reference(s: &Tensor, t: &Tensor, cfg: &PixelKdConfig) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = s.dims4()?;
    let z = |x: &Tensor| x.to_dtype(DType::F32)?.affine(1.0 / cfg.tau, 0.0);
    let log_ps = log_softmax(&z(s)?, 1)?;
    let log_pt = log_softmax(&z(t)?, 1)?;
    let kl = (log_pt.exp()? * (log_pt - log_ps)?)?.sum_all()?;
    let divisor = match cfg.reduction {
        Reduction::Mean => (n * c * h * w) as f64,
        Reduction::BatchMean => n as f64,
        Reduction::Sum => 1.0,
        Reduction::PixelMean => (n * h * w) as f64,
    };
    let tau2 = if cfg.scale_tau2 { cfg.tau * cfg.tau } else { 1.0 };
    kl.affine(cfg.loss_weight * tau2 / divisor, 0.0)
}

/// ICSD, official variant, §3.4/§3.5: softmax along H, `M = A_max(i,j) - G`, rows L2-normalised, the mean
/// squared difference over the C^2 entries divided by B.
pub fn icsd_reference(s: &Tensor, t: &Tensor, cfg: &IcsdConfig) -> candle_core::Result<Tensor> {
    assert_eq!(cfg.variant, IcsdVariant::Official, "the reference covers the official variant");
    let (b, c, _, _) = s.dims4()?;
    let device = s.device();
    // upper[i][j] = 1 where j >= i: there A_max(i,j) = A_j, else A_i.
    let upper: Vec<u8> = (0..c * c).map(|k| u8::from(k % c >= k / c)).collect();
    let upper = Tensor::from_vec(upper, (c, c), device)?;
    let matrix = |x: &Tensor| -> candle_core::Result<Tensor> {
        let log_p = log_softmax(&x.to_dtype(DType::F32)?.affine(1.0 / cfg.tau, 0.0)?, 2)?;
        let p = log_p.exp()?;
        let a = (&p * &log_p)?.sum((0, 2, 3))?.affine(1.0 / b as f64, 0.0)?; // [C]
        let flat = p.transpose(0, 1)?.flatten_from(1)?; // [C, B*H*W]
        let g = flat.matmul(&flat.t()?)?.affine(1.0 / b as f64, 0.0)?;
        let a_j = a.reshape((1, c))?.broadcast_as((c, c))?;
        let a_i = a.reshape((c, 1))?.broadcast_as((c, c))?;
        let m = (upper.where_cond(&a_j, &a_i)? - g)?;
        let norm = m.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        m.broadcast_div(&norm)
    };
    let diff = (matrix(s)? - matrix(t)?)?;
    diff.sqr()?.sum_all()?.affine(cfg.loss_weight / (c * c * b) as f64, 0.0)
}

/// DIST, §8: Pearson correlations of the class distributions across the classes of each pixel and across
/// the pixels of each class (eps 1e-8 added to the product of the norms).
pub fn dist_reference(s: &Tensor, t: &Tensor, cfg: &DistConfig) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = s.dims4()?;
    // Rows of C probabilities, one per pixel.
    let probs = |x: &Tensor| -> candle_core::Result<Tensor> {
        let p = log_softmax(&x.to_dtype(DType::F32)?.affine(1.0 / cfg.tau, 0.0)?, 1)?.exp()?;
        p.permute((0, 2, 3, 1))?.reshape((n * h * w, c))
    };
    // 1 - the mean over rows of the correlation of a's and b's rows.
    let one_minus_pearson = |a: &Tensor, b: &Tensor| -> candle_core::Result<Tensor> {
        let ac = a.broadcast_sub(&a.mean_keepdim(1)?)?;
        let bc = b.broadcast_sub(&b.mean_keepdim(1)?)?;
        let dot = (&ac * &bc)?.sum(1)?;
        let den = (ac.sqr()?.sum(1)?.sqrt()? * bc.sqr()?.sum(1)?.sqrt()?)?.affine(1.0, 1e-8)?;
        (dot / den)?.mean_all()?.affine(-1.0, 1.0)
    };
    let (ps, pt) = (probs(s)?, probs(t)?);
    let inter = one_minus_pearson(&ps, &pt)?;
    let intra = one_minus_pearson(&ps.t()?.contiguous()?, &pt.t()?.contiguous()?)?;
    let scale = cfg.loss_weight * cfg.tau * cfg.tau;
    inter.affine(scale * cfg.beta, 0.0)? + intra.affine(scale * cfg.gamma, 0.0)?
}

/// CWT, §5.3: `Y = W2 ReLU(W1 x + b1) + b2` per pixel, `w sum (Y - F_t)^2 / D`.
pub fn cwt_reference(
    s: &Tensor,
    t: &Tensor,
    [w1, b1, w2, b2]: [&Tensor; 4],
    cfg: &CwtConfig,
) -> candle_core::Result<Tensor> {
    let (n, cs, h, w) = s.dims4()?;
    let ct = t.dim(1)?;
    let x = s.to_dtype(DType::F32)?.permute((0, 2, 3, 1))?.reshape((n * h * w, cs))?;
    let hidden = x.matmul(&w1.t()?)?.broadcast_add(b1)?.relu()?;
    let y = hidden.matmul(&w2.t()?)?.broadcast_add(b2)?;
    let target = t.to_dtype(DType::F32)?.permute((0, 2, 3, 1))?.reshape((n * h * w, ct))?;
    let divisor = match cfg.normalize {
        CwtNormalize::Batch => n as f64,
        CwtNormalize::Mean => (n * ct * h * w) as f64,
    };
    (y - target)?.sqr()?.sum_all()?.affine(cfg.loss_weight / divisor, 0.0)
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

pub fn check_cwd(device: &Device) -> TestResult {
    let cfg = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: false };
    let cwd = Cwd::new(cfg).or_msg("Cwd::new")?;
    check_pair(device, "cwd", false, &|s, t| cwd.loss(s, t), &|s, t| cwd_reference(s, t, &cfg))?;
    let cfg = CwdConfig { tau: 2.0, loss_weight: 5.0, teacher_grad: true };
    let cwd = Cwd::new(cfg).or_msg("Cwd::new")?;
    check_pair(device, "cwd teacher_grad", true, &|s, t| cwd.loss(s, t), &|s, t| cwd_reference(s, t, &cfg))
}

pub fn check_pixel_kd(device: &Device) -> TestResult {
    let mut failures = Vec::new();
    for (reduction, scale_tau2) in
        [(Reduction::Mean, false), (Reduction::BatchMean, true), (Reduction::PixelMean, false)]
    {
        let cfg = PixelKdConfig { tau: 2.0, loss_weight: 10.0, reduction, scale_tau2 };
        let kd = PixelKd::new(cfg).or_msg("PixelKd::new")?;
        let name = format!("pixel_kd {}", reduction.name());
        if let Err(e) = check_pair(device, &name, false, &|s, t| kd.loss(s, t), &|s, t| pixel_kd_reference(s, t, &cfg))
        {
            failures.push(e);
        }
    }
    verdict(failures)
}

pub fn check_icsd(device: &Device) -> TestResult {
    let cfg = IcsdConfig::default();
    let icsd = Icsd::new(cfg).or_msg("Icsd::new")?;
    check_pair(device, "icsd", false, &|s, t| icsd.loss(s, t), &|s, t| icsd_reference(s, t, &cfg))
}

pub fn check_dist(device: &Device) -> TestResult {
    let cfg = DistConfig { tau: 2.0, beta: 1.5, gamma: 0.5, loss_weight: 3.0 };
    let dist = Dist::new(cfg).or_msg("Dist::new")?;
    check_pair(device, "dist", false, &|s, t| dist.loss(s, t), &|s, t| dist_reference(s, t, &cfg))
}

pub fn check_aicsd(device: &Device) -> TestResult {
    let cfg = AicsdConfig::default();
    let aicsd = Aicsd::new(cfg).or_msg("Aicsd::new")?;
    let epoch = 30.0;
    let alpha = cfg.alpha(epoch).or_msg("alpha")?;
    check_pair(device, "aicsd", false, &|s, t| aicsd.loss(s, t, epoch), &|s, t| {
        icsd_reference(s, t, &cfg.icsd)?.affine(alpha, 0.0)?
            + pixel_kd_reference(s, t, &cfg.kd)?.affine(1.0 - alpha, 0.0)?
    })
}

/// CWT: loss, the student's gradient and the four parameters' gradients, every dtype, with the weights
/// given as matrices and as 1x1 convolution weights.
pub fn check_cwt(device: &Device) -> TestResult {
    let (n, cs, ch, ct, h, w) = (2, 5, 6, 4, 3, 7);
    let shapes = CwtShapes::new(cs, ct).with_hidden(ch);
    let mut failures = Vec::new();
    for normalize in [CwtNormalize::Batch, CwtNormalize::Mean] {
        let cfg = CwtConfig { loss_weight: 0.5, normalize };
        let cwt = Cwt::new(cfg, shapes).or_msg("Cwt::new")?;
        for dtype in dtypes(device) {
            let what = format!("cwt {normalize:?} {dtype:?}");
            let s =
                Var::from_tensor(&logits(&[n, cs, h, w], 3, device).to_dtype(dtype).or_msg(&what)?).or_msg(&what)?;
            let t = logits(&[n, ct, h, w], 4, device).to_dtype(dtype).or_msg(&what)?;
            let param = |shape: &[usize], seed| Var::from_tensor(&logits(shape, seed, device).affine(0.3, 0.0)?);
            let w1 = param(&[ch, cs, 1, 1], 5).or_msg(&what)?;
            let b1 = param(&[ch], 6).or_msg(&what)?;
            let w2 = param(&[ct, ch], 7).or_msg(&what)?;
            let b2 = param(&[ct], 8).or_msg(&what)?;
            let vars = [&w1, &b1, &w2, &b2];
            let got = cwt
                .loss(s.as_tensor(), &t, w1.as_tensor(), b1.as_tensor(), w2.as_tensor(), b2.as_tensor())
                .or_msg(&what)?;
            let w1m = w1.as_tensor().reshape((ch, cs)).or_msg(&what)?;
            let want = cwt_reference(s.as_tensor(), &t, [&w1m, b1.as_tensor(), w2.as_tensor(), b2.as_tensor()], &cfg)
                .or_msg(&what)?;
            if let Err(e) = compare(&format!("{what} loss"), &got, &want, dtype, OutputKind::Loss) {
                failures.push(e);
            }
            let g_got = got.affine(2.0, 0.0).and_then(|l| l.backward()).or_msg(&what)?;
            let g_want = want.affine(2.0, 0.0).and_then(|l| l.backward()).or_msg(&what)?;
            let pairs = [("student", s.as_tensor(), dtype)].into_iter().chain(
                ["w1", "b1", "w2", "b2"].into_iter().zip(vars).map(|(name, v)| (name, v.as_tensor(), DType::F32)),
            );
            for (name, var, dt) in pairs {
                match (g_got.get(var), g_want.get(var)) {
                    (Some(a), Some(b)) => {
                        if let Err(e) = compare(&format!("{what} grad {name}"), a, b, dt, OutputKind::Tensor) {
                            failures.push(e);
                        }
                    }
                    _ => failures.push(format!("{what}: no gradient for {name}")),
                }
            }
        }
    }
    verdict(failures)
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
    let cwt = Cwt::new(CwtConfig::default(), CwtShapes::new(5, 4)).or_msg("Cwt::new")?;
    let t = logits(&[2, 4, 6, 7], 2, device);
    let w1 = logits(&[4, 5], 3, device);
    let b = logits(&[4], 3, device);
    let w2 = logits(&[4, 4], 3, device);
    expect("cwt bias shape", cwt.loss(&s, &t, &w1, &w1, &w2, &b), "mlp.linear1.bias");
    let w1_16 = w1.to_dtype(DType::F16).or_msg("f16")?;
    expect("cwt f16 weight", cwt.loss(&s, &t, &w1_16, &b, &w2, &b), "F32");
    expect("cwt teacher channels", cwt.loss(&s, &s, &w1, &b, &w2, &b), "teacher");
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
        value(cwd_reference(&logits, t, &cwd)?)?,
        value(pixel_kd_reference(&logits, t, &kd)?)?,
        value(icsd_reference(&logits, t, &icsd)?)?,
        value(cwt_reference(&features, &run.teacher_features, params, &cwt)?)?,
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
