//! CWD fixtures: parameters `tau`, `loss_weight`; inputs `student`, `teacher`; outputs `loss`,
//! `grad.student` and, where the file holds `grad.teacher`, the teacher's gradient (`docs/fixtures.md`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use ndarray::ArrayView4;

use super::{CwdConfig, CwdCpu, CwdCuda};
use crate::cpu::CpuOutput;
use crate::dtype::KdFloat;
use crate::error::KdError;
use crate::fixture::pair::{PairCase, PairLoss};
use crate::fixture::{Fixture, FixtureCase, FixtureError, FixtureFamily, LossKind};

pub(crate) struct CwdFixtures;

impl FixtureFamily for CwdFixtures {
    fn loss(&self) -> LossKind {
        LossKind::Cwd
    }

    fn case(&self, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        let (shape, dtype) = fixture.input_pair()?;
        let d = CwdConfig::default();
        let config = CwdConfig {
            tau: fixture.param_f64("tau", d.tau)?,
            loss_weight: fixture.param_f64("loss_weight", d.loss_weight)?,
            teacher_grad: fixture.has("grad.teacher"),
        };
        config.validate()?;
        Ok(Box::new(PairCase { loss: config, shape, dtype }))
    }
}

impl PairLoss for CwdConfig {
    fn teacher_grad(&self) -> bool {
        self.teacher_grad
    }

    fn cpu<T: KdFloat>(&self, student: ArrayView4<'_, T>, teacher: ArrayView4<'_, T>) -> Result<CpuOutput, KdError> {
        CwdCpu::new(*self)?.forward_backward(student, teacher)
    }

    fn cuda<T: KdFloat>(
        &self,
        stream: &Arc<CudaStream>,
        dims: &[usize],
        student: &CudaSlice<T>,
        teacher: &CudaSlice<T>,
        loss: &mut CudaSlice<f32>,
        grad_student: &mut CudaSlice<T>,
        grad_teacher: Option<&mut CudaSlice<T>>,
    ) -> Result<(), KdError> {
        let grad_teacher = grad_teacher.map(|g| g as &mut dyn DevicePtrMut<T>);
        CwdCuda::new(stream.clone(), *self)?.forward_backward(dims, student, teacher, loss, grad_student, grad_teacher)
    }
}
