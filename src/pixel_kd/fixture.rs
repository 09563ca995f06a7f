//! Pixel-KD fixtures: parameters `tau`, `loss_weight`, `reduction`, `scale_tau2`; inputs `student`, `teacher`;
//! outputs `loss`, `grad.student` (`docs/fixtures.md`).

use super::{PixelKdConfig, PixelKdCpu, PixelKdCuda, Reduction};
use crate::dtype::{self, DType, KdFloat, PerDtype};
use crate::error::KdError;
use crate::fixture::{self, Backend, Computed, Fixture, FixtureCase, FixtureError, FixtureFamily, LossKind, Output};
use crate::shape::Nchw;

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
        Ok(Box::new(PixelKdCase { config, shape, dtype }))
    }
}

struct PixelKdCase {
    config: PixelKdConfig,
    shape: Nchw,
    dtype: DType,
}

impl FixtureCase for PixelKdCase {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn run(&self, fixture: &Fixture, backend: &Backend) -> Result<Computed, FixtureError> {
        dtype::dispatch(self.dtype, Run { case: self, fixture, backend })
    }
}

struct Run<'a> {
    case: &'a PixelKdCase,
    fixture: &'a Fixture,
    backend: &'a Backend,
}

impl PerDtype for Run<'_> {
    type Out = Result<Computed, FixtureError>;

    fn run<T: KdFloat>(self) -> Self::Out {
        let PixelKdCase { config, shape, .. } = self.case;
        let (_, student) = self.fixture.input::<T>("student")?;
        let (_, teacher) = self.fixture.input::<T>("teacher")?;
        let dims = shape.dims();
        let mut out = Computed::new();
        match self.backend {
            Backend::Cpu => {
                let s = fixture::view4(shape, &student, "student")?;
                let t = fixture::view4(shape, &teacher, "teacher")?;
                let r = PixelKdCpu::new(*config)?.forward_backward(s, t)?;
                out.insert("loss".into(), Output::scalar(r.loss));
                out.insert("grad.student".into(), Output::tensor(&dims, r.grad_student.iter().copied().collect()));
            }
            Backend::Cuda(stream) => {
                let dev = |e| KdError::cuda("fixture transfer", e);
                let s = stream.clone_htod(&student).map_err(dev)?;
                let t = stream.clone_htod(&teacher).map_err(dev)?;
                let mut loss = stream.alloc_zeros::<f32>(1).map_err(dev)?;
                let mut gs = stream.alloc_zeros::<T>(shape.numel()).map_err(dev)?;
                PixelKdCuda::new(stream.clone(), *config)?.forward_backward(&dims, &s, &t, &mut loss, &mut gs)?;
                out.insert("loss".into(), Output::scalar(stream.clone_dtoh(&loss).map_err(dev)?[0] as f64));
                let gs = fixture::to_f64(&stream.clone_dtoh(&gs).map_err(dev)?);
                out.insert("grad.student".into(), Output::tensor(&dims, gs));
            }
        }
        Ok(out)
    }
}
