//! The DIST CPU reference (`docs/losses.md §8`): the recorded fixtures, central finite differences,
//! properties (identical inputs, shifts of a pixel's logits, pixel order, a constant pixel row) and typed
//! errors on bad inputs.

use crate::common;

use common::SplitMix64;
use kd_kernels::dist::{DistConfig, DistCpu};
use kd_kernels::KdError;
use ndarray::{s, Array4};

#[test]
fn fixtures_pass_on_the_cpu_reference() {
    let files = common::family_fixtures("dist_");
    assert_eq!(files.len(), 6, "expected the 6 recorded dist fixtures");
    for path in files {
        common::passes_on_cpu(&path, &["loss", "grad.student"]);
    }
}

fn logits(rng: &mut SplitMix64, dims: [usize; 4], scale: f64) -> Array4<f64> {
    Array4::from_shape_fn(dims, |_| scale * rng.normal())
}

fn assert_close(what: &str, got: &Array4<f64>, want: &Array4<f64>, rtol: f64) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && scale.is_finite(), "{what}: degenerate reference");
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= rtol * scale, "{what}: max err {worst:e}, relative {:e}", worst / scale);
}

/// Central differences of the loss in the student values `at` picks (f64 inputs, step `h`).
fn numeric_grad(cpu: &DistCpu, s: &Array4<f64>, t: &Array4<f64>, h: f64) -> Array4<f64> {
    let mut work = s.clone();
    let mut g = Array4::<f64>::zeros(s.raw_dim());
    for (idx, &v) in s.indexed_iter() {
        work[idx] = v + h;
        let plus = cpu.forward(work.view(), t.view()).unwrap();
        work[idx] = v - h;
        let minus = cpu.forward(work.view(), t.view()).unwrap();
        work[idx] = v;
        g[idx] = (plus - minus) / (2.0 * h);
    }
    g
}

#[test]
fn finite_differences() {
    let mut rng = SplitMix64::new(81);
    let cases = [
        ([2, 5, 3, 4], DistConfig::default()),
        ([1, 3, 2, 5], DistConfig { tau: 4.0, beta: 2.0, gamma: 0.5, loss_weight: 3.0 }),
        ([3, 7, 1, 2], DistConfig { tau: 0.5, beta: 1.0, gamma: 0.0, loss_weight: 1.0 }),
        ([2, 4, 2, 2], DistConfig { tau: 2.0, beta: 0.0, gamma: 1.0, loss_weight: -1.5 }),
        ([2, 2, 3, 3], DistConfig::default()),
    ];
    for (dims, config) in cases {
        let s = logits(&mut rng, dims, 2.0);
        let t = logits(&mut rng, dims, 2.0);
        let cpu = DistCpu::new(config).unwrap();
        let r = cpu.forward_backward(s.view(), t.view()).unwrap();
        assert!(r.grad_teacher.is_none());
        let numeric = numeric_grad(&cpu, &s, &t, 1e-6);
        assert_close(&format!("{dims:?} {config:?}"), &r.grad_student, &numeric, 1e-6);
        let b = cpu.backward(s.view(), t.view(), 0.25).unwrap();
        assert_eq!(b.loss, r.loss);
        assert_close("backward", &b.grad_student, &r.grad_student.mapv(|v| 0.25 * v), 1e-14);
    }
}

#[test]
fn identical_inputs_give_zero_up_to_the_eps() {
    let mut rng = SplitMix64::new(82);
    let s = logits(&mut rng, [2, 6, 4, 3], 2.0);
    let config = DistConfig { tau: 2.0, beta: 1.5, gamma: 0.5, loss_weight: 2.0 };
    let r = DistCpu::new(config).unwrap().forward_backward(s.view(), s.view()).unwrap();
    // rho(a, a) = |a|^2 / (|a|^2 + 1e-8): 1 - rho is about 1e-8 / |a|^2 per row, never negative.
    assert!(r.loss >= 0.0 && r.loss < 1e-5, "{}", r.loss);
    let g = r.grad_student.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(g < 1e-5, "{g}");
}

#[test]
fn invariant_to_a_shift_of_a_pixel_and_to_the_pixel_order() {
    let mut rng = SplitMix64::new(83);
    let dims = [2, 5, 3, 4];
    let st = logits(&mut rng, dims, 2.0);
    let te = logits(&mut rng, dims, 2.0);
    let cpu = DistCpu::new(DistConfig { tau: 3.0, beta: 1.0, gamma: 2.0, loss_weight: 1.0 }).unwrap();
    let r = cpu.forward_backward(st.view(), te.view()).unwrap();
    // The softmax does not see a constant added to all of a pixel's logits.
    let shift: Vec<f64> = (0..dims[0] * dims[2] * dims[3]).map(|_| 10.0 * rng.normal()).collect();
    let shifted = |x: &Array4<f64>| {
        Array4::from_shape_fn(dims, |(n, c, h, w)| x[[n, c, h, w]] + shift[(n * dims[2] + h) * dims[3] + w])
    };
    let m = cpu.forward_backward(shifted(&st).view(), shifted(&te).view()).unwrap();
    assert!((m.loss - r.loss).abs() <= 1e-12 * r.loss);
    assert_close("shifted", &m.grad_student, &r.grad_student, 1e-9);
    // Swapping the images of both permutes the pixels: the same loss, the gradient swapped along.
    let swap = |x: &Array4<f64>| {
        let mut y = x.clone();
        y.slice_mut(s![0, .., .., ..]).assign(&x.slice(s![1, .., .., ..]));
        y.slice_mut(s![1, .., .., ..]).assign(&x.slice(s![0, .., .., ..]));
        y
    };
    let p = cpu.forward_backward(swap(&st).view(), swap(&te).view()).unwrap();
    assert!((p.loss - r.loss).abs() <= 1e-13 * r.loss);
    assert_close("swapped", &p.grad_student, &swap(&r.grad_student), 1e-12);
    // A per-class affine map of the teacher's logits changes its distributions: DIST is not invariant to it
    // (the Pearson correlation is invariant in the probabilities, behind the softmax).
    let affine = Array4::from_shape_fn(dims, |(n, c, h, w)| (1.0 + c as f64) * te[[n, c, h, w]] + c as f64);
    let a = cpu.forward(st.view(), affine.view()).unwrap();
    assert!((a - r.loss).abs() > 1e-3 * r.loss);
}

