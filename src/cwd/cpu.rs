//! The CPU reference of CWD: f64 throughout, one row at a time, written to be obviously correct.

use ndarray::{s, Array4, ArrayView4};

use super::CwdConfig;
use crate::cpu::{log_softmax, CpuOutput, PairCall};
use crate::dtype::HostFloat;
use crate::error::Result;

crate::cpu::pair_reference_calls! {
    /// CWD on the CPU, with the same surface as [`super::CwdCuda`].
    pub struct CwdCpu { config: CwdConfig }
    "Loss and gradients (the teacher's only when `config.teacher_grad`).",
    same_shape
}

impl CwdCpu {
    fn compute_pair<T: HostFloat>(&self, call: PairCall<'_, T>) -> Result<CpuOutput> {
        let PairCall { student, teacher, shape, upstream, want_grad } = call;
        let cfg = &self.config;
        let rows = shape.n * shape.c;
        let grad_scale = upstream * cfg.grad_scale(rows);
        let dims = shape.dims();
        let mut grad_student = Array4::<f64>::zeros(if want_grad { dims } else { [0; 4] });
        let mut grad_teacher = (want_grad && cfg.teacher_grad).then(|| Array4::<f64>::zeros(dims));
        let mut kl_sum = 0.0;
        for n in 0..shape.n {
            for c in 0..shape.c {
                let row = |x: ArrayView4<'_, T>| -> Vec<f64> {
                    x.slice(s![n, c, .., ..]).iter().map(|v| v.to_f64() / cfg.tau).collect()
                };
                let log_ps = log_softmax(&row(student));
                let log_pt = log_softmax(&row(teacher));
                let kl: f64 = log_pt.iter().zip(&log_ps).map(|(&lt, &ls)| lt.exp() * (lt - ls)).sum();
                kl_sum += kl;
                if !want_grad {
                    continue;
                }
                let positions = (0..shape.h).flat_map(|h| (0..shape.w).map(move |w| (h, w)));
                for ((h, w), (&ls, &lt)) in positions.zip(log_ps.iter().zip(&log_pt)) {
                    grad_student[[n, c, h, w]] = grad_scale * (ls.exp() - lt.exp());
                    if let Some(gt) = grad_teacher.as_mut() {
                        gt[[n, c, h, w]] = grad_scale * lt.exp() * (lt - ls - kl);
                    }
                }
            }
        }
        Ok(CpuOutput { loss: cfg.loss_scale(rows) * kl_sum, grad_student, grad_teacher })
    }
}
