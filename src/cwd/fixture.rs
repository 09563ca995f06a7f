//! CWD fixtures: parameters `tau`, `loss_weight`; inputs `student`, `teacher`; outputs `loss`,
//! `grad.student` and, where the file holds `grad.teacher`, the teacher's gradient (`docs/fixtures.md`).

use super::{Cwd, CwdConfig};
use crate::fixture::pair::PairCase;
use crate::fixture::ExampleSpec;
use crate::fixture::{Fixture, FixtureCase, FixtureError, FixtureFamily};

pub(crate) struct CwdFixtures;

impl FixtureFamily for CwdFixtures {
    fn example(&self, small: bool) -> ExampleSpec {
        let shape = if small { [2, 3, 5, 7] } else { [8, 19, 64, 128] };
        ExampleSpec::student_teacher("cityscapes logits at 1/8, tau 4", shape, shape)
    }

    fn case(&self, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        let (shape, dtype) = fixture.input_pair()?;
        let d = CwdConfig::default();
        let config = CwdConfig {
            tau: fixture.param_f64("tau", d.tau)?,
            loss_weight: fixture.param_f64("loss_weight", d.loss_weight)?,
            teacher_grad: fixture.has("grad.teacher"),
        };
        config.validate()?;
        Ok(Box::new(PairCase::<Cwd> { config, shape, dtype }))
    }
}