#[test]
fn weights_scale_the_terms() {
    let mut rng = SplitMix64::new(84);
    let dims = [2, 4, 3, 3];
    let (st, te) = (logits(&mut rng, dims, 2.0), logits(&mut rng, dims, 2.0));
    let loss = |c: DistConfig| DistCpu::new(c).unwrap().forward(st.view(), te.view()).unwrap();
    let base = DistConfig { tau: 2.0, ..DistConfig::default() };
    let inter = loss(DistConfig { gamma: 0.0, ..base });
    let intra = loss(DistConfig { beta: 0.0, ..base });
    let both = loss(DistConfig { beta: 3.0, gamma: 0.5, loss_weight: 2.0, ..base });
    assert!((both - 2.0 * (3.0 * inter + 0.5 * intra)).abs() <= 1e-13 * both.abs());
    // Each term is 1 - a mean correlation, times tau^2: within [0, 2] tau^2.
    for v in [inter, intra] {
        assert!(v > 0.0 && v < 8.0, "{v}");
    }
}

#[test]
fn one_class_and_a_constant_pixel_row_stay_finite() {
    // One class: every probability is 1, both correlations are 0 and the gradient is 0.
    let mut rng = SplitMix64::new(85);
    let (st, te) = (logits(&mut rng, [2, 1, 3, 2], 2.0), logits(&mut rng, [2, 1, 3, 2], 2.0));
    let cfg = DistConfig { tau: 2.0, beta: 1.0, gamma: 3.0, loss_weight: 1.0 };
    let r = DistCpu::new(cfg).unwrap().forward_backward(st.view(), te.view()).unwrap();
    assert_eq!(r.loss, 4.0 * 4.0);
    assert!(r.grad_student.iter().all(|&v| v == 0.0));
    // A student pixel whose logits are all equal: its centred probabilities are 0, where the norm has no
    // derivative; the derivative of rho exists (b / eps) and is what the crate returns.
    let dims = [1, 4, 2, 2];
    let mut st = logits(&mut rng, dims, 2.0);
    let te = logits(&mut rng, dims, 2.0);
    st.slice_mut(s![0, .., 1, 0]).fill(0.75);
    let cpu = DistCpu::new(DistConfig::default()).unwrap();
    let r = cpu.forward_backward(st.view(), te.view()).unwrap();
    assert!(r.grad_student.iter().all(|v| v.is_finite()));
    // The derivative there is about 1e8 times the others: a step far below eps keeps the difference linear.
    let numeric = numeric_grad(&cpu, &st, &te, 1e-12);
    let got = r.grad_student.slice(s![.., .., 1..2, 0..1]).to_owned();
    let want = numeric.slice(s![.., .., 1..2, 0..1]).to_owned();
    assert_close("constant row", &got, &want, 1e-4);
    // Elsewhere ordinary steps apply.
    let numeric = numeric_grad(&cpu, &st, &te, 1e-6);
    for (h, w) in [(0, 0), (0, 1), (1, 1)] {
        let got = r.grad_student.slice(s![.., .., h..h + 1, w..w + 1]).to_owned();
        let want = numeric.slice(s![.., .., h..h + 1, w..w + 1]).to_owned();
        assert_close(&format!("pixel {h},{w}"), &got, &want, 1e-5);
    }
}

#[test]
fn bad_inputs_give_typed_errors() {
    for (name, cfg) in [
        ("tau", DistConfig { tau: 0.0, ..DistConfig::default() }),
        ("tau", DistConfig { tau: f64::NAN, ..DistConfig::default() }),
        ("beta", DistConfig { beta: f64::INFINITY, ..DistConfig::default() }),
        ("gamma", DistConfig { gamma: f64::NAN, ..DistConfig::default() }),
        ("loss_weight", DistConfig { loss_weight: f64::NAN, ..DistConfig::default() }),
    ] {
        match DistCpu::new(cfg) {
            Err(KdError::InvalidParameter { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{cfg:?}: {other:?}"),
        }
    }
    let cpu = DistCpu::new(DistConfig::default()).unwrap();
    let a = Array4::<f32>::zeros([2, 3, 4, 4]);
    let b = Array4::<f32>::zeros([2, 3, 4, 5]);
    assert!(matches!(cpu.forward(a.view(), b.view()), Err(KdError::ShapeMismatch { .. })));
    let e = Array4::<f32>::zeros([2, 3, 0, 4]);
    assert!(matches!(cpu.forward(e.view(), e.view()), Err(KdError::EmptyInput { .. })));
}
