//! DIST fixtures: parameters `tau`, `beta`, `gamma`, `loss_weight`; inputs `student`, `teacher`; outputs
//! `loss`, `grad.student` (`docs/fixtures.md`).

use super::{Dist, DistConfig};
use crate::fixture::pair::PairFixture;
use crate::fixture::{Fixture, FixtureError};

/// The family is its own fixture handler ([`PairFixture`]).
pub(crate) use super::Dist as DistFixtures;

impl PairFixture for Dist {
    const EXAMPLE: &'static str = "cityscapes logits at 1/8";

    fn fixture_config(fixture: &Fixture, d: DistConfig) -> Result<DistConfig, FixtureError> {
        Ok(DistConfig {
            tau: fixture.param_f64("tau", d.tau)?,
            beta: fixture.param_f64("beta", d.beta)?,
            gamma: fixture.param_f64("gamma", d.gamma)?,
            loss_weight: fixture.param_f64("loss_weight", d.loss_weight)?,
        })
    }
}
