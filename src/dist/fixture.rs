//! DIST fixtures: parameters `tau`, `beta`, `gamma`, `loss_weight`; inputs `student`, `teacher`; outputs
//! `loss`, `grad.student` (`docs/fixtures.md`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use ndarray::ArrayView4;

use super::{DistConfig, DistCpu};
use crate::cpu::CpuOutput;
use crate::dtype::KdFloat;
use crate::error::KdError;
use crate::fixture::pair::{PairCase, PairReference};
use crate::fixture::{Fixture, FixtureCase, FixtureError, FixtureFamily};

pub(crate) struct DistFixtures;

impl FixtureFamily for DistFixtures {
    fn case(&self, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        let (shape, dtype) = fixture.input_pair()?;
        let d = DistConfig::default();
        let config = DistConfig {
            tau: fixture.param_f64("tau", d.tau)?,
            beta: fixture.param_f64("beta", d.beta)?,
            gamma: fixture.param_f64("gamma", d.gamma)?,
            loss_weight: fixture.param_f64("loss_weight", d.loss_weight)?,
        };
        config.validate()?;
        Ok(Box::new(PairCase::<DistReference> { config, shape, dtype }))
    }
}

/// DIST's CPU reference as the fixtures run it (no kernels yet).
pub(crate) struct DistReference;

impl PairReference for DistReference {
    type Config = DistConfig;

    fn teacher_grad(_config: &DistConfig) -> bool {
        false
    }

    fn cpu<T: KdFloat>(
        config: &DistConfig,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
    ) -> Result<CpuOutput, KdError> {
        DistCpu::new(*config)?.forward_backward(student, teacher)
    }

    fn cuda<T: KdFloat>(
        _config: &DistConfig,
        _stream: &Arc<CudaStream>,
        _dims: &[usize],
        _student: &CudaSlice<T>,
        _teacher: &CudaSlice<T>,
        _loss: &mut CudaSlice<f32>,
        _grad_student: &mut CudaSlice<T>,
        _grad_teacher: Option<&mut CudaSlice<T>>,
    ) -> Result<(), KdError> {
        Err(KdError::Unsupported {
            what: "DIST on CUDA",
            detail: "kd-kernels has no DIST kernel yet; verify it on the CPU backend".into(),
        })
    }
}
