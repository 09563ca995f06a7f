//! The (student, teacher) losses (CWD, pixel KD, ICSD, AICSD, DIST) and what every loss shares: the upstream
//! gradient, untracked and strided inputs, typed errors.

use super::*;
use kd_kernels::cwd::CwdConfig;
use kd_kernels::dist::DistConfig;
use kd_kernels::icsd::{AicsdConfig, IcsdConfig, IcsdVariant};
use kd_kernels::pixel_kd::{PixelKdConfig, Reduction};
use kd_kernels_burn::{aicsd_loss, cwd_loss, dist_loss, icsd_loss, pixel_kd_loss};

#[test]
fn cwd_matches_burn_autograd() {
    for (shape, config) in SHAPES.into_iter().zip([
        CwdConfig::default(),
        CwdConfig { tau: 1.0, loss_weight: 5.0, teacher_grad: false },
        CwdConfig { tau: 2.5, loss_weight: 0.5, teacher_grad: false },
    ]) {
        compare_pair(
            ("cwd", shape, 6.0, false),
            |s, t| cwd_loss(s, t, &config).expect("valid input"),
            |s, t| reference::cwd_loss(s, t, &config),
        );
    }
}

#[test]
fn cwd_teacher_gradient_matches_burn_autograd() {
    let config = CwdConfig { tau: 2.0, loss_weight: 3.0, teacher_grad: true };
    compare_pair(
        ("cwd teacher_grad", [2, 3, 5, 4], 4.0, true),
        |s, t| cwd_loss(s, t, &config).expect("valid input"),
        |s, t| reference::cwd_loss(s, t, &config),
    );
}

#[test]
fn pixel_kd_matches_burn_autograd_for_every_reduction() {
    for (i, reduction) in
        [Reduction::Mean, Reduction::BatchMean, Reduction::Sum, Reduction::PixelMean].into_iter().enumerate()
    {
        let config = PixelKdConfig { tau: 1.0 + i as f64, loss_weight: 10.0, reduction, scale_tau2: i % 2 == 1 };
        for shape in SHAPES {
            compare_pair(
                ("pixel_kd", shape, 6.0, false),
                |s, t| pixel_kd_loss(s, t, &config).expect("valid input"),
                |s, t| reference::pixel_kd_loss(s, t, &config),
            );
        }
    }
}

/// The upstream gradient reaches the stored gradients: a weighted sum of both losses and a second use of
/// the student give burn's own gradient.
#[test]
fn combined_losses_scale_by_the_upstream_gradient() {
    let cwd = CwdConfig::default();
    let kd = PixelKdConfig::default();
    compare_pair(
        ("0.25 cwd + 3 kd + sum(s^2)", [2, 4, 3, 5], 3.0, false),
        |s, t| {
            cwd_loss(s.clone(), t.clone(), &cwd).unwrap() * 0.25
                + pixel_kd_loss(s.clone(), t, &kd).unwrap() * 3.0
                + (s.clone() * s).sum()
        },
        |s, t| {
            reference::cwd_loss(s.clone(), t.clone(), &cwd) * 0.25
                + reference::pixel_kd_loss(s.clone(), t, &kd) * 3.0
                + (s.clone() * s).sum()
        },
    );
}

/// A student computed from a parameter: the gradient flows on through burn's own ops.
#[test]
fn gradient_flows_into_upstream_parameters() {
    let device = ndarray_autodiff();
    let shape = [2, 3, 4, 4];
    for dtype in DTYPES {
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<1>| {
            let weight = tensor(logits(shape, 7, 1.0), shape, &device, dtype).require_grad();
            let x = tensor(logits(shape, 8, 2.0), shape, &device, dtype);
            let teacher = tensor(logits(shape, 9, 2.0), shape, &device, dtype);
            let student = (x * weight.clone()).tanh() * 4.0;
            let grads = f(student, teacher).backward();
            values(weight.grad(&grads).expect("the parameter has a gradient"))
        };
        let config = CwdConfig { tau: 1.0, loss_weight: 1.0, teacher_grad: false };
        let ours = run(&|s, t| cwd_loss(s, t, &config).unwrap());
        let theirs = run(&|s, t| reference::cwd_loss(s, t, &config));
        assert_close(&format!("parameter gradient {dtype:?}"), ours, theirs, tolerance_for(dtype, OutputKind::Tensor));
    }
}

/// Without autodiff (and with nothing tracked) the loss alone runs.
#[test]
fn untracked_losses_match_the_formula() {
    for device in [Device::ndarray(), ndarray_autodiff()] {
        for dtype in DTYPES {
            let shape = [2, 5, 3, 3];
            let s = tensor(logits(shape, 3, 5.0), shape, &device, dtype);
            let t = tensor(logits(shape, 4, 5.0), shape, &device, dtype);
            let cwd = CwdConfig::default();
            let kd = PixelKdConfig { reduction: Reduction::PixelMean, ..Default::default() };
            let limit = tolerance_for(dtype, OutputKind::Loss);
            assert_close(
                "cwd forward",
                values(cwd_loss(s.clone(), t.clone(), &cwd).unwrap()),
                values(reference::cwd_loss(s.clone(), t.clone(), &cwd)),
                limit,
            );
            assert_close(
                "pixel kd forward",
                values(pixel_kd_loss(s.clone(), t.clone(), &kd).unwrap()),
                values(reference::pixel_kd_loss(s, t, &kd)),
                limit,
            );
        }
    }
}

