//! CWT's candle op against CWT written in candle's own ops and their autograd, into every parameter, and
//! its misuse. The same bodies run on candle's CPU device
//! (`tests/candle_ops.rs`) and on a GPU (`tests/candle_cuda.rs`).

use candle_core::{DType, Device, Tensor, Var};
use kd_kernels::cwt::{CwtConfig, CwtNormalize, CwtShapes};
use kd_kernels::tolerance::OutputKind;
use kd_kernels_candle::Cwt;

use super::{compare, dtypes, expect_in, logits, message, verdict, OrMsg, TestResult};

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

/// Misuse of the MLP's parameters gives an error whose message says what to fix, never a panic.
pub fn check_cwt_errors(device: &Device) -> TestResult {
    let cwt = Cwt::new(CwtConfig::default(), CwtShapes::new(5, 4)).or_msg("Cwt::new")?;
    let s = logits(&[2, 5, 6, 7], 1, device);
    let t = logits(&[2, 4, 6, 7], 2, device);
    let w1 = logits(&[4, 5], 3, device);
    let b = logits(&[4], 3, device);
    let w2 = logits(&[4, 4], 3, device);
    let m = message(cwt.loss(&s, &t, &w1, &w1, &w2, &b), "cwt bias shape")?;
    expect_in(&m, "mlp.linear1.bias", "cwt bias shape")?;
    let w1_16 = w1.to_dtype(DType::F16).or_msg("f16")?;
    let m = message(cwt.loss(&s, &t, &w1_16, &b, &w2, &b), "cwt f16 weight")?;
    expect_in(&m, "F32", "cwt f16 weight")?;
    let m = message(cwt.loss(&s, &s, &w1, &b, &w2, &b), "cwt teacher channels")?;
    expect_in(&m, "teacher", "cwt teacher channels")
}

candle_tests! {
    cwt_matches_candle_autograd_into_every_parameter => check_cwt,
    cwt_misuse_is_an_error_that_says_what_to_fix => check_cwt_errors,
}
