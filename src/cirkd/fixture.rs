//! CIRKD fixtures: parameters `tau`, `loss_weight` and `pool` (`auto`, `none` or an integer K); inputs
//! `student` [B,Cs,H,W], `teacher` [B,Ct,H,W]; outputs `loss`, `grad.student` (`docs/fixtures.md`).

use super::{Cirkd, CirkdConfig, CirkdPool};
use crate::fixture::{ExampleSpec, Fixture, FixtureCase, FixtureError, FixtureFamily};
use crate::relation::fixture::RelationCase;

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
        RelationCase::<Cirkd>::boxed(config, fixture)
    }
}