/// Strided (transposed) inputs are read as they are.
#[test]
fn strided_inputs() {
    let device = ndarray_autodiff();
    let shape = [2, 3, 5, 4];
    let s = tensor(logits(shape, 5, 4.0), shape, &device, DType::F64).swap_dims(2, 3).require_grad();
    let t = tensor(logits(shape, 6, 4.0), shape, &device, DType::F64).swap_dims(2, 3);
    let config = PixelKdConfig::default();
    let grads = pixel_kd_loss(s.clone(), t.clone(), &config).unwrap().backward();
    let ours = values(s.grad(&grads).unwrap());
    let s2 = s.clone().detach().require_grad();
    let grads = reference::pixel_kd_loss(s2.clone(), t, &config).backward();
    assert_close("strided d/d student", ours, values(s2.grad(&grads).unwrap()), F64_TOLERANCE);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let device = ndarray_autodiff();
    let s = tensor(logits([2, 3, 4, 5], 1, 1.0), [2, 3, 4, 5], &device, DType::F32);
    let t = tensor(logits([2, 3, 4, 5], 2, 1.0), [2, 3, 4, 5], &device, DType::F32);
    let cwd = CwdConfig::default();
    let kd = PixelKdConfig::default();

    let other = tensor(logits([2, 3, 5, 4], 2, 1.0), [2, 3, 5, 4], &device, DType::F32);
    assert!(matches!(cwd_loss(s.clone(), other.clone(), &cwd), Err(KdError::ShapeMismatch { what: "teacher", .. })));
    assert!(matches!(pixel_kd_loss(s.clone(), other, &kd), Err(KdError::ShapeMismatch { what: "teacher", .. })));

    let empty = Tensor::<4>::zeros([2, 0, 4, 5], &device);
    assert!(matches!(cwd_loss(empty.clone(), empty, &cwd), Err(KdError::EmptyInput { what: "student", .. })));

    let t64 = t.clone().cast(DType::F64);
    assert!(matches!(cwd_loss(s.clone(), t64, &cwd), Err(KdError::DTypeMismatch { .. })));

    let bad_tau = CwdConfig { tau: 0.0, ..cwd };
    assert!(matches!(cwd_loss(s.clone(), t.clone(), &bad_tau), Err(KdError::InvalidParameter { name: "tau", .. })));
    let bad_weight = PixelKdConfig { loss_weight: f64::NAN, ..kd };
    assert!(matches!(
        pixel_kd_loss(s.clone(), t.clone(), &bad_weight),
        Err(KdError::InvalidParameter { name: "loss_weight", .. })
    ));

    // A tracked teacher would silently get no gradient: refused, with the fix in the message. (A teacher
    // computed from tracked tensors; detaching it gives an untracked leaf.)
    let tracked = t.clone().require_grad() * 1.5;
    let err = pixel_kd_loss(s.clone(), tracked.clone(), &kd).unwrap_err();
    assert!(matches!(err, KdError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("detach"), "{err}");
    assert!(matches!(cwd_loss(s.clone(), tracked.clone(), &cwd), Err(KdError::OutputMismatch { what: "teacher", .. })));
    let with_teacher = CwdConfig { teacher_grad: true, ..cwd };
    assert!(cwd_loss(s.clone(), tracked.clone(), &with_teacher).is_ok());
    assert!(pixel_kd_loss(s, tracked.detach(), &kd).is_ok());
}

#[test]
fn icsd_matches_burn_autograd_in_both_variants() {
    for variant in [IcsdVariant::Official, IcsdVariant::Paper] {
        // At least 3 classes: with 2, the paper variant's normalised rows are (0, ±1) and the loss is 0 up to
        // rounding on both sides, which a relative error cannot compare.
        for (shape, tau) in [([2, 3, 4, 5], 1.0), ([1, 5, 6, 3], 2.0), ([3, 3, 2, 4], 0.7)] {
            let config = IcsdConfig { tau, loss_weight: 9500.0, variant };
            compare_pair(
                (&format!("icsd {variant:?}"), shape, 3.0, false),
                |s, t| icsd_loss(s, t, &config).expect("valid input"),
                |s, t| reference::icsd_loss(s, t, &config),
            );
        }
    }
}

#[test]
fn dist_matches_burn_autograd() {
    for (shape, config) in [
        ([2, 5, 3, 4], DistConfig::default()),
        ([1, 7, 5, 3], DistConfig { tau: 2.0, beta: 1.5, gamma: 0.5, loss_weight: 3.0 }),
    ] {
        compare_pair(
            ("dist", shape, 3.0, false),
            |s, t| dist_loss(s, t, &config).expect("valid input"),
            |s, t| reference::dist_loss(s, t, &config),
        );
    }
}

#[test]
fn aicsd_is_the_alpha_mix_of_its_terms() {
    let config = AicsdConfig::default();
    for epoch in [0.0, 30.0, 200.0] {
        let alpha = config.alpha(epoch).unwrap();
        compare_pair(
            (&format!("aicsd epoch {epoch}"), [2, 4, 5, 3], 3.0, false),
            |s, t| aicsd_loss(s, t, epoch, &config).expect("valid input"),
            |s, t| {
                reference::icsd_loss(s.clone(), t.clone(), &config.icsd) * alpha
                    + reference::pixel_kd_loss(s, t, &config.kd) * (1.0 - alpha)
            },
        );
    }
    let device = ndarray_autodiff();
    let s = tensor(logits([1, 2, 3, 3], 1, 1.0), [1, 2, 3, 3], &device, DType::F32);
    assert!(matches!(
        aicsd_loss(s.clone(), s, f64::NAN, &config),
        Err(KdError::InvalidParameter { name: "epoch", .. })
    ));
}
