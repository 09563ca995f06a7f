//! The CPU reference of SKD (`docs/losses.md §9`): f64, one image at a time, through the `C x C` Gram matrices
//! (never the `P x P` similarities).

use ndarray::{Array4, ArrayView4};

use super::SkdConfig;
use crate::cpu::{CpuOutput, HostFloat};
use crate::error::Result;
use crate::relation::{check_shapes, PixelFeatures};

/// SKD on the CPU.
#[derive(Debug, Clone)]
pub struct SkdCpu {
    config: SkdConfig,
}

crate::cpu::pair_reference_calls!(
    SkdCpu,
    SkdConfig,
    "Loss and d loss / d student (`grad_teacher` is `None`). The teacher `[N, Ct, H, W]` may have another \
     channel count than the student `[N, Cs, H, W]`."
);

/// `X Y^T` of two `[C, P]` feature sets: `[Cx, Cy]`, row-major.
fn gram(x: &PixelFeatures, y: &PixelFeatures) -> Vec<f64> {
    let mut g = Vec::with_capacity(x.c * y.c);
    for a in 0..x.c {
        let xa = x.channel(a);
        for b in 0..y.c {
            g.push(xa.iter().zip(y.channel(b)).map(|(u, v)| u * v).sum());
        }
    }
    g
}

fn sum_sq(g: &[f64]) -> f64 {
    g.iter().map(|v| v * v).sum()
}

/// `G Y` for `G` `[Cx, Cy]` and `Y` `[Cy, P]`: `[Cx, P]`.
fn apply(g: &[f64], y: &PixelFeatures) -> Vec<f64> {
    let (cx, p) = (g.len() / y.c, y.p);
    let mut out = vec![0.0; cx * p];
    for a in 0..cx {
        let row = &mut out[a * p..(a + 1) * p];
        for b in 0..y.c {
            let coef = g[a * y.c + b];
            for (o, v) in row.iter_mut().zip(y.channel(b)) {
                *o += coef * v;
            }
        }
    }
    out
}

impl SkdCpu {
    fn compute<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        upstream: f64,
        want_grad: bool,
    ) -> Result<CpuOutput> {
        let shapes = check_shapes(student.shape(), teacher.shape())?;
        let s = shapes.student;
        let pooling = self.config.pool.pooling();
        let (ph, pw) = pooling.pooled(s.h, s.w);
        let p = (ph * pw) as f64;
        let scale = self.config.loss_weight / (s.n as f64 * p * p);
        let mut grad = Array4::<f64>::zeros(if want_grad { s.dims() } else { [0; 4] });
        let image_len = s.c * s.plane();
        let mut total = 0.0;
        for n in 0..s.n {
            let fs = PixelFeatures::new(&student, n, pooling);
            let ft = PixelFeatures::new(&teacher, n, pooling);
            let (gss, gst, gtt) = (gram(&fs, &fs), gram(&fs, &ft), gram(&ft, &ft));
            // With the teacher equal to the student the three Gram matrices are bitwise equal, so this sum (and
            // the gradient's difference below) is exactly 0.
            total += (sum_sq(&gss) - 2.0 * sum_sq(&gst)) + sum_sq(&gtt);
            if want_grad {
                let (own, cross) = (apply(&gss, &fs), apply(&gst, &ft));
                let factor = upstream * 4.0 * scale;
                let d_hat: Vec<f64> = own.iter().zip(&cross).map(|(a, b)| factor * (a - b)).collect();
                let image = grad.as_slice_mut().expect("a new array is contiguous");
                fs.backward(&d_hat, &mut image[n * image_len..(n + 1) * image_len]);
            }
        }
        Ok(CpuOutput { loss: scale * total, grad_student: grad, grad_teacher: None })
    }
}
