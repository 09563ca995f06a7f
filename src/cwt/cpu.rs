//! The CPU reference of CWT: f64 throughout, one pixel at a time, written to be obviously correct
//! (`docs/losses.md §5.3`, §5.4).

use ndarray::{Array1, Array2, Array4, ArrayView4};

use super::{CwtConfig, MlpParams};
use crate::dtype::HostFloat;
use crate::error::Result;

/// What [`CwtCpu`] returns: the loss and every gradient, in f64.
#[derive(Debug, Clone)]
pub struct CwtOutput {
    /// The scalar loss.
    pub loss: f64,
    /// d loss / d student `[N, Cs, H, W]` (all dimensions 0 for `forward`).
    pub grad_student: Array4<f64>,
    /// d loss / d `W1` `[Ch, Cs]`.
    pub grad_w1: Array2<f64>,
    /// d loss / d `b1` `[Ch]`.
    pub grad_b1: Array1<f64>,
    /// d loss / d `W2` `[Ct, Ch]`.
    pub grad_w2: Array2<f64>,
    /// d loss / d `b2` `[Ct]`.
    pub grad_b2: Array1<f64>,
}

crate::cpu::reference_config! {
    /// CWT on the CPU, with the same surface as [`super::CwtCuda`].
    pub struct CwtCpu { config: CwtConfig }
}

impl CwtCpu {
    /// The loss alone.
    pub fn forward<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        params: &MlpParams<'_>,
    ) -> Result<f64> {
        Ok(self.compute(student, teacher, params, 1.0, false)?.loss)
    }

    /// Loss and every gradient.
    pub fn forward_backward<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        params: &MlpParams<'_>,
    ) -> Result<CwtOutput> {
        self.compute(student, teacher, params, 1.0, true)
    }

    /// Gradients times the upstream gradient `upstream` (d total / d loss); `loss` is filled too, unscaled.
    pub fn backward<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        params: &MlpParams<'_>,
        upstream: f64,
    ) -> Result<CwtOutput> {
        self.compute(student, teacher, params, upstream, true)
    }

    // Index loops read as the formulas of docs/losses.md §5.4.
    #[allow(clippy::needless_range_loop)]
    fn compute<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        params: &MlpParams<'_>,
        upstream: f64,
        want_grad: bool,
    ) -> Result<CwtOutput> {
        let shapes = params.shapes()?;
        let (s, t) = shapes.check_features(student.shape(), teacher.shape())?;
        let (cs, ch, ct) = (shapes.cs, shapes.ch, shapes.ct);
        let d = self.config.divisor(&t);
        let w = self.config.loss_weight;
        let w1 = params.w1.mapv(f64::from);
        let b1 = params.b1.mapv(f64::from);
        let w2 = params.w2.mapv(f64::from);
        let b2 = params.b2.mapv(f64::from);
        let dims = |d: [usize; 4]| if want_grad { d } else { [0; 4] };
        let mut out = CwtOutput {
            loss: 0.0,
            grad_student: Array4::zeros(dims(s.dims())),
            grad_w1: Array2::zeros(if want_grad { (ch, cs) } else { (0, 0) }),
            grad_b1: Array1::zeros(if want_grad { ch } else { 0 }),
            grad_w2: Array2::zeros(if want_grad { (ct, ch) } else { (0, 0) }),
            grad_b2: Array1::zeros(if want_grad { ct } else { 0 }),
        };
        let mut squares = 0.0;
        let (mut x, mut a, mut z, mut dy, mut da) =
            (vec![0.0; cs], vec![0.0; ch], vec![0.0; ch], vec![0.0; ct], vec![0.0; ch]);
        for n in 0..s.n {
            for yy in 0..s.h {
                for xx in 0..s.w {
                    for (c, v) in x.iter_mut().enumerate() {
                        *v = student[[n, c, yy, xx]].to_f64();
                    }
                    for h in 0..ch {
                        a[h] = b1[h] + (0..cs).map(|c| w1[[h, c]] * x[c]).sum::<f64>();
                        z[h] = a[h].max(0.0);
                    }
                    for o in 0..ct {
                        let y = b2[o] + (0..ch).map(|h| w2[[o, h]] * z[h]).sum::<f64>();
                        let e = y - teacher[[n, o, yy, xx]].to_f64();
                        squares += e * e;
                        dy[o] = upstream * 2.0 * w * e / d;
                    }
                    if !want_grad {
                        continue;
                    }
                    for o in 0..ct {
                        out.grad_b2[o] += dy[o];
                        for h in 0..ch {
                            out.grad_w2[[o, h]] += dy[o] * z[h];
                        }
                    }
                    for h in 0..ch {
                        let dz: f64 = (0..ct).map(|o| w2[[o, h]] * dy[o]).sum();
                        // ReLU'(0) = 0, as PyTorch.
                        da[h] = if a[h] > 0.0 { dz } else { 0.0 };
                        out.grad_b1[h] += da[h];
                        for c in 0..cs {
                            out.grad_w1[[h, c]] += da[h] * x[c];
                        }
                    }
                    for c in 0..cs {
                        out.grad_student[[n, c, yy, xx]] = (0..ch).map(|h| w1[[h, c]] * da[h]).sum();
                    }
                }
            }
        }
        out.loss = w * squares / d;
        Ok(out)
    }
}
