//! PKD fixtures: parameters `loss_weight`, `num_levels` L; inputs `student.{l}`, `teacher.{l}`; outputs
//! `loss` and `grad.student.{l}` (`docs/fixtures.md`). A file may leave out a level's gradient (where an
//! official gradient was not finite): the verifier checks what is there.

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::{check_levels, PkdConfig, PkdCpu, PkdCuda, PkdLevels};
use crate::dtype::KdFloat;
use crate::error::KdError;
use crate::fixture::{
    self, err, Backend, Computed, Fixture, FixtureCase, FixtureError, FixtureFamily, Output, Typed, TypedCase,
};
use crate::fixture::{ExampleInput, ExampleSpec};
use crate::shape::Nchw;

pub(crate) struct PkdFixtures;

/// The number of levels: the `num_levels` parameter, or the count of consecutive `student.{l}` tensors.
fn num_levels(fixture: &Fixture) -> Result<usize, FixtureError> {
    match fixture.param_word("num_levels") {
        Some(word) => match word.parse::<usize>() {
            Ok(l) if l >= 1 => Ok(l),
            _ => err(format!("parameter `num_levels` = `{word}` is not an integer >= 1")),
        },
        None => Ok((0..).take_while(|l| fixture.has(&format!("student.{l}"))).count()),
    }
}

impl FixtureFamily for PkdFixtures {
    fn example(&self, small: bool) -> ExampleSpec {
        // RetinaNet's FPN on 800 x 1216 images (strides 8 to 128), or three small odd levels.
        let (n, c, levels): (usize, usize, &[[usize; 2]]) = if small {
            (2, 3, &[[5, 7], [3, 4], [1, 2]])
        } else {
            (2, 256, &[[100, 152], [50, 76], [25, 38], [13, 19], [7, 10]])
        };
        let mut spec = ExampleSpec::new("detector FPN, 5 levels");
        for (l, [h, w]) in levels.iter().enumerate() {
            spec = spec
                .input(format!("student.{l}"), ExampleInput::float(&[n, c, *h, *w]))
                .input(format!("teacher.{l}"), ExampleInput::float(&[n, c, *h, *w]));
        }
        spec
    }

    fn case(&self, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        let levels = num_levels(fixture)?;
        if levels == 0 {
            return err("missing tensor `student.0`: a PKD case needs at least one level");
        }
        let dtype = fixture.input_dtype("student.0")?;
        let mut s_dims = Vec::with_capacity(levels);
        let mut t_dims = Vec::with_capacity(levels);
        for l in 0..levels {
            for (side, dims) in [("student", &mut s_dims), ("teacher", &mut t_dims)] {
                let name = format!("{side}.{l}");
                let t = fixture.tensor(&name)?;
                if t.dtype != Some(dtype) {
                    return err(format!("input `{name}` is {} but `student.0` is {dtype}", t.dtype_name));
                }
                dims.push(t.shape.clone());
            }
        }
        if fixture.has(&format!("student.{levels}")) {
            return err(format!("the file holds `student.{levels}` but `num_levels` is {levels}"));
        }
        let s: Vec<&[usize]> = s_dims.iter().map(Vec::as_slice).collect();
        let t: Vec<&[usize]> = t_dims.iter().map(Vec::as_slice).collect();
        let shapes = check_levels(&s, &t)?;
        let config = PkdConfig { loss_weight: fixture.param_f64("loss_weight", PkdConfig::default().loss_weight)? };
        config.validate()?;
        Ok(Typed::boxed(PkdCase { config, shapes }, dtype))
    }
}

struct PkdCase {
    config: PkdConfig,
    shapes: Vec<Nchw>,
}

impl TypedCase for PkdCase {
    fn run<T: KdFloat>(&self, fixture: &Fixture, backend: &Backend) -> Result<Computed, FixtureError> {
        let PkdCase { config, shapes } = self;
        let mut students = Vec::with_capacity(shapes.len());
        let mut teachers = Vec::with_capacity(shapes.len());
        for l in 0..shapes.len() {
            students.push(fixture.input::<T>(&format!("student.{l}"))?.1);
            teachers.push(fixture.input::<T>(&format!("teacher.{l}"))?.1);
        }
        let mut out = Computed::new();
        match backend {
            Backend::Cpu => {
                let mut s_views = Vec::with_capacity(shapes.len());
                let mut t_views = Vec::with_capacity(shapes.len());
                for (l, shape) in shapes.iter().enumerate() {
                    s_views.push(fixture::view4(shape, &students[l], "student")?);
                    t_views.push(fixture::view4(shape, &teachers[l], "teacher")?);
                }
                let r = PkdCpu::new(*config)?.forward_backward(&s_views, &t_views)?;
                out.insert("loss".into(), Output::scalar(r.loss));
                for (l, g) in r.grad_student.iter().enumerate() {
                    out.insert(format!("grad.student.{l}"), Output::array(g));
                }
            }
            Backend::Cuda(stream) => {
                let dev = |e| KdError::cuda("fixture transfer", e);
                let dims: Vec<[usize; 4]> = shapes.iter().map(Nchw::dims).collect();
                let levels = PkdLevels::same(&dims)?;
                let s_dev =
                    students.iter().map(|v| stream.clone_htod(v).map_err(dev)).collect::<Result<Vec<_>, _>>()?;
                let t_dev =
                    teachers.iter().map(|v| stream.clone_htod(v).map_err(dev)).collect::<Result<Vec<_>, _>>()?;
                let mut g_dev = shapes
                    .iter()
                    .map(|s| stream.alloc_zeros::<T>(s.numel()).map_err(dev))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut loss = stream.alloc_zeros::<f32>(1).map_err(dev)?;
                {
                    let sr: Vec<&dyn DevicePtr<T>> = s_dev.iter().map(|x| x as _).collect();
                    let tr: Vec<&dyn DevicePtr<T>> = t_dev.iter().map(|x| x as _).collect();
                    let grads: Vec<&mut dyn DevicePtrMut<T>> = g_dev.iter_mut().map(|x| x as _).collect();
                    PkdCuda::new(stream.clone(), *config)?.forward_backward(&levels, &sr, &tr, &mut loss, grads)?;
                }
                out.insert("loss".into(), Output::scalar(stream.clone_dtoh(&loss).map_err(dev)?[0] as f64));
                for (l, (g, shape)) in g_dev.iter().zip(shapes).enumerate() {
                    let values = fixture::to_f64(&stream.clone_dtoh(g).map_err(dev)?);
                    out.insert(format!("grad.student.{l}"), Output::tensor(&shape.dims(), values));
                }
            }
        }
        Ok(out)
    }
}
