//! The CPU reference of pixel KD: f64 throughout, one pixel at a time.

use ndarray::{Array4, ArrayView4};

use super::PixelKdConfig;
use crate::cpu::{check_pair, log_softmax, CpuOutput, HostFloat};
use crate::error::Result;

/// Pixel KD on the CPU, with the same surface as [`super::PixelKdCuda`].
#[derive(Debug, Clone)]
pub struct PixelKdCpu {
    config: PixelKdConfig,
}

impl PixelKdCpu {
    /// Validates `config`.
    pub fn new(config: PixelKdConfig) -> Result<Self> {
        config.validate()?;
        Ok(PixelKdCpu { config })
    }

    /// The configuration.
    pub fn config(&self) -> &PixelKdConfig {
        &self.config
    }

    /// The loss alone.
    pub fn forward<T: HostFloat>(&self, student: ArrayView4<'_, T>, teacher: ArrayView4<'_, T>) -> Result<f64> {
        Ok(self.compute(student, teacher, 1.0, false)?.loss)
    }

    /// Loss and d loss / d student.
    pub fn forward_backward<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
    ) -> Result<CpuOutput> {
        self.compute(student, teacher, 1.0, true)
    }

    /// The gradient times the upstream gradient `upstream`; `loss` is filled too.
    pub fn backward<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        upstream: f64,
    ) -> Result<CpuOutput> {
        self.compute(student, teacher, upstream, true)
    }

    fn compute<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        upstream: f64,
        want_grad: bool,
    ) -> Result<CpuOutput> {
        let shape = check_pair(student, teacher)?;
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
