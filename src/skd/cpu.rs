//! The CPU reference of SKD (`docs/losses.md §9`): f64, one image at a time, through the `C x C` Gram matrices
//! (never the `P x P` similarities).

use ndarray::Array4;

use super::SkdConfig;
use crate::cpu::{CpuOutput, HostFloat, PairCall};
use crate::error::Result;
use crate::relation::{PixelFeatures, RelationShapes};

crate::cpu::pair_reference_calls! {
    /// SKD on the CPU.
    pub struct SkdCpu { config: SkdConfig } relation
}

/// `X Y^T` of `X` `[Cx, P]` and `Y` `[Cy, P]` (row-major): `[Cx, Cy]`.
fn gram(x: &[f64], y: &[f64], p: usize) -> Vec<f64> {
    let mut g = Vec::with_capacity((x.len() / p) * (y.len() / p));
    for xa in x.chunks_exact(p) {
        for yb in y.chunks_exact(p) {
            g.push(xa.iter().zip(yb).map(|(u, v)| u * v).sum());
        }
    }
    g
}

/// `<A, B>`, the sum of the elementwise products.
fn inner(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(u, v)| u * v).sum()
}

/// `G Y` for `G` `[Cx, Cy]` and `Y` `[Cy, P]`: `[Cx, P]`, added to `out`.
fn apply_add(g: &[f64], y: &[f64], p: usize, out: &mut [f64]) {
    let cy = y.len() / p;
    for (a, row) in out.chunks_exact_mut(p).enumerate() {
        for (b, yb) in y.chunks_exact(p).enumerate() {
            let coef = g[a * cy + b];
            for (o, v) in row.iter_mut().zip(yb) {
                *o += coef * v;
            }
        }
    }
}

/// One image's `|A_S - A_T|_F^2` and, when `grad` is given, `d/dS` of it (`[Cs, P]`, written).
///
/// With `Cs != Ct`: `|G_SS|^2 - 2 |G_ST|^2 + |G_TT|^2` and `4 (G_SS S - G_ST T)`. With `Cs = Ct` the student may
/// be close to its teacher, where those terms are large and nearly cancel; there, with `D = S - T` and
/// `A_S - A_T = D^T S + T^T D`, the same quantities are `<G_DD, G_SS + G_TT> + 2 <G_DT, G_SD>` and
/// `4 (G_SD S + G_ST D)`, every term of the size of the difference (and exactly 0 when `D = 0`).
fn image_term(s: &[f64], t: &[f64], p: usize, grad: Option<&mut [f64]>) -> f64 {
    if s.len() != t.len() {
        let (gss, gst, gtt) = (gram(s, s, p), gram(s, t, p), gram(t, t, p));
        if let Some(grad) = grad {
            let mut cross = vec![0.0; s.len()];
            grad.iter_mut().for_each(|v| *v = 0.0);
            apply_add(&gss, s, p, grad);
            apply_add(&gst, t, p, &mut cross);
            grad.iter_mut().zip(&cross).for_each(|(g, c)| *g = 4.0 * (*g - c));
        }
        return (inner(&gss, &gss) - 2.0 * inner(&gst, &gst)) + inner(&gtt, &gtt);
    }
    let d: Vec<f64> = s.iter().zip(t).map(|(a, b)| a - b).collect();
    let (gdd, gss, gtt) = (gram(&d, &d, p), gram(s, s, p), gram(t, t, p));
    let (gdt, gsd) = (gram(&d, t, p), gram(s, &d, p));
    if let Some(grad) = grad {
        grad.iter_mut().for_each(|v| *v = 0.0);
        apply_add(&gsd, s, p, grad);
        apply_add(&gram(s, t, p), &d, p, grad);
        grad.iter_mut().for_each(|g| *g *= 4.0);
    }
    inner(&gdd, &gss) + inner(&gdd, &gtt) + 2.0 * inner(&gdt, &gsd)
}

impl SkdCpu {
    fn compute_pair<T: HostFloat>(&self, call: PairCall<'_, T, RelationShapes>) -> Result<CpuOutput> {
        let PairCall { student, teacher, shape: shapes, upstream, want_grad } = call;
        let s = shapes.student;
        let pooling = self.config.pool.pooling();
        let (ph, pw) = pooling.pooled(s.h, s.w);
        let p = ph * pw;
        let scale = self.config.loss_weight / (s.n as f64 * p as f64 * p as f64);
        let mut grad = Array4::<f64>::zeros(if want_grad { s.dims() } else { [0; 4] });
        let image_len = s.c * s.plane();
        let mut d_hat = vec![0.0; if want_grad { s.c * p } else { 0 }];
        let mut total = 0.0;
        for n in 0..s.n {
            let fs = PixelFeatures::new(&student, n, pooling);
            let ft = PixelFeatures::new(&teacher, n, pooling);
            total += image_term(&fs.hat, &ft.hat, p, want_grad.then_some(&mut d_hat[..]));
            if want_grad {
                d_hat.iter_mut().for_each(|g| *g *= upstream * scale);
                let image = grad.as_slice_mut().expect("a new array is contiguous");
                fs.backward(&d_hat, &mut image[n * image_len..(n + 1) * image_len]);
            }
        }
        Ok(CpuOutput { loss: scale * total, grad_student: grad, grad_teacher: None })
    }
}
