//! SKD fixtures: parameters `loss_weight` and `pool` (`2` or `1`); inputs `student` [N,Cs,H,W], `teacher`
//! [N,Ct,H,W]; outputs `loss`, `grad.student` (`docs/fixtures.md`).

use super::{Skd, SkdConfig, SkdPool};
use crate::fixture::{ExampleSpec, Fixture, FixtureCase, FixtureError, FixtureFamily};
use crate::relation::fixture::RelationCase;

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
        RelationCase::<Skd>::boxed(config, fixture)
    }
}
