//! SKD fixtures: parameters `loss_weight` and `pool` (`2` or `1`); inputs `student` [N,Cs,H,W], `teacher`
//! [N,Ct,H,W]; outputs `loss`, `grad.student` (`docs/fixtures.md`).

use std::sync::Arc;

use cudarc::driver::CudaStream;
use ndarray::ArrayView4;

use super::{RelationShapes, SkdConfig, SkdCpu, SkdCuda, SkdPool};
use crate::cpu::CpuOutput;
use crate::dtype::KdFloat;
use crate::error::KdError;
use crate::fixture::{self, ExampleSpec, Fixture, FixtureCase, FixtureError, FixtureFamily};
use crate::relation::fixture::{RelationCase, RelationReference};

pub(crate) struct SkdFixtures;

impl FixtureFamily for SkdFixtures {
    fn example(&self, small: bool) -> ExampleSpec {
        let ([n, h, w], [cs, ct]) = if small { ([2, 5, 7], [3, 4]) } else { ([4, 64, 128], [64, 128]) };
        ExampleSpec::student_teacher("feature maps at 1/8, pooled 2x2", [n, cs, h, w], [n, ct, h, w])
    }

    fn case(&self, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        let d = SkdConfig::default();
        let pool = match fixture.param_word("pool") {
            None => d.pool,
            Some(word) => match word.parse::<usize>() {
                Ok(k) => SkdPool::from_window(k)?,
                Err(_) => {
                    return Err(FixtureError(format!("parameter `pool` = `{word}` is not `2` or `1`")));
                }
            },
        };
        let config = SkdConfig { loss_weight: fixture.param_f64("loss_weight", d.loss_weight)?, pool };
        config.validate()?;
        Ok(Box::new(RelationCase::<SkdReference>::new(config, fixture)?))
    }
}

struct SkdReference;

impl RelationReference for SkdReference {
    const NAME: &'static str = "skd";
    type Config = SkdConfig;

    fn cpu<T: KdFloat>(config: &SkdConfig, s: ArrayView4<'_, T>, t: ArrayView4<'_, T>) -> Result<CpuOutput, KdError> {
        SkdCpu::new(*config)?.forward_backward(s, t)
    }

    fn cuda<T: KdFloat>(
        config: &SkdConfig,
        stream: &Arc<CudaStream>,
        shapes: &RelationShapes,
        s: &[T],
        t: &[T],
    ) -> Option<Result<(f64, Vec<f64>), KdError>> {
        let run = || -> Result<(f64, Vec<f64>), KdError> {
            let dev = |e| KdError::cuda("fixture transfer", e);
            let s = stream.clone_htod(s).map_err(dev)?;
            let t = stream.clone_htod(t).map_err(dev)?;
            let mut loss = stream.alloc_zeros::<f32>(1).map_err(dev)?;
            let mut grad = stream.alloc_zeros::<T>(shapes.student.numel()).map_err(dev)?;
            SkdCuda::new(stream.clone(), *config)?.forward_backward(shapes, &s, &t, &mut loss, &mut grad)?;
            let loss = stream.clone_dtoh(&loss).map_err(dev)?[0] as f64;
            Ok((loss, fixture::to_f64(&stream.clone_dtoh(&grad).map_err(dev)?)))
        };
        Some(run())
    }
}
