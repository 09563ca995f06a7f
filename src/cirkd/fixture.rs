//! CIRKD fixtures: parameters `tau`, `loss_weight` and `pool` (`auto`, `none` or an integer K); inputs
//! `student` [B,Cs,H,W], `teacher` [B,Ct,H,W]; outputs `loss`, `grad.student` (`docs/fixtures.md`).

use std::sync::Arc;

use cudarc::driver::CudaStream;
use ndarray::ArrayView4;

use super::{CirkdConfig, CirkdCpu, CirkdCuda, CirkdPool};
use crate::cpu::CpuOutput;
use crate::dtype::KdFloat;
use crate::error::KdError;
use crate::fixture::{self, ExampleSpec, Fixture, FixtureCase, FixtureError, FixtureFamily};
use crate::relation::fixture::{RelationCase, RelationReference};
use crate::relation::RelationShapes;

pub(crate) struct CirkdFixtures;

impl FixtureFamily for CirkdFixtures {
    fn example(&self, small: bool) -> ExampleSpec {
        let ([n, h, w], [cs, ct]) = if small { ([2, 5, 7], [3, 4]) } else { ([2, 32, 64], [32, 64]) };
        ExampleSpec::student_teacher("feature maps, every image pair", [n, cs, h, w], [n, ct, h, w])
    }

    fn case(&self, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        let d = CirkdConfig::default();
        let config = CirkdConfig {
            tau: fixture.param_f64("tau", d.tau)?,
            loss_weight: fixture.param_f64("loss_weight", d.loss_weight)?,
            pool: fixture.param_word("pool").map(CirkdPool::parse).transpose()?.unwrap_or(d.pool),
        };
        config.validate()?;
        Ok(Box::new(RelationCase::<CirkdReference>::new(config, fixture)?))
    }
}

struct CirkdReference;

impl RelationReference for CirkdReference {
    const NAME: &'static str = "cirkd";
    type Config = CirkdConfig;

    fn cpu<T: KdFloat>(config: &CirkdConfig, s: ArrayView4<'_, T>, t: ArrayView4<'_, T>) -> Result<CpuOutput, KdError> {
        CirkdCpu::new(*config)?.forward_backward(s, t)
    }

    fn cuda<T: KdFloat>(
        config: &CirkdConfig,
        stream: &Arc<CudaStream>,
        shapes: &RelationShapes,
        s: &[T],
        t: &[T],
    ) -> Option<Result<(f64, Vec<f64>), KdError>> {
        let run = || {
            let dev = |e| KdError::cuda("fixture transfer", e);
            let s_dev = stream.clone_htod(s).map_err(dev)?;
            let t_dev = stream.clone_htod(t).map_err(dev)?;
            let mut grad = stream.alloc_zeros::<T>(shapes.student.numel()).map_err(dev)?;
            let mut loss = stream.alloc_zeros::<f32>(1).map_err(dev)?;
            CirkdCuda::new(stream.clone(), *config)?.forward_backward(shapes, &s_dev, &t_dev, &mut loss, &mut grad)?;
            let loss = stream.clone_dtoh(&loss).map_err(dev)?[0] as f64;
            Ok((loss, fixture::to_f64(&stream.clone_dtoh(&grad).map_err(dev)?)))
        };
        Some(run())
    }
}
