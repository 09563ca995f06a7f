//! ICSD fixtures: parameters `tau`, `loss_weight`, `variant`; inputs `student`, `teacher`; outputs `loss`,
//! `grad.student` and the optional `sim.student`, `sim.teacher` (`docs/fixtures.md`).

use super::{Icsd, IcsdConfig, IcsdCpu, IcsdCuda, IcsdVariant};
use crate::dtype::KdFloat;
use crate::error::KdError;
use crate::fixture::pair::PairCase;
use crate::fixture::ExampleSpec;
use crate::fixture::{self, Backend, Computed, Fixture, FixtureCase, FixtureError, FixtureFamily, Output};
use crate::fixture::{Typed, TypedCase};

pub(crate) struct IcsdFixtures;

impl FixtureFamily for IcsdFixtures {
    fn example(&self, small: bool) -> ExampleSpec {
        let shape = if small { [2, 3, 5, 7] } else { [6, 21, 65, 65] };
        ExampleSpec::student_teacher("pascal logits (21 classes), official", shape, shape)
    }

    fn extra_outputs(&self) -> &'static [&'static str] {
        &["sim.student", "sim.teacher"]
    }

    fn case(&self, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        let (shape, dtype) = fixture.input_pair()?;
        let d = IcsdConfig::default();
        let variant = match fixture.param_word("variant") {
            None => d.variant,
            Some(word) => IcsdVariant::parse(word)?,
        };
        let config = IcsdConfig {
            tau: fixture.param_f64("tau", d.tau)?,
            loss_weight: fixture.param_f64("loss_weight", d.loss_weight)?,
            variant,
        };
        config.validate()?;
        Ok(Typed::boxed(IcsdCase(PairCase { config, shape }), dtype))
    }
}

/// The pair case (loss, student gradient) and the two matrices.
struct IcsdCase(PairCase<Icsd>);

impl TypedCase for IcsdCase {
    fn run<T: KdFloat>(&self, fixture: &Fixture, backend: &Backend) -> Result<Computed, FixtureError> {
        let mut out = self.0.run::<T>(fixture, backend)?;
        let PairCase { config, shape } = &self.0;
        let (student, teacher) = fixture.student_teacher::<T>()?;
        let (sim_student, sim_teacher) = match backend {
            Backend::Cpu => {
                let s = fixture::view4(shape, &student, "student")?;
                let t = fixture::view4(shape, &teacher, "teacher")?;
                let r = IcsdCpu::new(*config)?.forward(s, t)?;
                (Output::array(&r.sim_student), Output::array(&r.sim_teacher))
            }
            Backend::Cuda(stream) => {
                let dev = |e| KdError::cuda("fixture transfer", e);
                let s = stream.clone_htod(&student).map_err(dev)?;
                let t = stream.clone_htod(&teacher).map_err(dev)?;
                let mut loss = stream.alloc_zeros::<f32>(1).map_err(dev)?;
                let mut ms = stream.alloc_zeros::<f32>(shape.c * shape.c).map_err(dev)?;
                let mut mt = stream.alloc_zeros::<f32>(shape.c * shape.c).map_err(dev)?;
                let mut icsd = IcsdCuda::new(stream.clone(), *config)?;
                icsd.forward_matrices(&shape.dims(), &s, &t, &mut loss, &mut ms, &mut mt)?;
                let cc = [shape.c, shape.c];
                let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
                let ms = Output::tensor(&cc, widen(stream.clone_dtoh(&ms).map_err(dev)?));
                (ms, Output::tensor(&cc, widen(stream.clone_dtoh(&mt).map_err(dev)?)))
            }
        };
        out.insert("sim.student".into(), sim_student);
        out.insert("sim.teacher".into(), sim_teacher);
        Ok(out)
    }
}
