//! PKD (a list of levels) and IFVD (features and integer labels) against the crate's f64 CPU references
//! ([`PkdCpu`], [`IfvdCpu`]) on the inputs' values: the loss, and the gradients that candle's backward pass
//! writes (scaled by an upstream factor, so the fused gradients are seen to take it). The same bodies run
//! on candle's CPU device (`tests/candle_ops.rs`) and on a GPU (`tests/candle_cuda.rs`).

use candle_core::{DType, Device, Tensor, Var};
use kd_kernels::ifvd::{IfvdConfig, IfvdCpu};
use kd_kernels::pkd::{PkdConfig, PkdCpu};
use kd_kernels::tolerance::OutputKind;
use kd_kernels_candle::{Ifvd, Pkd};
use ndarray::{ArrayView3, ArrayView4};

use super::{compare, dtypes, logits, OrMsg, TestResult};

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

/// Three levels of odd, different shapes (with two values per channel, the fewest PKD takes, the
/// standardised values are +-1/sqrt(2) whatever the input and the gradient is 0: not a level to compare).
const LEVELS: [[usize; 4]; 3] = [[2, 3, 5, 7], [2, 5, 3, 3], [2, 1, 1, 3]];

pub fn check_pkd(device: &Device) -> TestResult {
    for (i, dtype) in dtypes(device).into_iter().enumerate() {
        let config = PkdConfig { loss_weight: 1.0 + i as f64 };
        let tag = format!("pkd {dtype:?}");
        let student = LEVELS
            .iter()
            .enumerate()
            .map(|(l, s)| features(s, 10 + l as u64, dtype, device).and_then(|t| Var::from_tensor(&t).or_msg("var")))
            .collect::<Result<Vec<_>, _>>()?;
        let teacher = LEVELS
            .iter()
            .enumerate()
            .map(|(l, s)| features(s, 20 + l as u64, dtype, device))
            .collect::<Result<Vec<_>, _>>()?;
        let inputs: Vec<Tensor> = student.iter().map(|v| v.as_tensor().clone()).collect();
        let loss = Pkd::new(config).or_msg("new")?.loss(&inputs, &teacher).or_msg(&tag)?;
        let grads = loss.affine(UPSTREAM, 0.0).and_then(|l| l.backward()).or_msg("backward")?;

        let s_host = inputs.iter().map(host).collect::<Result<Vec<_>, _>>()?;
        let t_host = teacher.iter().map(host).collect::<Result<Vec<_>, _>>()?;
        fn views(side: &[(Vec<f64>, Vec<usize>)]) -> Vec<ArrayView4<'_, f64>> {
            side.iter().map(view4).collect()
        }
        let want =
            PkdCpu::new(config).or_msg("cpu")?.forward_backward(&views(&s_host), &views(&t_host)).or_msg("cpu")?;
        let want_loss = Tensor::new(want.loss as f32, device).or_msg("loss")?;
        compare(&format!("{tag} loss"), &loss, &want_loss, dtype, OutputKind::Loss)?;
        for (l, (s, g)) in student.iter().zip(&want.grad_student).enumerate() {
            let got = grads.get(s.as_tensor()).ok_or(format!("{tag}: no gradient for student level {l}"))?;
            compare(&format!("{tag} d/d student[{l}]"), got, &expected(g, dtype, device)?, dtype, OutputKind::Tensor)?;
        }
        if grads.get(&teacher[0]).is_some() {
            return Err(format!("{tag}: the teacher got a gradient"));
        }
    }
    Ok(())
}

/// Labels `[N, Hl, Wl]` of classes 0..3 and 255 (ignored), in every label type candle and the kernels share.
fn labels(dims: [usize; 3], dtype: DType, device: &Device) -> Result<(Tensor, Vec<i64>), String> {
    let values: Vec<i64> =
        (0..dims.iter().product::<usize>()).map(|k| [0, 2, 255, 1, 2, 0, 255][(k * 5 + k / 3) % 7]).collect();
    let t = Tensor::from_vec(values.clone(), dims.to_vec(), device).and_then(|t| t.to_dtype(dtype)).or_msg("labels")?;
    Ok((t, values))
}

