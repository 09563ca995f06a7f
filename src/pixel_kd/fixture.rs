//! Pixel-KD fixtures: parameters `tau`, `loss_weight`, `reduction`, `scale_tau2`; inputs `student`, `teacher`;
//! outputs `loss`, `grad.student` (`docs/fixtures.md`).

use super::{PixelKd, PixelKdConfig, Reduction};
use crate::fixture::pair::PairCase;
use crate::fixture::ExampleSpec;
use crate::fixture::{Fixture, FixtureCase, FixtureError, FixtureFamily};

pub(crate) struct PixelKdFixtures;

impl FixtureFamily for PixelKdFixtures {
    fn example(&self, small: bool) -> ExampleSpec {
        let shape = if small { [2, 3, 5, 7] } else { [8, 19, 64, 128] };
        ExampleSpec::student_teacher("cityscapes logits at 1/8", shape, shape)
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
        Ok(Box::new(PairCase::<PixelKd> { config, shape, dtype }))
    }
}
