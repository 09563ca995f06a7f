//! CWT: the gradients into the student features and every MLP parameter, and its typed errors.

#[path = "../burn_support/cwt.rs"]
mod cwt_support;

use super::*;
use cwt_support::{cwt_outputs, CWT_OUTPUTS};
use kd_kernels::cwt::{CwtConfig, CwtNormalize};
use kd_kernels_burn::{cwt_loss, CwtMlp};

/// CWT: the gradients into the student features and every MLP parameter, against burn's autograd.
#[test]
fn cwt_matches_burn_autograd() {
    let device = ndarray_autodiff();
    for (n, cs, ch, ct, h, w, normalize) in [
        (2, 5, 4, 3, 3, 4, CwtNormalize::Batch),
        (1, 3, 7, 6, 5, 2, CwtNormalize::Mean),
        (3, 1, 1, 1, 1, 1, CwtNormalize::Batch),
    ] {
        let config = CwtConfig { loss_weight: 0.3, normalize };
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>, &CwtMlp) -> Tensor<1>| {
            let student = tensor(logits([n, cs, h, w], 11, 2.0), [n, cs, h, w], &device, DType::F32).require_grad();
            let teacher = tensor(logits([n, ct, h, w], 12, 2.0), [n, ct, h, w], &device, DType::F32);
            let mlp = CwtMlp {
                w1: matrix(ch, cs, 13, &device).require_grad(),
                b1: vector(ch, 14, &device).require_grad(),
                w2: matrix(ct, ch, 15, &device).require_grad(),
                b2: vector(ct, 16, &device).require_grad(),
            };
            cwt_outputs(f(student.clone(), teacher, &mlp), &student, &mlp)
        };
        let ours = run(&|s, t, mlp| cwt_loss(s, t, mlp, &config).expect("valid input"));
        let theirs = run(&|s, t, mlp| reference::cwt_loss(s, t, mlp, &config));
        for ((name, got), want) in CWT_OUTPUTS.into_iter().zip(ours).zip(theirs) {
            let kind = if name == "loss" { OutputKind::Loss } else { OutputKind::Tensor };
            assert_close(
                &format!("cwt {name} [{n},{cs},{h},{w}] ch {ch} ct {ct}"),
                got,
                want,
                tolerance_for(DType::F32, kind),
            );
        }
    }
}

#[test]
fn cwt_bad_inputs_are_typed_errors() {
    let device = ndarray_autodiff();
    let s = tensor(logits([2, 3, 4, 4], 1, 1.0), [2, 3, 4, 4], &device, DType::F32);
    let t = tensor(logits([2, 5, 4, 4], 2, 1.0), [2, 5, 4, 4], &device, DType::F32);
    let mlp = CwtMlp {
        w1: matrix(4, 3, 3, &device),
        b1: vector(4, 4, &device),
        w2: matrix(5, 4, 5, &device),
        b2: vector(5, 6, &device),
    };
    let config = CwtConfig::default();
    assert!(cwt_loss(s.clone(), t.clone(), &mlp, &config).is_ok());
    let wrong_bias = CwtMlp { b1: vector(3, 4, &device), ..mlp.clone() };
    assert!(matches!(
        cwt_loss(s.clone(), t.clone(), &wrong_bias, &config),
        Err(KdError::ShapeMismatch { what: "mlp.linear1.bias", .. })
    ));
    let wrong_w2 = CwtMlp { w2: matrix(5, 3, 5, &device), ..mlp.clone() };
    assert!(matches!(
        cwt_loss(s.clone(), t.clone(), &wrong_w2, &config),
        Err(KdError::ShapeMismatch { what: "mlp.linear2.weight", .. })
    ));
    let narrow_teacher = tensor(logits([2, 4, 4, 4], 2, 1.0), [2, 4, 4, 4], &device, DType::F32);
    assert!(matches!(
        cwt_loss(s.clone(), narrow_teacher, &mlp, &config),
        Err(KdError::ShapeMismatch { what: "teacher", .. })
    ));
    let s64 = s.clone().cast(DType::F64);
    assert!(matches!(cwt_loss(s64, t.clone(), &mlp, &config), Err(KdError::DTypeMismatch { .. })));
    let err = cwt_loss(s, t.require_grad(), &mlp, &config).unwrap_err();
    assert!(matches!(err, KdError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("detach"), "{err}");
}
