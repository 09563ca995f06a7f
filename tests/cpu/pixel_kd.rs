//! Pixel KD's CPU reference: finite differences of the student's gradient, the invariance of its per-pixel
//! softmaxes, every reduction against a naive computation, and the exact relations between the reductions.
//! The properties it shares with CWD are in `properties`.

use crate::gradcheck::{assert_grad_close, inputs, numeric_grad, SHAPES, TAUS};
use crate::properties::{assert_same_output, naive_log_softmax, pair};

use approx::assert_relative_eq;
use kd_kernels::pixel_kd::{PixelKdConfig, PixelKdCpu, Reduction};
use kd_kernels::CpuOutput;
use ndarray::{s, Array4};

pub(crate) fn pkd(tau: f64, loss_weight: f64, reduction: Reduction, scale_tau2: bool) -> PixelKdCpu {
    PixelKdCpu::new(PixelKdConfig { tau, loss_weight, reduction, scale_tau2 }).unwrap()
}

pub(crate) const REDUCTIONS: [Reduction; 4] =
    [Reduction::Mean, Reduction::BatchMean, Reduction::Sum, Reduction::PixelMean];

/// Naive pixel KD with the divisor of each reduction written out.
pub(crate) fn naive_pixel_kd(
    s: &Array4<f32>,
    t: &Array4<f32>,
    tau: f64,
    lw: f64,
    r: Reduction,
    tau2: bool,
) -> (f64, Array4<f64>) {
    let [n_, c_, h_, w_] = [s.shape()[0], s.shape()[1], s.shape()[2], s.shape()[3]];
    let divisor = match r {
        Reduction::Mean => (n_ * c_ * h_ * w_) as f64,
        Reduction::BatchMean => n_ as f64,
        Reduction::Sum => 1.0,
        Reduction::PixelMean => (n_ * h_ * w_) as f64,
    };
    let factor = lw * if tau2 { tau * tau } else { 1.0 } / divisor;
    let mut g = Array4::<f64>::zeros(s.raw_dim());
    let mut total = 0.0;
    for n in 0..n_ {
        for h in 0..h_ {
            for w in 0..w_ {
                let zs: Vec<f64> = (0..c_).map(|c| s[[n, c, h, w]] as f64 / tau).collect();
                let zt: Vec<f64> = (0..c_).map(|c| t[[n, c, h, w]] as f64 / tau).collect();
                let (ls, lt) = (naive_log_softmax(&zs), naive_log_softmax(&zt));
                for c in 0..c_ {
                    let (ps, pt) = (ls[c].exp(), lt[c].exp());
                    total += pt * (lt[c] - ls[c]);
                    g[[n, c, h, w]] = factor / tau * (ps - pt);
                }
            }
        }
    }
    (factor * total, g)
}

#[test]
fn pixel_kd_is_invariant_to_shifting_a_whole_pixel() {
    let dims = [2, 5, 3, 4];
    let (s, t) = pair(2, dims, 2.0, 3);
    for reduction in REDUCTIONS {
        let loss = pkd(2.0, 3.0, reduction, true);
        let base = loss.forward_backward(s.view(), t.view()).unwrap();
        for (n, h, w, shift) in [(0, 0, 0, 5.5f32), (1, 2, 3, -11.0)] {
            for which in ["student", "teacher"] {
                let (mut s2, mut t2) = (s.clone(), t.clone());
                let target = if which == "student" { &mut s2 } else { &mut t2 };
                target.slice_mut(s![n, .., h, w]).mapv_inplace(|v| v + shift);
                let shifted = loss.forward_backward(s2.view(), t2.view()).unwrap();
                let what = format!("pixel_kd {reduction:?} {which} pixel ({n},{h},{w}) + {shift}");
                assert_same_output(&what, &base, &shifted, 1e-12);
            }
        }
    }
}

#[test]
fn pixel_kd_matches_a_naive_computation() {
    for (seed, dims) in [(50, [2, 5, 3, 4]), (51, [1, 19, 2, 3]), (52, [3, 2, 1, 1])] {
        let (s, t) = pair(seed, dims, 2.0, 2);
        for (tau, lw) in [(1.0, 10.0), (4.0, 1.0), (0.5, -2.0)] {
            for r in REDUCTIONS {
                for tau2 in [false, true] {
                    let out = pkd(tau, lw, r, tau2).forward_backward(s.view(), t.view()).unwrap();
                    let (loss, g) = naive_pixel_kd(&s, &t, tau, lw, r, tau2);
                    let naive = CpuOutput { loss, grad_student: g, grad_teacher: None };
                    let what = format!("pixel_kd {dims:?} tau={tau} lw={lw} {r:?} tau2={tau2}");
                    assert_same_output(&what, &out, &naive, 1e-11);
                }
            }
        }
    }
}

#[test]
fn pixel_kd_reductions_relate_exactly() {
    let dims = [3, 5, 4, 7];
    let [n, c, h, w] = dims;
    let (s, t) = pair(60, dims, 2.0, 3);
    for (tau, tau2) in [(1.0, false), (4.0, true), (4.0, false)] {
        let run = |r| pkd(tau, 2.0, r, tau2).forward_backward(s.view(), t.view()).unwrap();
        let (sum, mean, batchmean, pixelmean) =
            (run(Reduction::Sum), run(Reduction::Mean), run(Reduction::BatchMean), run(Reduction::PixelMean));
        let rel = 1e-14;
        assert_relative_eq!(sum.loss, mean.loss * (n * c * h * w) as f64, max_relative = rel);
        assert_relative_eq!(sum.loss, batchmean.loss * n as f64, max_relative = rel);
        assert_relative_eq!(sum.loss, pixelmean.loss * (n * h * w) as f64, max_relative = rel);
        for (other, k) in [(&mean, n * c * h * w), (&batchmean, n), (&pixelmean, n * h * w)] {
            for (a, b) in sum.grad_student.iter().zip(other.grad_student.iter()) {
                assert!((a - b * k as f64).abs() <= rel * a.abs() + 1e-300, "gradient {a} vs {b} * {k}");
            }
        }
    }
}

#[test]
fn pixel_kd_student_gradient_matches_finite_differences() {
    let mut seed = 300;
    for dims in SHAPES {
        for tau in TAUS {
            for reduction in REDUCTIONS {
                for scale_tau2 in [false, true] {
                    seed += 1;
                    let (s, t) = inputs(seed, dims);
                    let pkd = PixelKdCpu::new(PixelKdConfig { tau, loss_weight: 2.3, reduction, scale_tau2 }).unwrap();
                    let out = pkd.forward_backward(s.view(), t.view()).unwrap();
                    assert!(out.grad_teacher.is_none());
                    let numeric = numeric_grad(&s, |sv| pkd.forward(sv, t.view()).unwrap());
                    let what = format!("pixel_kd d/dS {dims:?} tau={tau} {reduction:?} scale_tau2={scale_tau2}");
                    assert_grad_close(&what, &numeric, &out.grad_student);
                }
            }
        }
    }
}
