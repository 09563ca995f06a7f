//! The CPU reference of PKD (`docs/losses.md §7`): f64 throughout, written to be obviously correct.

use ndarray::{Array4, ArrayView4};

use super::{check_levels, PkdConfig, PKD_EPS};
use crate::cpu::HostFloat;
use crate::error::Result;
use crate::shape::Nchw;

/// What [`PkdCpu`] returns.
#[derive(Debug, Clone)]
pub struct PkdCpuOutput {
    /// The loss, summed over the levels and weighted.
    pub loss: f64,
    /// Each level's weighted term (`loss_weight * 0.5 * mean (S_hat - T_hat)^2`); they sum to `loss`.
    pub level_losses: Vec<f64>,
    /// d loss / d student per level (times the upstream gradient for `backward`); empty for `forward`.
    pub grad_student: Vec<Array4<f64>>,
}

/// One channel's statistics over its `M` values.
struct ChannelStats {
    mean: f64,
    std: f64,
}

impl ChannelStats {
    /// Mean and unbiased standard deviation. The mean is taken as `x0 + mean(x - x0)`, so that a constant
    /// channel gets its value back exactly and a standard deviation of exactly 0 (§7.3), whatever `M`.
    fn of(values: &[f64]) -> Self {
        let pivot = values[0];
        let m = values.len() as f64;
        let mean = pivot + values.iter().map(|v| v - pivot).sum::<f64>() / m;
        let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
        ChannelStats { mean, std: (ss / (m - 1.0)).sqrt() }
    }

    fn normalise(&self, v: f64) -> f64 {
        (v - self.mean) / (self.std + PKD_EPS)
    }
}

/// The values of channel `c` of `x`, over (n, h, w) in that order.
fn channel<T: HostFloat>(x: &ArrayView4<'_, T>, shape: &Nchw, c: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(shape.n * shape.plane());
    for n in 0..shape.n {
        for h in 0..shape.h {
            for w in 0..shape.w {
                out.push(x[[n, c, h, w]].to_f64());
            }
        }
    }
    out
}

crate::cpu::reference_config! {
    /// PKD on the CPU over a list of levels.
    pub struct PkdCpu { config: PkdConfig }
}

impl PkdCpu {
    /// The loss alone.
    pub fn forward<T: HostFloat>(&self, student: &[ArrayView4<'_, T>], teacher: &[ArrayView4<'_, T>]) -> Result<f64> {
        Ok(self.compute(student, teacher, 1.0, false)?.loss)
    }

    /// The loss, its per-level terms and d loss / d student per level.
    pub fn forward_backward<T: HostFloat>(
        &self,
        student: &[ArrayView4<'_, T>],
        teacher: &[ArrayView4<'_, T>],
    ) -> Result<PkdCpuOutput> {
        self.compute(student, teacher, 1.0, true)
    }

    /// The gradients of [`Self::forward_backward`] times `upstream` (d total / d loss); the loss is filled too.
    pub fn backward<T: HostFloat>(
        &self,
        student: &[ArrayView4<'_, T>],
        teacher: &[ArrayView4<'_, T>],
        upstream: f64,
    ) -> Result<PkdCpuOutput> {
        self.compute(student, teacher, upstream, true)
    }

    fn compute<T: HostFloat>(
        &self,
        student: &[ArrayView4<'_, T>],
        teacher: &[ArrayView4<'_, T>],
        upstream: f64,
        want_grad: bool,
    ) -> Result<PkdCpuOutput> {
        let s_dims: Vec<&[usize]> = student.iter().map(|v| v.shape()).collect();
        let t_dims: Vec<&[usize]> = teacher.iter().map(|v| v.shape()).collect();
        let shapes = check_levels(&s_dims, &t_dims)?;
        let w = self.config.loss_weight;
        let mut level_losses = Vec::with_capacity(shapes.len());
        let mut grads = Vec::new();
        for ((s, t), shape) in student.iter().zip(teacher).zip(&shapes) {
            let numel = shape.numel() as f64;
            let m = (shape.n * shape.plane()) as f64;
            let mut sq = 0.0;
            let mut grad = Array4::<f64>::zeros(if want_grad { shape.dims() } else { [0; 4] });
            for c in 0..shape.c {
                let xs = channel(s, shape, c);
                let xt = channel(t, shape, c);
                let (st_s, st_t) = (ChannelStats::of(&xs), ChannelStats::of(&xt));
                let diff: Vec<f64> = xs.iter().zip(&xt).map(|(&a, &b)| st_s.normalise(a) - st_t.normalise(b)).collect();
                sq += diff.iter().map(|d| d * d).sum::<f64>();
                if !want_grad {
                    continue;
                }
                // §7.2: g = dL/dx_hat; through the standardisation, whose std depends on every value.
                let g: Vec<f64> = diff.iter().map(|d| upstream * w * d / numel).collect();
                let g_mean = g.iter().sum::<f64>() / m;
                let proj: f64 = g.iter().zip(&xs).map(|(gi, xi)| gi * (xi - st_s.mean)).sum();
                let den = st_s.std + PKD_EPS;
                // A constant channel: the std has no derivative at 0; like torch's `std` backward (0 there), the
                // term through the std is dropped (§7.3).
                let second = if st_s.std > 0.0 { proj / (den * den * (m - 1.0) * st_s.std) } else { 0.0 };
                let mut i = 0;
                for n in 0..shape.n {
                    for h in 0..shape.h {
                        for x in 0..shape.w {
                            grad[[n, c, h, x]] = (g[i] - g_mean) / den - (xs[i] - st_s.mean) * second;
                            i += 1;
                        }
                    }
                }
            }
            level_losses.push(w * 0.5 * sq / numel);
            if want_grad {
                grads.push(grad);
            }
        }
        Ok(PkdCpuOutput { loss: level_losses.iter().sum(), level_losses, grad_student: grads })
    }
}
