//! CIRKD fixtures: parameters `tau`, `loss_weight` and `pool` (`auto`, `none` or an integer K); inputs
//! `student` [B,Cs,H,W], `teacher` [B,Ct,H,W]; outputs `loss`, `grad.student` (`docs/fixtures.md`).

use ndarray::ArrayView4;

use super::{Cirkd, CirkdConfig, CirkdCpu, CirkdPool};
use crate::cpu::CpuOutput;
use crate::dtype::KdFloat;
use crate::error::KdError;
use crate::fixture::{ExampleSpec, Fixture, FixtureCase, FixtureError, FixtureFamily};
use crate::relation::fixture::{RelationCase, RelationReference};

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
        RelationCase::<CirkdReference>::boxed(config, fixture)
    }
}

struct CirkdReference;

impl RelationReference for CirkdReference {
    type Config = CirkdConfig;
    type Family = Cirkd;

    fn cpu<T: KdFloat>(config: &CirkdConfig, s: ArrayView4<'_, T>, t: ArrayView4<'_, T>) -> Result<CpuOutput, KdError> {
        CirkdCpu::new(*config)?.forward_backward(s, t)
    }
}
