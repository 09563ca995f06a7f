//! Pixel-KD fixtures: parameters `tau`, `loss_weight`, `reduction`, `scale_tau2`; inputs `student`, `teacher`;
//! outputs `loss`, `grad.student` (`docs/fixtures.md`).

use super::{PixelKd, PixelKdConfig, Reduction};
use crate::fixture::pair::PairFixture;
use crate::fixture::{Fixture, FixtureError};

/// The family is its own fixture handler ([`PairFixture`]).
pub(crate) use super::PixelKd as PixelKdFixtures;

impl PairFixture for PixelKd {
    const EXAMPLE: &'static str = "cityscapes logits at 1/8";

    fn fixture_config(fixture: &Fixture, d: PixelKdConfig) -> Result<PixelKdConfig, FixtureError> {
        let reduction = match fixture.param_word("reduction") {
            None => d.reduction,
            Some(r) => r.parse::<Reduction>()?,
        };
        Ok(PixelKdConfig {
            tau: fixture.param_f64("tau", d.tau)?,
            loss_weight: fixture.param_f64("loss_weight", d.loss_weight)?,
            reduction,
            scale_tau2: fixture.param_bool("scale_tau2", d.scale_tau2)?,
        })
    }
}
