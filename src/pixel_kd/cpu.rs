//! The CPU reference of pixel KD: f64 throughout, one pixel at a time.

use ndarray::{Array4, ArrayView4};

use super::PixelKdConfig;
use crate::cpu::{log_softmax, CpuOutput, PairCall};
use crate::dtype::HostFloat;
use crate::error::Result;

crate::cpu::pair_reference_calls! {
    /// Pixel KD on the CPU, with the same surface as [`super::PixelKdCuda`].
    pub struct PixelKdCpu { config: PixelKdConfig }
    "Loss and d loss / d student.", same_shape
}

impl PixelKdCpu {
    fn compute_pair<T: HostFloat>(&self, call: PairCall<'_, T>) -> Result<CpuOutput> {
        let PairCall { student, teacher, shape, upstream, want_grad } = call;
        let cfg = &self.config;
        let grad_scale = upstream * cfg.grad_scale(&shape);
        let mut grad_student = Array4::<f64>::zeros(if want_grad { shape.dims() } else { [0; 4] });
        let mut kl_sum = 0.0;
        for n in 0..shape.n {
            for h in 0..shape.h {
                for w in 0..shape.w {
                    let pixel = |x: ArrayView4<'_, T>| -> Vec<f64> {
                        (0..shape.c).map(|c| x[[n, c, h, w]].to_f64() / cfg.tau).collect()
                    };
                    let log_ps = log_softmax(&pixel(student));
                    let log_pt = log_softmax(&pixel(teacher));
                    kl_sum += log_pt.iter().zip(&log_ps).map(|(&lt, &ls)| lt.exp() * (lt - ls)).sum::<f64>();
                    if want_grad {
                        for (c, (&ls, &lt)) in log_ps.iter().zip(&log_pt).enumerate() {
                            grad_student[[n, c, h, w]] = grad_scale * (ls.exp() - lt.exp());
                        }
                    }
                }
            }
        }
        Ok(CpuOutput { loss: cfg.loss_scale(&shape) * kl_sum, grad_student, grad_teacher: None })
    }
}
