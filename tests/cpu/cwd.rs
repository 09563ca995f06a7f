//! CWD's CPU reference: finite differences of both gradients, the invariance of its row softmaxes, and its
//! normalisation (`loss_weight * tau^2 / (N*C) * sum KL`) against a naive computation. The properties it
//! shares with pixel KD are in `properties`.

use crate::gradcheck::{assert_grad_close, inputs, numeric_grad, SHAPES, TAUS};
use crate::properties::{assert_same_output, naive_log_softmax, pair};

use kd_kernels::cwd::{CwdConfig, CwdCpu};
use kd_kernels::CpuOutput;
use ndarray::{s, Array4};

pub(crate) fn cwd(tau: f64, loss_weight: f64) -> CwdCpu {
    CwdCpu::new(CwdConfig { tau, loss_weight, teacher_grad: true }).unwrap()
}

/// Naive CWD: KL of each row via `sum pT zT - sum pT zS - LSE_T + LSE_S` (another algebraic form than
/// the reference's), then the normalisation of docs/losses.md §1.3 applied explicitly.
pub(crate) fn naive_cwd(s: &Array4<f32>, t: &Array4<f32>, tau: f64, lw: f64) -> (f64, Array4<f64>, Array4<f64>) {
    let [n_, c_, _, _] = [s.shape()[0], s.shape()[1], s.shape()[2], s.shape()[3]];
    let mut gs = Array4::<f64>::zeros(s.raw_dim());
    let mut gt = Array4::<f64>::zeros(s.raw_dim());
    let mut kls = Vec::new();
    for n in 0..n_ {
        for c in 0..c_ {
            let zs: Vec<f64> = s.slice(s![n, c, .., ..]).iter().map(|&v| v as f64 / tau).collect();
            let zt: Vec<f64> = t.slice(s![n, c, .., ..]).iter().map(|&v| v as f64 / tau).collect();
            let (ls, lt) = (naive_log_softmax(&zs), naive_log_softmax(&zt));
            let lse_s = zs[0] - ls[0];
            let lse_t = zt[0] - lt[0];
            let pt: Vec<f64> = lt.iter().map(|v| v.exp()).collect();
            let ps: Vec<f64> = ls.iter().map(|v| v.exp()).collect();
            let cross: f64 = pt.iter().zip(zt.iter().zip(&zs)).map(|(p, (a, b))| p * (a - b)).sum();
            let kl = cross - lse_t + lse_s;
            kls.push(kl);
            let g = lw * tau / (n_ * c_) as f64;
            let mut gs_row = gs.slice_mut(s![n, c, .., ..]);
            let mut gt_row = gt.slice_mut(s![n, c, .., ..]);
            for (i, (e_s, e_t)) in gs_row.iter_mut().zip(gt_row.iter_mut()).enumerate() {
                *e_s = g * (ps[i] - pt[i]);
                *e_t = g * pt[i] * (lt[i] - ls[i] - kl);
            }
        }
    }
    let loss = lw * tau * tau / (n_ * c_) as f64 * kls.iter().sum::<f64>();
    (loss, gs, gt)
}

#[test]
fn cwd_is_invariant_to_shifting_a_whole_row() {
    let dims = [2, 3, 4, 5];
    let (s, t) = pair(1, dims, 2.0, 3);
    for tau in [1.0, 4.0] {
        let loss = cwd(tau, 2.0);
        let base = loss.forward_backward(s.view(), t.view()).unwrap();
        for (n, c, shift) in [(0, 0, 3.5f32), (1, 2, -7.25), (1, 0, 40.0)] {
            for which in ["student", "teacher"] {
                let (mut s2, mut t2) = (s.clone(), t.clone());
                let target = if which == "student" { &mut s2 } else { &mut t2 };
                target.slice_mut(s![n, c, .., ..]).mapv_inplace(|v| v + shift);
                let shifted = loss.forward_backward(s2.view(), t2.view()).unwrap();
                assert_same_output(&format!("cwd tau={tau} {which} row ({n},{c}) + {shift}"), &base, &shifted, 1e-12);
            }
        }
    }
}

