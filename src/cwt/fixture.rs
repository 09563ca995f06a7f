//! CWT fixtures (`docs/fixtures.md`): parameters `loss_weight`, `normalize`; inputs `student`, `teacher` and
//! the MLP's four f32 parameters; outputs `loss`, `grad.student` and the four parameter gradients.

use ndarray::{ArrayView1, ArrayView2};

use super::{CwtConfig, CwtCpu, CwtCuda, CwtNormalize, CwtParamBuffers, CwtParamGrads, CwtShapes, MlpParams};
use crate::dtype::{DType, KdFloat};
use crate::error::KdError;
use crate::fixture::{self, Backend, Computed, Fixture, FixtureCase, FixtureError, FixtureFamily, Output};
use crate::fixture::{ExampleInput, ExampleSpec};
use crate::fixture::{Typed, TypedCase};
use crate::shape::Nchw;

pub(crate) struct CwtFixtures;

const PARAMS: [&str; 4] = ["mlp.linear1.weight", "mlp.linear1.bias", "mlp.linear2.weight", "mlp.linear2.bias"];

impl FixtureFamily for CwtFixtures {
    fn example(&self, small: bool) -> ExampleSpec {
        let ([n, h, w], [cs, ch, ct]) = if small { ([2, 3, 5], [3, 4, 5]) } else { ([4, 32, 64], [64, 128, 128]) };
        ExampleSpec::student_teacher("feature maps, 64 -> 128 channels", [n, cs, h, w], [n, ct, h, w])
            .input(PARAMS[0], ExampleInput::Float { shape: vec![ch, cs], scale: (cs as f64).recip().sqrt() })
            .input(PARAMS[1], ExampleInput::float(&[ch]))
            .input(PARAMS[2], ExampleInput::Float { shape: vec![ct, ch], scale: (ch as f64).recip().sqrt() })
            .input(PARAMS[3], ExampleInput::float(&[ct]))
    }

    fn case(&self, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        let d = CwtConfig::default();
        let normalize = match fixture.param_word("normalize") {
            None => d.normalize,
            Some(w) => CwtNormalize::parse(w)
                .ok_or_else(|| FixtureError(format!("parameter `normalize` = `{w}`: expected `batch` or `mean`")))?,
        };
        let config = CwtConfig { loss_weight: fixture.param_f64("loss_weight", d.loss_weight)?, normalize };
        config.validate()?;
        let dtype = fixture.input_dtype("student")?;
        if fixture.input_dtype("teacher")? != dtype {
            return fixture::err("inputs `student` and `teacher` have different dtypes");
        }
        for name in PARAMS {
            if fixture.input_dtype(name)? != DType::F32 {
                return fixture::err(format!("parameter `{name}` must be stored as F32"));
            }
        }
        let w1 = fixture.tensor("mlp.linear1.weight")?;
        let w2 = fixture.tensor("mlp.linear2.weight")?;
        if w1.shape.len() != 2 || w2.shape.len() != 2 {
            return fixture::err("the MLP's weights must be 2-D [out, in]");
        }
        let shapes = CwtShapes { cs: w1.shape[1], ch: w1.shape[0], ct: w2.shape[0] };
        let (student, teacher) =
            shapes.check_features(&fixture.tensor("student")?.shape, &fixture.tensor("teacher")?.shape)?;
        Ok(Typed::boxed(CwtCase { config, shapes, student, teacher }, dtype))
    }
}

struct CwtCase {
    config: CwtConfig,
    shapes: CwtShapes,
    student: Nchw,
    teacher: Nchw,
}