pub fn check_ifvd(device: &Device) -> TestResult {
    let label_types = [DType::I64, DType::U8, DType::I32];
    for (i, dtype) in dtypes(device).into_iter().enumerate() {
        // Four classes of which 3 never appears; the labels at another resolution than the features.
        let config = IfvdConfig { num_classes: 4, loss_weight: 1.0 + 9.0 * i as f64 };
        let label_type = label_types[i % label_types.len()];
        let tag = format!("ifvd {dtype:?}, labels {label_type:?}");
        let label_dims = [2, 9, 13];
        let (y, y_values) = labels(label_dims, label_type, device)?;
        let student = Var::from_tensor(&features(&[2, 4, 5, 7], 1, dtype, device)?).or_msg("var")?;
        let teacher = features(&[2, 3, 5, 7], 2, dtype, device)?;
        let loss = Ifvd::new(config).or_msg("new")?.loss(student.as_tensor(), &teacher, &y).or_msg(&tag)?;
        let grads = loss.affine(UPSTREAM, 0.0).and_then(|l| l.backward()).or_msg("backward")?;

        let (s_host, t_host) = (host(student.as_tensor())?, host(&teacher)?);
        let y_view = ArrayView3::from_shape(label_dims, &y_values).or_msg("labels view")?;
        let want = IfvdCpu::new(config)
            .or_msg("cpu")?
            .forward_backward(view4(&s_host), view4(&t_host), y_view)
            .or_msg("cpu")?;
        let want_loss = Tensor::new(want.loss as f32, device).or_msg("loss")?;
        compare(&format!("{tag} loss"), &loss, &want_loss, dtype, OutputKind::Loss)?;
        let got = grads.get(student.as_tensor()).ok_or(format!("{tag}: no gradient for the student"))?;
        compare(
            &format!("{tag} d/d student"),
            got,
            &expected(&want.grad_student, dtype, device)?,
            dtype,
            OutputKind::Tensor,
        )?;
    }
    Ok(())
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

pub fn check_pkd_ifvd_errors(device: &Device) -> TestResult {
    let f = |shape: &[usize], seed| features(shape, seed, DType::F32, device);
    let pkd = Pkd::new(PkdConfig::default()).or_msg("new")?;
    let (a, b) = (f(&[2, 3, 4, 5], 1)?, f(&[2, 3, 4, 5], 2)?);
    let m = message(pkd.loss(std::slice::from_ref(&a), &[f(&[2, 3, 5, 4], 2)?]), "pkd level shapes")?;
    expect_in(&m, "resize", "pkd level shapes")?;
    message(pkd.loss(&[], &[]), "pkd without levels")?;
    let one = f(&[1, 2, 1, 1], 3)?;
    let m = message(pkd.loss(std::slice::from_ref(&one), std::slice::from_ref(&one)), "pkd one value per channel")?;
    expect_in(&m, "at least 2", "pkd one value per channel")?;
    let half = b.to_dtype(DType::F16).or_msg("f16")?;
    let m = message(pkd.loss(&[a.clone(), half.clone()], &[b.clone(), half]), "pkd levels of two dtypes")?;
    expect_in(&m, "level", "pkd levels of two dtypes")?;
    message(Pkd::new(PkdConfig { loss_weight: f64::NAN }), "pkd NaN weight")?;

    let ifvd = Ifvd::new(IfvdConfig::new(3)).or_msg("new")?;
    let (s, t) = (f(&[2, 3, 4, 5], 1)?, f(&[2, 2, 4, 5], 2)?);
    let (y, _) = labels([2, 4, 5], DType::I64, device)?;
    let m = message(Ifvd::new(IfvdConfig::new(0)), "ifvd num_classes 0")?;
    expect_in(&m, "num_classes", "ifvd num_classes 0")?;
    let float_labels = y.to_dtype(DType::F32).or_msg("f32 labels")?;
    let m = message(ifvd.loss(&s, &t, &float_labels), "ifvd float labels")?;
    expect_in(&m, "labels", "ifvd float labels")?;
    let flat_labels = y.flatten_from(1).or_msg("rank 2")?;
    message(ifvd.loss(&s, &t, &flat_labels), "ifvd labels of rank 2")?;
    let (y3, _) = labels([3, 4, 5], DType::I64, device)?;
    message(ifvd.loss(&s, &t, &y3), "ifvd labels of another batch")?;
    message(ifvd.loss(&s, &f(&[2, 2, 5, 4], 2)?, &y), "ifvd teacher of another H x W")?;
    message(ifvd.loss(&s, &t.to_dtype(DType::F16).or_msg("f16")?, &y), "ifvd teacher of another dtype")?;
    Ok(())
}