#[test]
fn cwd_is_not_invariant_to_shifting_one_position() {
    // The invariance above is specific to whole rows; a single element moved must change the loss (so the
    // test above could fail).
    let (s, t) = pair(3, [1, 2, 3, 3], 1.0, 0);
    let loss = cwd(1.0, 1.0);
    let mut s2 = s.clone();
    s2[[0, 1, 1, 1]] += 1.0;
    let a = loss.forward(s.view(), t.view()).unwrap();
    let b = loss.forward(s2.view(), t.view()).unwrap();
    assert!((a - b).abs() > 1e-6, "{a} vs {b}");
}

#[test]
fn cwd_matches_a_naive_computation_of_the_normalisation() {
    for (seed, dims) in [(40, [2, 3, 4, 5]), (41, [3, 4, 1, 7]), (42, [1, 1, 6, 6])] {
        let (s, t) = pair(seed, dims, 2.0, 2);
        for (tau, lw) in [(1.0, 1.0), (4.0, 3.0), (0.5, 10.0), (2.0, -1.5)] {
            let out = cwd(tau, lw).forward_backward(s.view(), t.view()).unwrap();
            let (loss, gs, gt) = naive_cwd(&s, &t, tau, lw);
            let naive = CpuOutput { loss, grad_student: gs, grad_teacher: Some(gt) };
            assert_same_output(&format!("cwd {dims:?} tau={tau} lw={lw}"), &out, &naive, 1e-11);
        }
    }
}

#[test]
fn cwd_student_gradient_matches_finite_differences() {
    let mut seed = 100;
    for dims in SHAPES {
        for tau in TAUS {
            for teacher_grad in [false, true] {
                seed += 1;
                let (s, t) = inputs(seed, dims);
                let cwd = CwdCpu::new(CwdConfig { tau, loss_weight: 1.7, teacher_grad }).unwrap();
                let out = cwd.forward_backward(s.view(), t.view()).unwrap();
                let numeric = numeric_grad(&s, |sv| cwd.forward(sv, t.view()).unwrap());
                let what = format!("cwd d/dS {dims:?} tau={tau} teacher_grad={teacher_grad}");
                assert_grad_close(&what, &numeric, &out.grad_student);
            }
        }
    }
}

#[test]
fn cwd_teacher_gradient_matches_finite_differences() {
    let mut seed = 200;
    for dims in SHAPES {
        for tau in TAUS {
            seed += 1;
            let (s, t) = inputs(seed, dims);
            let cwd = CwdCpu::new(CwdConfig { tau, loss_weight: 0.6, teacher_grad: true }).unwrap();
            let out = cwd.forward_backward(s.view(), t.view()).unwrap();
            let analytic = out.grad_teacher.expect("teacher_grad is set");
            let numeric = numeric_grad(&t, |tv| cwd.forward(s.view(), tv).unwrap());
            assert_grad_close(&format!("cwd d/dT {dims:?} tau={tau}"), &numeric, &analytic);
        }
    }
}

#[test]
fn cwd_without_teacher_grad_returns_no_teacher_gradient() {
    let (s, t) = inputs(7, [1, 2, 3, 3]);
    let off = CwdCpu::new(CwdConfig { tau: 2.0, loss_weight: 1.0, teacher_grad: false }).unwrap();
    assert!(off.forward_backward(s.view(), t.view()).unwrap().grad_teacher.is_none());
    assert!(off.backward(s.view(), t.view(), 2.0).unwrap().grad_teacher.is_none());
    let on = CwdCpu::new(CwdConfig { tau: 2.0, loss_weight: 1.0, teacher_grad: true }).unwrap();
    let g = on.forward_backward(s.view(), t.view()).unwrap().grad_teacher.expect("teacher gradient");
    assert_eq!(g.shape(), s.shape());
}