impl TypedCase for CwtCase {
    fn run<T: KdFloat>(&self, fixture: &Fixture, backend: &Backend) -> Result<Computed, FixtureError> {
        let CwtCase { config, shapes, student: s_shape, teacher: t_shape } = self;
        let (student, teacher) = fixture.student_teacher::<T>()?;
        let mut p = Vec::new();
        for name in PARAMS {
            p.push(fixture.input::<f32>(name)?.1);
        }
        let CwtShapes { cs, ch, ct } = *shapes;
        let shape_err = |e: ndarray::ShapeError| FixtureError(format!("an MLP parameter does not fit its shape: {e}"));
        let params = MlpParams {
            w1: ArrayView2::from_shape((ch, cs), &p[0]).map_err(shape_err)?,
            b1: ArrayView1::from_shape(p[1].len(), &p[1]).map_err(shape_err)?,
            w2: ArrayView2::from_shape((ct, p[2].len() / ct), &p[2]).map_err(shape_err)?,
            b2: ArrayView1::from_shape(p[3].len(), &p[3]).map_err(shape_err)?,
        };
        params.shapes()?;
        let sd = s_shape.dims();
        let mut out = Computed::new();
        match backend {
            Backend::Cpu => {
                let sv = fixture::view4(s_shape, &student, "student")?;
                let tv = fixture::view4(t_shape, &teacher, "teacher")?;
                let r = CwtCpu::new(*config)?.forward_backward(sv, tv, &params)?;
                out.insert("loss".into(), Output::scalar(r.loss));
                out.insert("grad.student".into(), Output::array(&r.grad_student));
                out.insert("grad.mlp.linear1.weight".into(), Output::array(&r.grad_w1));
                out.insert("grad.mlp.linear1.bias".into(), Output::array(&r.grad_b1));
                out.insert("grad.mlp.linear2.weight".into(), Output::array(&r.grad_w2));
                out.insert("grad.mlp.linear2.bias".into(), Output::array(&r.grad_b2));
            }
            Backend::Cuda(stream) => {
                let dev = |e| KdError::cuda("fixture transfer", e);
                let s = stream.clone_htod(&student).map_err(dev)?;
                let t = stream.clone_htod(&teacher).map_err(dev)?;
                let up = |v: &Vec<f32>| stream.clone_htod(v).map_err(dev);
                let (w1, b1, w2, b2) = (up(&p[0])?, up(&p[1])?, up(&p[2])?, up(&p[3])?);
                let zeros = |len: usize| stream.alloc_zeros::<f32>(len).map_err(dev);
                let mut loss = zeros(1)?;
                let (mut gw1, mut gb1, mut gw2, mut gb2) = (zeros(ch * cs)?, zeros(ch)?, zeros(ct * ch)?, zeros(ct)?);
                let mut gs = stream.alloc_zeros::<T>(s_shape.numel()).map_err(dev)?;
                let mut cwt = CwtCuda::with_shapes(stream.clone(), *config, *shapes)?;
                let params = CwtParamBuffers { w1: &w1, b1: &b1, w2: &w2, b2: &b2 };
                let grads = CwtParamGrads { w1: &mut gw1, b1: &mut gb1, w2: &mut gw2, b2: &mut gb2 };
                cwt.forward_backward(&sd, &s, &t, &params, &mut loss, &mut gs, grads)?;
                let down = |v: &cudarc::driver::CudaSlice<f32>| -> Result<Vec<f64>, FixtureError> {
                    Ok(fixture::to_f64(&stream.clone_dtoh(v).map_err(dev)?))
                };
                out.insert("loss".into(), Output::scalar(down(&loss)?[0]));
                let gs = fixture::to_f64(&stream.clone_dtoh(&gs).map_err(dev)?);
                out.insert("grad.student".into(), Output::tensor(&sd, gs));
                out.insert("grad.mlp.linear1.weight".into(), Output::tensor(&[ch, cs], down(&gw1)?));
                out.insert("grad.mlp.linear1.bias".into(), Output::tensor(&[ch], down(&gb1)?));
                out.insert("grad.mlp.linear2.weight".into(), Output::tensor(&[ct, ch], down(&gw2)?));
                out.insert("grad.mlp.linear2.bias".into(), Output::tensor(&[ct], down(&gb2)?));
            }
        }
        Ok(out)
    }
}
