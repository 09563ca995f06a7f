//! The SemCKD CPU reference: recorded fixtures, finite differences of every gradient, properties, bad
//! inputs, and adaptive pooling against a direct formula.

use crate::common;

use std::path::Path;

use kd_kernels::fixture::{Backend, Fixture};
use kd_kernels::semckd::{
    adaptive_avg_pool, adaptive_avg_pool_backward, pool_window, SemckdConfig, SemckdCpu, SemckdCpuOutput,
};
use kd_kernels::verify;
use kd_kernels::KdError;
use ndarray::{Array4, ArrayView4};
use semckd_support::Case;

/// The cases and reference the CPU and emulator SemCKD tests share.
#[path = "../semckd_support/mod.rs"]
mod semckd_support;

fn config() -> SemckdConfig {
    SemckdConfig { loss_weight: 400.0, eps: None }
}

fn run(case: &Case<f32>, cfg: SemckdConfig) -> SemckdCpuOutput {
    SemckdCpu::new(cfg).unwrap().forward_backward(&case.cpu_inputs()).unwrap()
}

#[test]
fn fixtures_match_on_the_cpu() {
    let mut seen = 0;
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("semckd_") {
            continue;
        }
        let checks = verify::check(&Fixture::load(&path).unwrap(), &Backend::Cpu).unwrap();
        assert!(checks.iter().any(|c| c.output == "attention"), "{name}: attention is checked");
        for c in checks {
            assert!(c.pass(), "{name} {}: {:?}", c.output, c.comparison);
        }
        seen += 1;
    }
    assert!(seen >= 1, "no semckd fixture found");
}

fn step(x: f32, bits: i32) -> f32 {
    2f32.powi(x.abs().max(1.0).log2().floor() as i32 - bits)
}

/// Central differences of the loss with respect to every element of the buffer `pick` selects.
fn numeric(
    case: &mut Case<f32>,
    cfg: SemckdConfig,
    bits: i32,
    pick: &dyn Fn(&mut Case<f32>) -> &mut Vec<f32>,
) -> Vec<f64> {
    let n = pick(case).len();
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let v = pick(case)[k];
        let h = step(v, bits);
        pick(case)[k] = v + h;
        let plus = run(case, cfg).loss;
        pick(case)[k] = v - h;
        let minus = run(case, cfg).loss;
        pick(case)[k] = v;
        out.push((plus - minus) / (2.0 * h as f64));
    }
    out
}

fn assert_close(what: &str, numeric: &[f64], analytic: &[f64]) {
    assert_close_tol(what, numeric, analytic, 1e-4)
}

fn assert_close_tol(what: &str, numeric: &[f64], analytic: &[f64], tol: f64) {
    assert_eq!(numeric.len(), analytic.len(), "{what}");
    let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && scale.is_finite(), "{what}: degenerate gradient");
    let worst = numeric.iter().zip(analytic).map(|(n, a)| (n - a).abs()).fold(0.0, f64::max);
    assert!(worst <= tol * scale, "{what}: max err {worst:e} vs scale {scale:e}");
}

#[test]
fn finite_differences_of_every_gradient() {
    for cfg in [config(), SemckdConfig { loss_weight: 3.0, eps: Some(1e3) }] {
        // Student 1 (3x3) is smaller than teacher 0 (5x5: non-integer windows) and larger than teacher 1 (2x3).
        let mut case = Case::<f32>::new(11, 8, &[[2, 4, 4], [3, 3, 2]], &[[2, 5, 5], [3, 2, 3]]);
        let r = run(&case, cfg);
        let (s, t) = (2, 2);
        for i in 0..s {
            let n = numeric(&mut case, cfg, 10, &|c| &mut c.student[i]);
            // The Gram path's gradient is small next to the loss (the normalisation divides by ||z|| ~ D):
            // a larger step (2^-10) and a 1e-4 bound keeps the loss's f64 rounding out of it.
            assert_close_tol(&format!("student {i}"), &n, r.grad_student[i].as_slice().unwrap(), 1e-4);
            for j in 0..t {
                let n = numeric(&mut case, cfg, 10, &|c| &mut c.proj[i * t + j]);
                assert_close(&format!("proj {i}.{j}"), &n, r.grad_proj[i][j].as_slice().unwrap());
            }
        }
        for (side, count) in [("query", s), ("key", t)] {
            for l in 0..count {
                let g = if side == "query" { &r.grad_query[l] } else { &r.grad_key[l] };
                let analytic: [Vec<f64>; 4] = [
                    g.linear1_weight.iter().copied().collect(),
                    g.linear1_bias.to_vec(),
                    g.linear2_weight.iter().copied().collect(),
                    g.linear2_bias.to_vec(),
                ];
                for (k, a) in analytic.iter().enumerate() {
                    let n = numeric(&mut case, cfg, 10, &|c| {
                        if side == "query" {
                            &mut c.query[l][k]
                        } else {
                            &mut c.key[l][k]
                        }
                    });
                    assert_close(&format!("{side} {l} param {k}"), &n, a);
                }
            }
        }
    }
}

#[test]
fn backward_scales_by_upstream() {
    let case = Case::<f32>::new(12, 8, &[[2, 4, 4]], &[[2, 4, 4], [1, 2, 2]]);
    let cpu = SemckdCpu::new(config()).unwrap();
    let a = cpu.forward_backward(&case.cpu_inputs()).unwrap();
    let b = cpu.backward(&case.cpu_inputs(), -2.5).unwrap();
    for (x, y) in a.grad_proj[0][1].iter().zip(b.grad_proj[0][1].iter()) {
        assert!((y + 2.5 * x).abs() <= 1e-12 * x.abs().max(1e-300));
    }
}

