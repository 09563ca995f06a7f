//! Mathematical properties that CWD's and pixel KD's CPU references share (both are softmax KLs), each checked
//! against something computed independently: zero-sum gradients, non-negativity, the zero of identical inputs,
//! closed forms at extreme logits, the shared scenarios against both naive computations, temperature scaling
//! and storage dtypes. Each family's own properties are in its module.

use crate::common;
use crate::cwd::{cwd, naive_cwd};
use crate::pixel_kd::{naive_pixel_kd, pkd, REDUCTIONS};

use approx::assert_relative_eq;
use common::{SplitMix64, PAIR_SCENARIOS};
use half::{bf16, f16};
use kd_kernels::pixel_kd::Reduction;
use kd_kernels::CpuOutput;
use ndarray::{s, Array4};

pub(crate) fn pair(seed: u64, dims: [usize; 4], scale: f64, outliers: usize) -> (Array4<f32>, Array4<f32>) {
    let mut rng = SplitMix64::new(seed);
    (common::logits4(&mut rng, dims, scale, outliers), common::logits4(&mut rng, dims, scale, outliers))
}

pub(crate) fn max_abs(a: &Array4<f64>) -> f64 {
    a.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Same loss (relative `rel`) and gradients (within `rel` of the larger gradient's max).
pub(crate) fn assert_same_output(what: &str, a: &CpuOutput, b: &CpuOutput, rel: f64) {
    assert!((a.loss - b.loss).abs() <= rel * a.loss.abs().max(b.loss.abs()), "{what}: loss {} vs {}", a.loss, b.loss);
    let pairs = [(Some(&a.grad_student), Some(&b.grad_student)), (a.grad_teacher.as_ref(), b.grad_teacher.as_ref())];
    for (x, y) in pairs {
        match (x, y) {
            (Some(x), Some(y)) => {
                let scale = max_abs(x).max(max_abs(y));
                let diff = x.iter().zip(y.iter()).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
                assert!(diff <= rel * scale, "{what}: gradients differ by {diff:e} (max {scale:e})");
            }
            (None, None) => {}
            _ => panic!("{what}: one output has a teacher gradient, the other not"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Invariances and structure.

#[test]
fn gradients_sum_to_zero_over_each_softmax() {
    let eps = f64::EPSILON;
    for (seed, dims) in [(10, [2, 3, 4, 5]), (11, [1, 5, 3, 7]), (12, [3, 2, 1, 9])] {
        let (s, t) = pair(seed, dims, 3.0, 4);
        let [n_, c_, h_, w_] = dims;
        for tau in [1.0, 4.0] {
            // CWD: over (h, w) of each (n, c), for both gradients.
            let lw = 2.0;
            let out = cwd(tau, lw).forward_backward(s.view(), t.view()).unwrap();
            let scale = lw * tau / (n_ * c_) as f64;
            let row_len = (h_ * w_) as f64;
            for (name, g) in [("student", &out.grad_student), ("teacher", out.grad_teacher.as_ref().unwrap())] {
                for n in 0..n_ {
                    for c in 0..c_ {
                        let sum: f64 = g.slice(s![n, c, .., ..]).sum();
                        // The teacher's gradient carries the row KL (up to ~30 * 4 / tau here) as a factor.
                        let bound = 64.0 * eps * scale * row_len * if name == "teacher" { 200.0 } else { 1.0 };
                        assert!(sum.abs() <= bound, "cwd {name} {dims:?} tau={tau} row ({n},{c}) sums to {sum:e}");
                    }
                }
            }
            // Pixel KD: over c of each pixel.
            for reduction in REDUCTIONS {
                let loss = pkd(tau, lw, reduction, true);
                let g = loss.forward_backward(s.view(), t.view()).unwrap().grad_student;
                let scale = max_abs(&g);
                assert!(scale > 0.0);
                for n in 0..n_ {
                    for h in 0..h_ {
                        for w in 0..w_ {
                            let sum: f64 = g.slice(s![n, .., h, w]).sum();
                            assert!(
                                sum.abs() <= 64.0 * eps * scale * c_ as f64,
                                "pixel_kd {reduction:?} {dims:?} tau={tau} pixel ({n},{h},{w}) sums to {sum:e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn losses_are_non_negative() {
    let mut rng = SplitMix64::new(20);
    for i in 0..40 {
        let dims = [1 + rng.below(3), 1 + rng.below(6), 1 + rng.below(5), 1 + rng.below(7)];
        let scale = [0.01, 1.0, 5.0, 20.0][i % 4];
        let (s, t) = pair(1000 + i as u64, dims, scale, i % 3);
        let tau = [0.5, 1.0, 4.0, 10.0][(i / 4) % 4];
        let l = cwd(tau, 1.0).forward(s.view(), t.view()).unwrap();
        assert!(l >= -1e-12 && l.is_finite(), "cwd {dims:?} tau={tau}: {l}");
        for reduction in REDUCTIONS {
            let l = pkd(tau, 1.0, reduction, i % 2 == 0).forward(s.view(), t.view()).unwrap();
            assert!(l >= -1e-12 && l.is_finite(), "pixel_kd {dims:?} tau={tau} {reduction:?}: {l}");
        }
    }
}

#[test]
fn identical_inputs_give_zero_loss_and_gradient() {
    let (s, _) = pair(30, [2, 3, 4, 5], 5.0, 5);
    for tau in [1.0, 4.0] {
        let out = cwd(tau, 3.0).forward_backward(s.view(), s.view()).unwrap();
        assert!(out.loss.abs() <= 1e-15, "cwd tau={tau}: loss {}", out.loss);
        assert!(max_abs(&out.grad_student) <= 1e-15, "cwd tau={tau}: student gradient");
        assert!(max_abs(out.grad_teacher.as_ref().unwrap()) <= 1e-15, "cwd tau={tau}: teacher gradient");
        for reduction in REDUCTIONS {
            let out = pkd(tau, 10.0, reduction, true).forward_backward(s.view(), s.view()).unwrap();
            assert!(out.loss.abs() <= 1e-15, "pixel_kd {reduction:?}: loss {}", out.loss);
            assert!(max_abs(&out.grad_student) <= 1e-15, "pixel_kd {reduction:?}: gradient");
        }
    }
}

#[test]
fn single_element_gives_zero() {
    for (a, b) in [(0.0f32, 0.0f32), (3.0, -7.0), (1e4, -1e4)] {
        let s = Array4::from_elem((1, 1, 1, 1), a);
        let t = Array4::from_elem((1, 1, 1, 1), b);
        let out = cwd(4.0, 3.0).forward_backward(s.view(), t.view()).unwrap();
        assert_eq!(out.loss, 0.0, "cwd 1x1x1x1 ({a}, {b})");
        assert_eq!(max_abs(&out.grad_student), 0.0);
        assert_eq!(max_abs(out.grad_teacher.as_ref().unwrap()), 0.0);
        for reduction in REDUCTIONS {
            let out = pkd(1.0, 10.0, reduction, false).forward_backward(s.view(), t.view()).unwrap();
            assert_eq!(out.loss, 0.0, "pixel_kd 1x1x1x1 {reduction:?}");
            assert_eq!(max_abs(&out.grad_student), 0.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Closed forms at extreme values.

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// KL(pT || pS) and both probability vectors for two-element rows, from logistic closed forms:
/// log p_1 = -softplus(-(z_1 - z_2)), log p_2 = -softplus(z_1 - z_2).
fn two_way(s: [f32; 2], t: [f32; 2], tau: f64) -> (f64, [f64; 2], [f64; 2], [f64; 2], [f64; 2]) {
    let ds = (s[0] as f64 - s[1] as f64) / tau;
    let dt = (t[0] as f64 - t[1] as f64) / tau;
    let ls = [-softplus(-ds), -softplus(ds)];
    let lt = [-softplus(-dt), -softplus(dt)];
    let pt = [lt[0].exp(), lt[1].exp()];
    let ps = [ls[0].exp(), ls[1].exp()];
    let kl = pt[0] * (lt[0] - ls[0]) + pt[1] * (lt[1] - ls[1]);
    (kl, ps, pt, ls, lt)
}

#[test]
fn extreme_logits_match_two_way_closed_forms() {
    let rows: [([f32; 2], [f32; 2]); 6] = [
        ([1e4, -1e4], [-1e4, 1e4]),               // every probability but one underflows, even in f64
        ([1e4, -1e4], [1e4, -1e4]),               // identical extremes
        ([-1e4, -1e4], [1e4, -1e4]),              // uniform student, saturated teacher
        ([10000.0, 10001.0], [10001.0, 10000.0]), // exp(1e4) overflows without the max subtracted
        ([0.0, 0.0], [3.0, 0.0]),
        ([-2.5, 7.0], [1.0, -1.0]),
    ];
    for (srow, trow) in rows {
        for tau in [1.0, 4.0] {
            let (kl, ps, pt, ls, lt) = two_way(srow, trow, tau);
            assert!(kl.is_finite());
            let lw = 3.0;
            // CWD on 1x1x1x2: one row.
            let s = Array4::from_shape_vec((1, 1, 1, 2), srow.to_vec()).unwrap();
            let t = Array4::from_shape_vec((1, 1, 1, 2), trow.to_vec()).unwrap();
            let out = cwd(tau, lw).forward_backward(s.view(), t.view()).unwrap();
            let what = format!("cwd {srow:?} vs {trow:?} tau={tau}");
            assert!(out.loss.is_finite(), "{what}");
            assert_relative_eq!(out.loss, lw * tau * tau * kl, max_relative = 1e-12, epsilon = 1e-300);
            for i in 0..2 {
                let gs = lw * tau * (ps[i] - pt[i]);
                let gt = lw * tau * pt[i] * (lt[i] - ls[i] - kl);
                assert!((out.grad_student[[0, 0, 0, i]] - gs).abs() <= 1e-12 * lw * tau, "{what}: dS[{i}]");
                let got_t = out.grad_teacher.as_ref().unwrap()[[0, 0, 0, i]];
                assert!((got_t - gt).abs() <= 1e-12 * lw * tau * (1.0 + kl), "{what}: dT[{i}] {got_t} vs {gt}");
            }
            // Pixel KD on 1x2x1x1: one pixel, C = 2.
            let s = Array4::from_shape_vec((1, 2, 1, 1), srow.to_vec()).unwrap();
            let t = Array4::from_shape_vec((1, 2, 1, 1), trow.to_vec()).unwrap();
            for reduction in REDUCTIONS {
                let divisor = if reduction == Reduction::Mean { 2.0 } else { 1.0 };
                let out = pkd(tau, lw, reduction, true).forward_backward(s.view(), t.view()).unwrap();
                assert_relative_eq!(out.loss, lw * tau * tau * kl / divisor, max_relative = 1e-12, epsilon = 1e-300);
                for i in 0..2 {
                    let gs = lw * tau * (ps[i] - pt[i]) / divisor;
                    assert!((out.grad_student[[0, i, 0, 0]] - gs).abs() <= 1e-12 * lw * tau, "pixel_kd {what}");
                }
            }
        }
    }
    // The hand values of the first row: KL = 2e4 / tau, loss = lw * tau * 2e4, gradient lw * tau * (1, -1).
    let s = Array4::from_shape_vec((1, 1, 1, 2), vec![1e4f32, -1e4]).unwrap();
    let t = Array4::from_shape_vec((1, 1, 1, 2), vec![-1e4f32, 1e4]).unwrap();
    let out = cwd(4.0, 1.0).forward_backward(s.view(), t.view()).unwrap();
    assert_relative_eq!(out.loss, 8e4, max_relative = 1e-14);
    assert_eq!(out.grad_student.iter().copied().collect::<Vec<_>>(), [4.0, -4.0]);
    assert_eq!(out.grad_teacher.unwrap().iter().copied().collect::<Vec<_>>(), [0.0, 0.0]);
}

#[test]
fn underflowing_student_probability_stays_finite() {
    // docs/losses.md §1.6: a student row [200, 0, 0, 0] against a teacher row [0, 200, 0, 0] at tau = 1 is NaN in
    // TorchDistiller's fp32 log(softmax); the log-softmax form gives 200.
    let s = Array4::from_shape_vec((1, 1, 2, 2), vec![200.0f32, 0.0, 0.0, 0.0]).unwrap();
    let t = Array4::from_shape_vec((1, 1, 2, 2), vec![0.0f32, 200.0, 0.0, 0.0]).unwrap();
    let out = cwd(1.0, 1.0).forward_backward(s.view(), t.view()).unwrap();
    let a = (-200.0f64).exp();
    assert_relative_eq!(out.loss, (200.0 - 200.0 * a) / (1.0 + 3.0 * a), max_relative = 1e-14);
    let g: Vec<f64> = out.grad_student.iter().copied().collect();
    for (got, want) in g.iter().zip([1.0, -1.0, 0.0, 0.0]) {
        assert!((got - want).abs() <= 1e-15, "{g:?}");
    }
    assert!(out.grad_teacher.unwrap().iter().all(|v| v.is_finite()));

    // The same across channels for pixel KD (C = 4, one pixel), with underflow at +-1e4 in a batch.
    let s = Array4::from_shape_vec((2, 4, 1, 1), vec![200.0f32, 0.0, 0.0, 0.0, 1e4, -1e4, 0.0, 0.0]).unwrap();
    let t = Array4::from_shape_vec((2, 4, 1, 1), vec![0.0f32, 200.0, 0.0, 0.0, -1e4, 1e4, 0.0, 0.0]).unwrap();
    let out = pkd(1.0, 1.0, Reduction::Sum, false).forward_backward(s.view(), t.view()).unwrap();
    // Second pixel: pT = (0, 1, 0, 0), log pS_2 = -2e4 (up to e^-1e4 terms): KL = 2e4.
    assert_relative_eq!(out.loss, 200.0 + 2e4, max_relative = 1e-14);
    assert!(out.grad_student.iter().all(|v| v.is_finite()));
}

// ---------------------------------------------------------------------------------------------------------
// Normalisation against a naive computation of our own.

/// `log p = z - LSE(z)` from scratch: LSE computed with the max subtracted.
pub(crate) fn naive_log_softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

/// The shared scenarios (`common::PAIR_SCENARIOS`, which the emulated kernels and the GPU run too): both
/// references against this file's naive computations, and a KL that is never negative.
#[test]
fn every_shared_scenario_matches_the_naive_computations() {
    for scenario in &PAIR_SCENARIOS {
        let (s, t) = scenario.logits();
        let s = Array4::from_shape_vec(scenario.dims, s).unwrap();
        let t = Array4::from_shape_vec(scenario.dims, t).unwrap();
        let (tau, lw) = (scenario.tau, scenario.loss_weight);
        let what = format!("{} {:?}", scenario.name, scenario.dims);

        let out = cwd(tau, lw).forward_backward(s.view(), t.view()).unwrap();
        if scenario.dims[2] * scenario.dims[3] == 1 {
            // Softmaxes of one value: exactly zero (the naive form, a difference of terms, is not exact).
            assert_eq!(out.loss, 0.0, "cwd {what}");
            assert_eq!(max_abs(&out.grad_student).max(max_abs(out.grad_teacher.as_ref().unwrap())), 0.0);
        } else {
            let (loss, gs, gt) = naive_cwd(&s, &t, tau, lw);
            let naive = CpuOutput { loss, grad_student: gs, grad_teacher: Some(gt) };
            assert_same_output(&format!("cwd {what}"), &out, &naive, 1e-11);
        }
        assert!(out.loss >= 0.0, "cwd {what}: loss {}", out.loss);

        let (reduction, tau2) = (scenario.reduction, scenario.scale_tau2);
        let out = pkd(tau, lw, reduction, tau2).forward_backward(s.view(), t.view()).unwrap();
        let (loss, g) = naive_pixel_kd(&s, &t, tau, lw, reduction, tau2);
        let naive = CpuOutput { loss, grad_student: g, grad_teacher: None };
        assert_same_output(&format!("pixel_kd {what}"), &out, &naive, 1e-11);
        assert!(out.loss >= 0.0, "pixel_kd {what}: loss {}", out.loss);
    }
}

#[test]
fn temperature_and_weight_scale_as_documented() {
    let dims = [2, 3, 4, 5];
    let (s, t) = pair(70, dims, 2.0, 2);
    // Dividing the logits by tau = 4 is exact (a power of two), so the tau = 4 loss is tau^2 times the tau = 1
    // loss of the divided logits, and the gradient tau times (the chain rule's 1/tau times tau^2) that one.
    let tau = 4.0;
    let (s4, t4) = (s.mapv(|v| v / 4.0), t.mapv(|v| v / 4.0));
    let hot = cwd(tau, 3.0).forward_backward(s.view(), t.view()).unwrap();
    let cold = cwd(1.0, 3.0).forward_backward(s4.view(), t4.view()).unwrap();
    assert_relative_eq!(hot.loss, tau * tau * cold.loss, max_relative = 1e-13);
    for (a, b) in hot.grad_student.iter().zip(cold.grad_student.iter()) {
        assert!((a - tau * b).abs() <= 1e-13 * max_abs(&hot.grad_student), "cwd gradient {a} vs {tau} * {b}");
    }
    for tau2 in [false, true] {
        let hot = pkd(tau, 3.0, Reduction::Mean, tau2).forward_backward(s.view(), t.view()).unwrap();
        let cold = pkd(1.0, 3.0, Reduction::Mean, tau2).forward_backward(s4.view(), t4.view()).unwrap();
        let (lk, gk) = if tau2 { (tau * tau, tau) } else { (1.0, 1.0 / tau) };
        assert_relative_eq!(hot.loss, lk * cold.loss, max_relative = 1e-13);
        for (a, b) in hot.grad_student.iter().zip(cold.grad_student.iter()) {
            assert!((a - gk * b).abs() <= 1e-13 * max_abs(&hot.grad_student), "pixel_kd tau2={tau2}: {a} vs {b}");
        }
        // scale_tau2 multiplies loss and gradient by exactly tau^2.
        let off = pkd(tau, 3.0, Reduction::Mean, false).forward_backward(s.view(), t.view()).unwrap();
        let on = pkd(tau, 3.0, Reduction::Mean, true).forward_backward(s.view(), t.view()).unwrap();
        assert_relative_eq!(on.loss, tau * tau * off.loss, max_relative = 1e-14);
    }
    // Linear in the weight; zero and negative weights are allowed.
    let one = cwd(2.0, 1.0).forward_backward(s.view(), t.view()).unwrap();
    for lw in [0.0, -2.0, 7.5] {
        let out = cwd(2.0, lw).forward_backward(s.view(), t.view()).unwrap();
        assert_relative_eq!(out.loss, lw * one.loss, max_relative = 1e-14, epsilon = 0.0);
        for (a, b) in out.grad_student.iter().zip(one.grad_student.iter()) {
            assert!((a - lw * b).abs() <= 1e-14 * (lw * b).abs() + 1e-300, "lw={lw}: {a} vs {b}");
        }
    }
}

#[test]
fn cwd_averages_over_images_and_channels() {
    // Rows are independent and the divisor is N*C: the loss of a batch is the mean of its images' losses.
    let (s, t) = pair(80, [3, 2, 4, 3], 2.0, 2);
    let loss = cwd(4.0, 3.0);
    let whole = loss.forward(s.view(), t.view()).unwrap();
    let parts: f64 = (0..3)
        .map(|n| loss.forward(s.slice(s![n..n + 1, .., .., ..]), t.slice(s![n..n + 1, .., .., ..])).unwrap())
        .sum();
    assert_relative_eq!(whole, parts / 3.0, max_relative = 1e-13);
    // Pixel KD with `sum` adds up over images.
    let p = pkd(1.0, 1.0, Reduction::Sum, false);
    let whole = p.forward(s.view(), t.view()).unwrap();
    let parts: f64 =
        (0..3).map(|n| p.forward(s.slice(s![n..n + 1, .., .., ..]), t.slice(s![n..n + 1, .., .., ..])).unwrap()).sum();
    assert_relative_eq!(whole, parts, max_relative = 1e-13);
}

#[test]
fn storage_dtype_does_not_change_the_reference() {
    // Values exact in every dtype (small multiples of 2^-3) give bitwise the same f64 result for f32, f16
    // and bf16 inputs: the CPU reference widens exactly and computes in f64.
    let mut rng = SplitMix64::new(90);
    let dims = (2, 3, 4, 5);
    let vals: Vec<f32> = (0..120).map(|_| ((rng.normal() * 16.0).round() / 8.0) as f32).collect();
    let vals2: Vec<f32> = (0..120).map(|_| ((rng.normal() * 16.0).round() / 8.0) as f32).collect();
    let s32 = Array4::from_shape_vec(dims, vals.clone()).unwrap();
    let t32 = Array4::from_shape_vec(dims, vals2.clone()).unwrap();
    let s16 = s32.mapv(f16::from_f32);
    let t16 = t32.mapv(f16::from_f32);
    let sb = s32.mapv(bf16::from_f32);
    let tb = t32.mapv(bf16::from_f32);
    assert!(
        s16.iter().zip(&vals).all(|(a, b)| a.to_f32() == *b) && sb.iter().zip(&vals).all(|(a, b)| a.to_f32() == *b)
    );
    let c = cwd(4.0, 3.0);
    let r32 = c.forward_backward(s32.view(), t32.view()).unwrap();
    let r16 = c.forward_backward(s16.view(), t16.view()).unwrap();
    let rb = c.forward_backward(sb.view(), tb.view()).unwrap();
    for other in [&r16, &rb] {
        assert_eq!(r32.loss.to_bits(), other.loss.to_bits());
        assert_eq!(r32.grad_student, other.grad_student);
        assert_eq!(r32.grad_teacher, other.grad_teacher);
    }
    let p = pkd(2.0, 10.0, Reduction::Mean, true);
    let a = p.forward_backward(s32.view(), t32.view()).unwrap();
    let b = p.forward_backward(s16.view(), t16.view()).unwrap();
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    assert_eq!(a.grad_student, b.grad_student);
}

#[test]
fn forward_returns_no_gradient_and_equals_forward_backward() {
    let (s, t) = pair(95, [1, 5, 3, 7], 2.0, 2);
    let c = cwd(4.0, 3.0);
    assert_eq!(
        c.forward(s.view(), t.view()).unwrap().to_bits(),
        c.forward_backward(s.view(), t.view()).unwrap().loss.to_bits()
    );
    let p = pkd(4.0, 3.0, Reduction::BatchMean, true);
    assert_eq!(
        p.forward(s.view(), t.view()).unwrap().to_bits(),
        p.forward_backward(s.view(), t.view()).unwrap().loss.to_bits()
    );
    // Non-standard (transposed) views are read by index, not by memory order.
    let st = s.clone().reversed_axes();
    let st = st.as_standard_layout().reversed_axes();
    assert_eq!(c.forward(st.view(), t.view()).unwrap().to_bits(), c.forward(s.view(), t.view()).unwrap().to_bits());
}
