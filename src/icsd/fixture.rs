//! ICSD fixtures: parameters `tau`, `loss_weight`, `variant`; inputs `student`, `teacher`; outputs `loss`,
//! `grad.student` and the optional `sim.student`, `sim.teacher` (`docs/fixtures.md`).

use super::{IcsdConfig, IcsdCpu, IcsdCuda, IcsdVariant};
use crate::dtype::KdFloat;
use crate::error::KdError;
use crate::fixture::ExampleSpec;
use crate::fixture::{self, Backend, Computed, Fixture, FixtureCase, FixtureError, FixtureFamily, Output};
use crate::fixture::{Typed, TypedCase};
use crate::shape::Nchw;

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
        Ok(Typed::boxed(IcsdCase { config, shape }, dtype))
    }
}

struct IcsdCase {
    config: IcsdConfig,
    shape: Nchw,
}

impl TypedCase for IcsdCase {
    fn run<T: KdFloat>(&self, fixture: &Fixture, backend: &Backend) -> Result<Computed, FixtureError> {
        let IcsdCase { config, shape } = self;
        let (student, teacher) = fixture.student_teacher::<T>()?;
        let dims = shape.dims();
        let cc = [shape.c, shape.c];
        let mut out = Computed::new();
        match backend {
            Backend::Cpu => {
                let s = fixture::view4(shape, &student, "student")?;
                let t = fixture::view4(shape, &teacher, "teacher")?;
                let r = IcsdCpu::new(*config)?.forward_backward(s, t)?;
                out.insert("loss".into(), Output::scalar(r.loss));
                out.insert("grad.student".into(), Output::array(&r.grad_student));
                out.insert("sim.student".into(), Output::array(&r.sim_student));
                out.insert("sim.teacher".into(), Output::array(&r.sim_teacher));
            }
            Backend::Cuda(stream) => {
                let dev = |e| KdError::cuda("fixture transfer", e);
                let s = stream.clone_htod(&student).map_err(dev)?;
                let t = stream.clone_htod(&teacher).map_err(dev)?;
                let mut loss = stream.alloc_zeros::<f32>(1).map_err(dev)?;
                let mut gs = stream.alloc_zeros::<T>(shape.numel()).map_err(dev)?;
                let mut ms = stream.alloc_zeros::<f32>(shape.c * shape.c).map_err(dev)?;
                let mut mt = stream.alloc_zeros::<f32>(shape.c * shape.c).map_err(dev)?;
                let mut icsd = IcsdCuda::new(stream.clone(), *config)?;
                icsd.forward_backward(&dims, &s, &t, &mut loss, &mut gs)?;
                let mut loss2 = stream.alloc_zeros::<f32>(1).map_err(dev)?;
                icsd.forward_matrices(&dims, &s, &t, &mut loss2, &mut ms, &mut mt)?;
                out.insert("loss".into(), Output::scalar(stream.clone_dtoh(&loss).map_err(dev)?[0] as f64));
                let gs = fixture::to_f64(&stream.clone_dtoh(&gs).map_err(dev)?);
                out.insert("grad.student".into(), Output::tensor(&dims, gs));
                let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
                out.insert("sim.student".into(), Output::tensor(&cc, widen(stream.clone_dtoh(&ms).map_err(dev)?)));
                out.insert("sim.teacher".into(), Output::tensor(&cc, widen(stream.clone_dtoh(&mt).map_err(dev)?)));
            }
        }
        Ok(out)
    }
}
