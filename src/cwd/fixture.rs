//! CWD fixtures: parameters `tau`, `loss_weight`; inputs `student`, `teacher`; outputs `loss`,
//! `grad.student` and, where the file holds `grad.teacher`, the teacher's gradient (`docs/fixtures.md`).

use super::{Cwd, CwdConfig};
use crate::fixture::pair::PairFixture;
use crate::fixture::{Fixture, FixtureError};

/// The family is its own fixture handler ([`PairFixture`]).
pub(crate) use super::Cwd as CwdFixtures;

impl PairFixture for Cwd {
    const EXAMPLE: &'static str = "cityscapes logits at 1/8, tau 4";

    fn fixture_config(fixture: &Fixture, d: CwdConfig) -> Result<CwdConfig, FixtureError> {
        Ok(CwdConfig {
            tau: fixture.param_f64("tau", d.tau)?,
            loss_weight: fixture.param_f64("loss_weight", d.loss_weight)?,
            teacher_grad: fixture.has("grad.teacher"),
        })
    }
}