#[test]
fn attention_rows_sum_to_one() {
    let case = Case::<f32>::new(13, 12, &[[2, 4, 4], [3, 2, 2], [1, 8, 8]], &[[2, 4, 4], [3, 3, 3]]);
    let r = run(&case, config());
    for b in 0..12 {
        for i in 0..3 {
            let sum: f64 = (0..2).map(|j| r.attention[[b, i, j]]).sum();
            assert!((sum - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn identical_proj_and_pooled_teacher_give_zero() {
    let mut case = Case::<f32>::new(14, 8, &[[2, 2, 2], [2, 4, 4]], &[[3, 4, 4], [2, 2, 2]]);
    let l = case.layers.clone();
    for i in 0..2 {
        for j in 0..2 {
            let [_, _, h, _] = l.pair_shape(i, j);
            let t = ArrayView4::from_shape(l.teacher_shape(j), &case.teacher[j]).unwrap();
            let pooled = adaptive_avg_pool(t, h, h).unwrap();
            // Integer ratios here (4 -> 2, 4 -> 4): the averages of multiples of 2^-10 over 1 or 4 are exact.
            case.proj[i * 2 + j] = pooled.iter().map(|&v| v as f32).collect();
        }
    }
    let r = run(&case, config());
    assert_eq!(r.loss, 0.0);
    for row in &r.grad_proj {
        for g in row {
            assert!(g.iter().all(|&v| v == 0.0));
        }
    }
    assert!(r.grad_query.iter().all(|g| g.linear1_weight.iter().all(|&v| v == 0.0)));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let case = Case::<f32>::new(15, 8, &[[2, 4, 4], [2, 2, 2]], &[[2, 4, 4], [1, 2, 2]]);
    let cpu = SemckdCpu::new(config()).unwrap();
    // A missing pair.
    let mut inputs = case.cpu_inputs();
    inputs.proj[1].pop();
    assert!(matches!(cpu.forward(&inputs), Err(KdError::ShapeMismatch { .. })));
    // A pair of the wrong size.
    let mut inputs = case.cpu_inputs();
    inputs.proj[0][1] = inputs.proj[0][0];
    assert!(matches!(cpu.forward(&inputs), Err(KdError::ShapeMismatch { .. })));
    // Inconsistent batch sizes.
    let other = Case::<f32>::new(16, 4, &[[2, 4, 4]], &[[2, 4, 4]]);
    let mut inputs = case.cpu_inputs();
    inputs.teacher[1] = other.cpu_inputs().teacher[0];
    assert!(matches!(cpu.forward(&inputs), Err(KdError::ShapeMismatch { .. })));
    // An MLP of the wrong width (built for B = 4).
    let mut inputs = case.cpu_inputs();
    let narrow = other.cpu_inputs();
    inputs.query[0] = narrow.query[0];
    assert!(matches!(cpu.forward(&inputs), Err(KdError::ShapeMismatch { .. })));
    inputs.query[0].linear2_bias = narrow.query[0].linear2_bias;
    assert!(cpu.forward(&inputs).is_err());
    // A missing key MLP.
    let mut inputs = case.cpu_inputs();
    inputs.key.pop();
    assert!(matches!(cpu.forward(&inputs), Err(KdError::ShapeMismatch { .. })));
    // B < 4: no embedding width.
    let tiny = Case::<f32>::new(17, 3, &[[1, 2, 2]], &[[1, 2, 2]]);
    assert!(cpu.forward(&tiny.cpu_inputs()).is_err());
    assert!(SemckdCpu::new(SemckdConfig { loss_weight: f64::NAN, eps: None }).is_err());
    assert!(SemckdCpu::new(SemckdConfig { loss_weight: 1.0, eps: Some(0.0) }).is_err());
}

#[test]
fn adaptive_pooling_matches_the_direct_formula() {
    let mut rng = common::SplitMix64::new(18);
    for (h, w, oh, ow) in [(7, 7, 3, 3), (6, 9, 4, 4), (5, 5, 5, 5), (8, 8, 2, 2), (3, 5, 2, 4), (2, 2, 3, 3)] {
        let x = Array4::from_shape_fn((2, 3, h, w), |_| rng.uniform() as f32 - 0.5);
        let y = adaptive_avg_pool(x.view(), oh, ow).unwrap();
        for ((n, c, oy, ox), &v) in y.indexed_iter() {
            // start = floor(o * In / Out), end = ceil((o + 1) * In / Out), written with floats.
            let y0 = ((oy * h) as f64 / oh as f64).floor() as usize;
            let y1 = (((oy + 1) * h) as f64 / oh as f64).ceil() as usize;
            let x0 = ((ox * w) as f64 / ow as f64).floor() as usize;
            let x1 = (((ox + 1) * w) as f64 / ow as f64).ceil() as usize;
            assert_eq!(pool_window(oy, h, oh), (y0, y1));
            let mut sum = 0.0;
            for a in y0..y1 {
                for b in x0..x1 {
                    sum += x[[n, c, a, b]] as f64;
                }
            }
            assert!((v - sum / ((y1 - y0) * (x1 - x0)) as f64).abs() < 1e-12);
        }
        // Backward: <g, pool(x)> is linear in x, so its gradient is pool_backward(g), checked by the adjoint.
        let g = Array4::from_shape_fn((2, 3, oh, ow), |_| rng.uniform() - 0.5);
        let gx = adaptive_avg_pool_backward(g.view(), h, w).unwrap();
        let lhs: f64 = (&g * &y).sum();
        let rhs: f64 = gx.iter().zip(x.iter()).map(|(a, &b)| a * b as f64).sum();
        assert!((lhs - rhs).abs() < 1e-12, "{h}x{w} -> {oh}x{ow}");
    }
}
