//! The ICSD / AICSD CPU reference (`docs/losses.md §3`): the recorded fixtures, central finite differences of
//! the loss for both variants, properties, and typed errors on bad inputs.

use crate::common;
use crate::gradcheck::numeric_grad;

use common::{logits4, SplitMix64};
use kd_kernels::fixture::{Backend, Fixture};
use kd_kernels::icsd::{alw_alpha, AicsdConfig, AicsdCpu, IcsdConfig, IcsdCpu, IcsdVariant};
use kd_kernels::pixel_kd::{PixelKdConfig, PixelKdCpu};
use kd_kernels::verify;
use kd_kernels::KdError;
use ndarray::Array4;

const VARIANTS: [IcsdVariant; 2] = [IcsdVariant::Official, IcsdVariant::Paper];

fn icsd_files() -> Vec<std::path::PathBuf> {
    common::family_fixtures("icsd_")
}

#[test]
fn fixtures_pass_on_the_cpu_reference() {
    let files = icsd_files();
    assert_eq!(files.len(), 11, "expected the 11 recorded icsd fixtures");
    for path in files {
        common::passes_on_cpu(&path, &["loss", "grad.student"]);
    }
}

#[test]
fn underflow_fixture_stays_finite() {
    let path = icsd_files().into_iter().find(|p| p.to_string_lossy().contains("underflow")).unwrap();
    let fixture = Fixture::load(&path).unwrap();
    let checks = verify::check(&fixture, &Backend::Cpu).unwrap();
    assert!(checks.iter().all(|c| c.comparison.max_abs_err.is_finite() && c.pass()));
}

fn assert_grad_close(what: &str, numeric: &Array4<f64>, analytic: &Array4<f64>) {
    let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && scale.is_finite(), "{what}: degenerate gradient");
    let worst = analytic.iter().zip(numeric).map(|(a, n)| (a - n).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-5 * scale, "{what}: max err {worst:e}, relative {:e}", worst / scale);
}

#[test]
fn finite_differences_both_variants() {
    let mut rng = SplitMix64::new(6);
    for variant in VARIANTS {
        for (dims, tau) in [([2, 3, 4, 5], 1.0), ([1, 4, 3, 2], 2.0), ([2, 3, 1, 4], 1.0)] {
            let s = logits4(&mut rng, dims, 1.5, 0);
            let t = logits4(&mut rng, dims, 1.5, 0);
            let cpu = IcsdCpu::new(IcsdConfig { tau, loss_weight: 9500.0, variant }).unwrap();
            let analytic = cpu.forward_backward(s.view(), t.view()).unwrap().grad_student;
            if variant == IcsdVariant::Official && dims[2] == 1 {
                // A softmax over one row is constant: the official loss does not depend on the student.
                assert!(analytic.iter().all(|&g| g == 0.0));
                continue;
            }
            let numeric = numeric_grad(&s, |x| cpu.forward(x, t.view()).unwrap().loss);
            assert_grad_close(&format!("{variant:?} {dims:?} tau {tau}"), &numeric, &analytic);
            let up = cpu.backward(s.view(), t.view(), -2.5).unwrap().grad_student;
            for (a, b) in up.iter().zip(&analytic) {
                assert!((a + 2.5 * b).abs() <= 1e-12 * b.abs().max(1e-30) + 1e-300);
            }
        }
    }
}

#[test]
fn official_matrix_is_symmetric_and_paper_has_zero_diagonal() {
    let mut rng = SplitMix64::new(7);
    let x = logits4(&mut rng, [2, 5, 6, 3], 2.0, 1);
    let m = IcsdCpu::new(IcsdConfig::default()).unwrap().raw_matrix(x.view()).unwrap();
    for i in 0..5 {
        for j in 0..5 {
            assert_eq!(m[[i, j]], m[[j, i]], "official M must be symmetric");
        }
    }
    let paper = IcsdCpu::new(IcsdConfig { variant: IcsdVariant::Paper, ..IcsdConfig::default() }).unwrap();
    let m = paper.raw_matrix(x.view()).unwrap();
    for i in 0..5 {
        assert_eq!(m[[i, i]], 0.0);
        for j in 0..5 {
            assert!(m[[i, j]] >= -1e-12, "a KL divergence is not negative");
        }
    }
}

