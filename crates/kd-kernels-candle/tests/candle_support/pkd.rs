//! PKD (a list of levels) against the crate's f64 CPU reference ([`PkdCpu`]) on the inputs' values: the loss,
//! and the gradients that candle's backward pass writes (scaled by an upstream factor, so the fused gradients
//! are seen to take it), and its misuse. The same bodies run on candle's CPU device
//! (`tests/candle_ops.rs`) and on a GPU (`tests/candle_cuda.rs`).

use candle_core::{DType, Device, Tensor, Var};
use kd_kernels::pkd::{PkdConfig, PkdCpu};
use kd_kernels::tolerance::OutputKind;
use kd_kernels_candle::Pkd;
use ndarray::ArrayView4;

use super::{compare, dtypes, expect_in, expected, features, host, message, view4, OrMsg, TestResult, UPSTREAM};

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

pub fn check_pkd_errors(device: &Device) -> TestResult {
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
    Ok(())
}

candle_tests! {
    pkd_matches_the_cpu_reference_over_every_level => check_pkd,
    pkd_misuse_is_an_error_that_says_what_to_fix => check_pkd_errors,
}
