//! IFVD (features and integer labels) against the crate's f64 CPU reference ([`IfvdCpu`]) on the inputs'
//! values: the loss, and the gradient that candle's backward pass writes (scaled by an upstream factor), every
//! label type, and its misuse. The same bodies run on candle's CPU device
//! (`tests/candle_ops.rs`) and on a GPU (`tests/candle_cuda.rs`).

use candle_core::{DType, Device, Tensor, Var};
use kd_kernels::ifvd::{IfvdConfig, IfvdCpu};
use kd_kernels::tolerance::OutputKind;
use kd_kernels_candle::Ifvd;
use ndarray::ArrayView3;

use super::{compare, dtypes, expect_in, expected, features, host, message, view4, OrMsg, TestResult, UPSTREAM};

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

pub fn check_ifvd_errors(device: &Device) -> TestResult {
    let f = |shape: &[usize], seed| features(shape, seed, DType::F32, device);
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

candle_tests! {
    ifvd_matches_the_cpu_reference_for_every_label_type => check_ifvd,
    ifvd_misuse_is_an_error_that_says_what_to_fix => check_ifvd_errors,
}