#[test]
fn identical_inputs_give_zero() {
    let mut rng = SplitMix64::new(8);
    for variant in VARIANTS {
        let x = logits4(&mut rng, [2, 4, 5, 3], 1.0, 0);
        let out = IcsdCpu::new(IcsdConfig { variant, ..IcsdConfig::default() })
            .unwrap()
            .forward_backward(x.view(), x.view())
            .unwrap();
        assert_eq!(out.loss, 0.0);
        assert!(out.grad_student.iter().all(|&g| g == 0.0));
        assert_eq!(out.sim_student, out.sim_teacher);
    }
}

#[test]
fn alw_schedule() {
    assert_eq!(alw_alpha(0.0, 120.0).unwrap(), 0.0);
    assert_eq!(alw_alpha(60.0, 120.0).unwrap(), 0.5);
    assert_eq!(alw_alpha(200.0, 120.0).unwrap(), 1.0);
    assert_eq!(alw_alpha(-3.0, 120.0).unwrap(), 0.0);
    assert!(matches!(alw_alpha(1.0, 0.0), Err(KdError::InvalidParameter { .. })));
    assert!(matches!(alw_alpha(f64::NAN, 120.0), Err(KdError::InvalidParameter { .. })));
}

#[test]
fn aicsd_is_the_alpha_mix() {
    let mut rng = SplitMix64::new(9);
    let s = logits4(&mut rng, [2, 3, 5, 4], 1.0, 0);
    let t = logits4(&mut rng, [2, 3, 5, 4], 1.0, 0);
    let aicsd = AicsdCpu::new(AicsdConfig::default()).unwrap();
    let ics = IcsdCpu::new(IcsdConfig::default()).unwrap().forward_backward(s.view(), t.view()).unwrap();
    let kd = PixelKdCpu::new(PixelKdConfig::default()).unwrap().forward_backward(s.view(), t.view()).unwrap();
    let out = aicsd.forward_backward(s.view(), t.view(), 30.0).unwrap();
    assert!((out.loss - (0.25 * ics.loss + 0.75 * kd.loss)).abs() <= 1e-12 * out.loss.abs());
    for ((g, a), b) in out.grad_student.iter().zip(&ics.grad_student).zip(&kd.grad_student) {
        assert!((g - (0.25 * a + 0.75 * b)).abs() <= 1e-12 * g.abs().max(1e-20));
    }
}

#[test]
fn bad_inputs_give_typed_errors() {
    let cpu = IcsdCpu::new(IcsdConfig::default()).unwrap();
    let a = Array4::<f32>::zeros((2, 3, 4, 5));
    let b = Array4::<f32>::zeros((2, 3, 4, 6));
    assert!(matches!(cpu.forward(a.view(), b.view()), Err(KdError::ShapeMismatch { .. })));
    let z = Array4::<f32>::zeros((2, 0, 4, 5));
    assert!(matches!(cpu.forward(z.view(), z.view()), Err(KdError::EmptyInput { .. })));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            IcsdCpu::new(IcsdConfig { tau: bad, ..IcsdConfig::default() }),
            Err(KdError::InvalidParameter { name: "tau", .. })
        ));
    }
    assert!(matches!(
        IcsdCpu::new(IcsdConfig { loss_weight: f64::NAN, ..IcsdConfig::default() }),
        Err(KdError::InvalidParameter { name: "loss_weight", .. })
    ));
    assert!(matches!(IcsdVariant::parse("loop"), Err(KdError::InvalidParameter { name: "variant", .. })));
    assert_eq!(IcsdVariant::parse("paper").unwrap(), IcsdVariant::Paper);
    // Wrong rank: the shape check every entry point starts with.
    assert!(matches!(kd_kernels::Nchw::from_dims("student", &[2, 3, 4]), Err(KdError::WrongRank { .. })));
}

/// `verify` refuses an ICSD file whose `variant` is neither `official` nor `paper` (a CWD file relabelled).
#[test]
fn verify_refuses_an_unknown_variant() {
    let file = crate::fixtures::base_cwd().set_meta("loss", "icsd").set_meta("variant", "loop");
    crate::fixtures::assert_verify_refuses("icsd variant bogus", file, "variant");
}
