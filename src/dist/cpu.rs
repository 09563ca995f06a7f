//! The CPU reference of DIST (`docs/losses.md §8`): f64 throughout, written to be obviously correct.

use ndarray::{Array4, ArrayView4};

use super::{DistConfig, DIST_EPS};
use crate::cpu::{log_softmax, CpuOutput, HostFloat, PairCall};
use crate::error::Result;

crate::cpu::pair_reference_calls! {
    /// DIST (segmentation form) on the CPU.
    pub struct DistCpu { config: DistConfig }
    "Loss and d loss / d student (`grad_teacher` is `None`).", same_shape
}

/// `rho(a, b)` and `d rho / d a` (§8.2). Where `a` is constant (`||a - mean a|| = 0`) the second term of the
/// derivative, which vanishes as `a` approaches a constant, is left out rather than evaluated as 0/0.
fn pearson(a: &[f64], b: &[f64]) -> (f64, Vec<f64>) {
    let k = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / k, b.iter().sum::<f64>() / k);
    let ac: Vec<f64> = a.iter().map(|v| v - ma).collect();
    let bc: Vec<f64> = b.iter().map(|v| v - mb).collect();
    let na = ac.iter().map(|v| v * v).sum::<f64>().sqrt();
    let nb = bc.iter().map(|v| v * v).sum::<f64>().sqrt();
    let den = na * nb + DIST_EPS;
    let dot: f64 = ac.iter().zip(&bc).map(|(x, y)| x * y).sum();
    let second = if na > 0.0 { dot * nb / (na * den * den) } else { 0.0 };
    // Both centred vectors sum to zero, so this derivative needs no re-centring.
    let grad = ac.iter().zip(&bc).map(|(x, y)| y / den - second * x).collect();
    (dot / den, grad)
}

impl DistCpu {
    fn compute_pair<T: HostFloat>(&self, call: PairCall<'_, T>) -> Result<CpuOutput> {
        let PairCall { student, teacher, shape, upstream, want_grad } = call;
        let cfg = &self.config;
        let (cn, m) = (shape.c, shape.n * shape.plane());
        // Rows of C probabilities, one per pixel, in (n, h, w) order (the order does not matter).
        let probs = |x: &ArrayView4<'_, T>| -> Vec<Vec<f64>> {
            let mut rows = Vec::with_capacity(m);
            for n in 0..shape.n {
                for h in 0..shape.h {
                    for w in 0..shape.w {
                        let z: Vec<f64> = (0..cn).map(|c| x[[n, c, h, w]].to_f64() / cfg.tau).collect();
                        rows.push(log_softmax(&z).into_iter().map(f64::exp).collect::<Vec<f64>>());
                    }
                }
            }
            rows
        };
        let (ps, pt) = (probs(&student), probs(&teacher));
        let scale = cfg.loss_weight * cfg.tau * cfg.tau;
        // d L / d p_s, accumulated from both terms.
        let mut gp = vec![vec![0.0; cn]; if want_grad { m } else { 0 }];
        let mut inter_sum = 0.0;
        for (r, (a, b)) in ps.iter().zip(&pt).enumerate() {
            let (rho, d) = pearson(a, b);
            inter_sum += rho;
            if want_grad {
                for (g, dv) in gp[r].iter_mut().zip(d) {
                    *g -= upstream * scale * cfg.beta / m as f64 * dv;
                }
            }
        }
        let mut intra_sum = 0.0;
        for c in 0..cn {
            let a: Vec<f64> = ps.iter().map(|row| row[c]).collect();
            let b: Vec<f64> = pt.iter().map(|row| row[c]).collect();
            let (rho, d) = pearson(&a, &b);
            intra_sum += rho;
            if want_grad {
                for (row, dv) in gp.iter_mut().zip(d) {
                    row[c] -= upstream * scale * cfg.gamma / cn as f64 * dv;
                }
            }
        }
        let inter = 1.0 - inter_sum / m as f64;
        let intra = 1.0 - intra_sum / cn as f64;
        let loss = scale * (cfg.beta * inter + cfg.gamma * intra);
        let mut grad = Array4::<f64>::zeros(if want_grad { shape.dims() } else { [0; 4] });
        if want_grad {
            // Through the softmax of each pixel: dz = p * (g - p . g) / tau.
            let mut r = 0;
            for n in 0..shape.n {
                for h in 0..shape.h {
                    for w in 0..shape.w {
                        let (p, g) = (&ps[r], &gp[r]);
                        let dot: f64 = p.iter().zip(g).map(|(x, y)| x * y).sum();
                        for c in 0..cn {
                            grad[[n, c, h, w]] = p[c] * (g[c] - dot) / cfg.tau;
                        }
                        r += 1;
                    }
                }
            }
        }
        Ok(CpuOutput { loss, grad_student: grad, grad_teacher: None })
    }
}
