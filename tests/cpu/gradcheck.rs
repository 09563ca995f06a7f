//! Central finite differences of the CPU reference's loss against its analytic gradients, and `backward`'s
//! upstream scaling.
//!
//! Inputs are multiples of 2^-10 below 64 in magnitude, and steps are powers of two (2^-14 relative), so
//! `x +- h` is exact in f32: the difference quotient sees exactly the step it divides by, and the loss is
//! evaluated in f64. The truncation error is O(h^2) ~ 1e-9 relative, far below the 1e-6 tolerance.

use crate::common;

use common::SplitMix64;
use kd_kernels::cwd::{CwdConfig, CwdCpu};
use kd_kernels::pixel_kd::{PixelKdConfig, PixelKdCpu, Reduction};
use ndarray::{Array4, ArrayView4};

pub(crate) const SHAPES: [[usize; 4]; 2] = [[2, 3, 4, 5], [1, 5, 3, 7]];
pub(crate) const TAUS: [f64; 2] = [1.0, 4.0];
const REL_TOL: f64 = 1e-6;
const REDUCTIONS: [Reduction; 4] = [Reduction::Mean, Reduction::BatchMean, Reduction::Sum, Reduction::PixelMean];

/// The step for `x`: 2^-14 times the power of two at or below max(|x|, 1).
fn step(x: f32) -> f32 {
    let e = (x.abs().max(1.0)).log2().floor() as i32;
    2f32.powi(e - 14)
}

/// d f / d x by central differences, one element at a time (on inputs exact under the step: see the module
/// docs).
pub(crate) fn numeric_grad(x: &Array4<f32>, f: impl Fn(ArrayView4<'_, f32>) -> f64) -> Array4<f64> {
    let mut work = x.clone();
    let mut grad = Array4::<f64>::zeros(x.raw_dim());
    for (idx, &v) in x.indexed_iter() {
        let h = step(v);
        let (plus, minus) = (v + h, v - h);
        assert_eq!((plus - v, v - minus), (h, h), "inputs must be exact under the step");
        work[idx] = plus;
        let f_plus = f(work.view());
        work[idx] = minus;
        let f_minus = f(work.view());
        work[idx] = v;
        grad[idx] = (f_plus - f_minus) / (plus as f64 - minus as f64);
    }
    grad
}

pub(crate) fn assert_grad_close(what: &str, numeric: &Array4<f64>, analytic: &Array4<f64>) {
    assert_eq!(numeric.shape(), analytic.shape(), "{what}: shape");
    let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && scale.is_finite(), "{what}: degenerate analytic gradient (max {scale})");
    let (mut worst, mut at) = (0.0f64, None);
    for ((idx, &a), &n) in analytic.indexed_iter().zip(numeric.iter()) {
        let err = (a - n).abs();
        if err.is_nan() || err > worst {
            worst = if err.is_nan() { f64::INFINITY } else { err };
            at = Some((idx, a, n));
        }
    }
    assert!(
        worst <= REL_TOL * scale,
        "{what}: finite differences disagree: max err {worst:e} (relative {:e}) at {at:?} (index, analytic, numeric)",
        worst / scale
    );
}

pub(crate) fn inputs(seed: u64, dims: [usize; 4]) -> (Array4<f32>, Array4<f32>) {
    let mut rng = SplitMix64::new(seed);
    let student = common::logits4(&mut rng, dims, 2.0, 3);
    let teacher = common::logits4(&mut rng, dims, 2.0, 3);
    (student, teacher)
}

/// `|got - want| <= 4 eps |want|` element by element: one extra rounding of the scale product.
fn assert_scaled(what: &str, got: &Array4<f64>, base: &Array4<f64>, upstream: f64) {
    assert_eq!(got.shape(), base.shape(), "{what}: shape");
    for ((idx, &g), &b) in got.indexed_iter().zip(base.iter()) {
        let want = upstream * b;
        assert!((g - want).abs() <= 4.0 * f64::EPSILON * want.abs(), "{what}: at {idx:?} got {g:e}, want {want:e}");
    }
}

#[test]
fn backward_is_upstream_times_the_gradient() {
    let dims = [2, 3, 4, 5];
    let (s, t) = inputs(400, dims);
    for upstream in [2.5, -0.75, 0.0, 1.0] {
        for tau in TAUS {
            let cwd = CwdCpu::new(CwdConfig { tau, loss_weight: 3.0, teacher_grad: true }).unwrap();
            let fb = cwd.forward_backward(s.view(), t.view()).unwrap();
            let b = cwd.backward(s.view(), t.view(), upstream).unwrap();
            assert_eq!(b.loss.to_bits(), fb.loss.to_bits(), "cwd backward fills the unscaled loss");
            assert_eq!(cwd.forward(s.view(), t.view()).unwrap().to_bits(), fb.loss.to_bits(), "forward == fb loss");
            let what = format!("cwd upstream={upstream} tau={tau}");
            assert_scaled(&format!("{what} student"), &b.grad_student, &fb.grad_student, upstream);
            assert_scaled(
                &format!("{what} teacher"),
                b.grad_teacher.as_ref().unwrap(),
                fb.grad_teacher.as_ref().unwrap(),
                upstream,
            );

            for reduction in REDUCTIONS {
                let pkd =
                    PixelKdCpu::new(PixelKdConfig { tau, loss_weight: 10.0, reduction, scale_tau2: true }).unwrap();
                let fb = pkd.forward_backward(s.view(), t.view()).unwrap();
                let b = pkd.backward(s.view(), t.view(), upstream).unwrap();
                assert_eq!(b.loss.to_bits(), fb.loss.to_bits(), "pixel_kd backward fills the unscaled loss");
                assert_eq!(pkd.forward(s.view(), t.view()).unwrap().to_bits(), fb.loss.to_bits());
                let what = format!("pixel_kd upstream={upstream} tau={tau} {reduction:?}");
                assert_scaled(&what, &b.grad_student, &fb.grad_student, upstream);
            }
        }
    }
}
