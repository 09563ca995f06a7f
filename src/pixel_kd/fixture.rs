//! Pixel-KD fixtures: parameters `tau`, `loss_weight`, `reduction`, `scale_tau2`; inputs `student`, `teacher`;
//! outputs `loss`, `grad.student` (`docs/fixtures.md`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use ndarray::ArrayView4;

use super::{PixelKdConfig, PixelKdCpu, PixelKdCuda, Reduction};
use crate::cpu::CpuOutput;
use crate::dtype::KdFloat;
use crate::error::KdError;
use crate::fixture::pair::{PairCase, PairLoss};
use crate::fixture::{Fixture, FixtureCase, FixtureError, FixtureFamily, LossKind};

pub(crate) struct PixelKdFixtures;

impl FixtureFamily for PixelKdFixtures {
    fn loss(&self) -> LossKind {
        LossKind::PixelKd
    }

    fn case(&self, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        let (shape, dtype) = fixture.input_pair()?;
        let d = PixelKdConfig::default();
        let reduction = match fixture.param_word("reduction") {
            None => d.reduction,
            Some(r) => r.parse::<Reduction>()?,
        };
        let config = PixelKdConfig {
            tau: fixture.param_f64("tau", d.tau)?,
            loss_weight: fixture.param_f64("loss_weight", d.loss_weight)?,
            reduction,
            scale_tau2: fixture.param_bool("scale_tau2", d.scale_tau2)?,
        };
        config.validate()?;
        Ok(Box::new(PairCase { loss: config, shape, dtype }))
    }
}

impl PairLoss for PixelKdConfig {
    fn teacher_grad(&self) -> bool {
        false
    }

    fn cpu<T: KdFloat>(&self, student: ArrayView4<'_, T>, teacher: ArrayView4<'_, T>) -> Result<CpuOutput, KdError> {
        PixelKdCpu::new(*self)?.forward_backward(student, teacher)
    }

    fn cuda<T: KdFloat>(
        &self,
        stream: &Arc<CudaStream>,
        dims: &[usize],
        student: &CudaSlice<T>,
        teacher: &CudaSlice<T>,
        loss: &mut CudaSlice<f32>,
        grad_student: &mut CudaSlice<T>,
        _grad_teacher: Option<&mut CudaSlice<T>>,
    ) -> Result<(), KdError> {
        PixelKdCuda::new(stream.clone(), *self)?.forward_backward(dims, student, teacher, loss, grad_student)
    }
}
