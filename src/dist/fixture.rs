//! DIST fixtures: parameters `tau`, `beta`, `gamma`, `loss_weight`; inputs `student`, `teacher`; outputs
//! `loss`, `grad.student` (`docs/fixtures.md`).

use super::{Dist, DistConfig};
use crate::fixture::pair::PairCase;
use crate::fixture::ExampleSpec;
use crate::fixture::{Fixture, FixtureCase, FixtureError, FixtureFamily};

pub(crate) struct DistFixtures;

impl FixtureFamily for DistFixtures {
    fn example(&self, small: bool) -> ExampleSpec {
        let shape = if small { [2, 3, 5, 7] } else { [8, 19, 64, 128] };
        ExampleSpec::student_teacher("cityscapes logits at 1/8", shape, shape)
    }

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
        Ok(Box::new(PairCase::<Dist> { config, shape, dtype }))
    }
}
