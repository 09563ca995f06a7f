//! IFVD fixtures: parameters `num_classes` (required: there is no default class count) and `loss_weight`;
//! inputs `student` [N,Cs,H,W], `teacher` [N,Ct,H,W] in the case's dtype and `labels` [N,Hl,Wl] as stored
//! (I64, I32 or U8); outputs `loss`, `grad.student` (`docs/fixtures.md`).

use ndarray::{ArrayView3, ArrayView4};

use super::{check_shapes, IfvdConfig, IfvdCpu, IfvdCuda, IfvdLabels, IfvdShapes, LabelDType};
use crate::dtype::KdFloat;
use crate::fixture::{
    self, err, Backend, Computed, Fixture, FixtureCase, FixtureError, FixtureFamily, Output, Typed, TypedCase,
};
use crate::fixture::{ExampleInput, ExampleSpec};
use crate::KdError;

pub(crate) struct IfvdFixtures;

impl FixtureFamily for IfvdFixtures {
    fn example(&self, small: bool) -> ExampleSpec {
        let ([n, c, h, w], labels, classes) =
            if small { ([2, 3, 5, 7], [9, 13], 4) } else { ([4, 256, 64, 128], [512, 1024], 19) };
        ExampleSpec::student_teacher("cityscapes features, 19 classes", [n, c, h, w], [n, c, h, w])
            .input("labels", ExampleInput::Labels { shape: vec![n, labels[0], labels[1]], classes })
            .param("num_classes", classes)
    }

    fn case(&self, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        let Some(classes) = fixture.param_word("num_classes") else {
            return err("metadata has no `num_classes` entry (IFVD has no default class count)");
        };
        let num_classes = classes
            .parse::<usize>()
            .map_err(|_| FixtureError(format!("parameter `num_classes` = `{classes}` is not a whole number")))?;
        let config = IfvdConfig { num_classes, loss_weight: fixture.param_f64("loss_weight", 1.0)? };
        config.validate()?;
        let labels = fixture.tensor("labels")?;
        let shapes = check_shapes(&fixture.tensor("student")?.shape, &fixture.tensor("teacher")?.shape, &labels.shape)?;
        let dtype = fixture.pair_dtype()?;
        if labels.label_dtype().is_none() {
            return err(format!("input `labels` has dtype {}; expected I64, I32 or U8", labels.dtype_name));
        }
        Ok(Typed::boxed(IfvdCase { config, shapes }, dtype))
    }
}

struct IfvdCase {
    config: IfvdConfig,
    shapes: IfvdShapes,
}

impl TypedCase for IfvdCase {
    fn run<T: KdFloat>(&self, fixture: &Fixture, backend: &Backend) -> Result<Computed, FixtureError> {
        let IfvdCase { config, shapes } = self;
        let (student, teacher) = fixture.student_teacher::<T>()?;
        let (_, labels) = fixture.input_i64("labels")?;
        let dims = shapes.student.dims();
        let mut out = Computed::new();
        match backend {
            Backend::Cpu => {
                let bad = |name: &'static str| {
                    move |e: ndarray::ShapeError| FixtureError(format!("tensor `{name}` does not fit its shape: {e}"))
                };
                let s = ArrayView4::from_shape(dims, &student).map_err(bad("student"))?;
                let t = ArrayView4::from_shape(shapes.teacher().dims(), &teacher).map_err(bad("teacher"))?;
                let l = ArrayView3::from_shape(shapes.label_dims(), &labels).map_err(bad("labels"))?;
                let r = IfvdCpu::new(*config)?.forward_backward(s, t, l)?;
                out.insert("loss".into(), Output::scalar(r.loss));
                out.insert("grad.student".into(), Output::array(&r.grad_student));
            }
            Backend::Cuda(stream) => {
                let dev = |e| KdError::cuda("fixture transfer", e);
                let s = stream.clone_htod(&student).map_err(dev)?;
                let t = stream.clone_htod(&teacher).map_err(dev)?;
                let mut loss = stream.alloc_zeros::<f32>(1).map_err(dev)?;
                let mut gs = stream.alloc_zeros::<T>(shapes.student.numel()).map_err(dev)?;
                let mut ifvd = IfvdCuda::new(stream.clone(), *config)?;
                // The labels go up in their stored dtype (the values were widened from it, so narrowing is exact).
                let stored = fixture.tensor("labels")?.label_dtype();
                match stored {
                    Some(LabelDType::U8) => {
                        let l = stream.clone_htod(&labels.iter().map(|&v| v as u8).collect::<Vec<_>>()).map_err(dev)?;
                        ifvd.forward_backward(shapes, &s, &t, IfvdLabels::U8(&l), &mut loss, &mut gs)?;
                    }
                    Some(LabelDType::I32) => {
                        let l =
                            stream.clone_htod(&labels.iter().map(|&v| v as i32).collect::<Vec<_>>()).map_err(dev)?;
                        ifvd.forward_backward(shapes, &s, &t, IfvdLabels::I32(&l), &mut loss, &mut gs)?;
                    }
                    _ => {
                        let l = stream.clone_htod(&labels).map_err(dev)?;
                        ifvd.forward_backward(shapes, &s, &t, IfvdLabels::I64(&l), &mut loss, &mut gs)?;
                    }
                }
                out.insert("loss".into(), Output::scalar(stream.clone_dtoh(&loss).map_err(dev)?[0] as f64));
                let gs = fixture::to_f64(&stream.clone_dtoh(&gs).map_err(dev)?);
                out.insert("grad.student".into(), Output::tensor(&dims, gs));
            }
        }
        Ok(out)
    }
}
