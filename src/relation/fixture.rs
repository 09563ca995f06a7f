//! The fixture case of a pixel-relation loss (SKD, CIRKD): inputs `student` [N,Cs,H,W] and `teacher`
//! [N,Ct,H,W] in the case's dtype, outputs `loss` and `grad.student`. Written once over the family's
//! [`StudentGradFamily`] contract (its CPU reference and its kernels); each family parses its own parameters.

use std::sync::Arc;

use cudarc::driver::CudaStream;

use super::{check_shapes, RelationShapes};
use crate::cpu::PairReference;
use crate::cuda::LossCuda;
use crate::dtype::KdFloat;
use crate::error::KdError;
use crate::family::{StudentGradFamily, StudentTeacherFamily};
use crate::fixture::{self, Backend, Computed, Fixture, FixtureCase, FixtureError, Output, Typed, TypedCase};

/// A parsed case.
pub(crate) struct RelationCase<F: StudentGradFamily<Shape = RelationShapes>> {
    pub config: F::Config,
    pub shapes: RelationShapes,
}

impl<F: StudentGradFamily<Shape = RelationShapes>> RelationCase<F> {
    /// The case of `config`, which it validates, on the file's `student` and `teacher`, which it checks
    /// (present, rank 4, the same `N`, `H`, `W`, one float dtype).
    pub(crate) fn boxed(config: F::Config, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        F::validate(&config)?;
        let shapes = check_shapes(&fixture.tensor("student")?.shape, &fixture.tensor("teacher")?.shape)?;
        Ok(Typed::boxed(RelationCase::<F> { config, shapes }, fixture.pair_dtype()?))
    }
}

impl<F: StudentGradFamily<Shape = RelationShapes>> TypedCase for RelationCase<F> {
    fn run<T: KdFloat>(&self, fixture: &Fixture, backend: &Backend) -> Result<Computed, FixtureError> {
        let RelationCase { config, shapes } = self;
        let (student, teacher) = fixture.student_teacher::<T>()?;
        if let Backend::Cuda(stream) = backend {
            let (loss, grad) = cuda::<F, T>(config, stream, shapes, &student, &teacher)?;
            let mut out = Computed::new();
            out.insert("loss".into(), Output::scalar(loss));
            out.insert("grad.student".into(), Output::tensor(&shapes.student.dims(), grad));
            return Ok(out);
        }
        let s = fixture::view4(&shapes.student, &student, "student")?;
        let t = fixture::view4(&shapes.teacher(), &teacher, "teacher")?;
        // `gradients` with an upstream of 1 is the reference's `forward_backward`.
        let r = F::Reference::new(config.clone())?.gradients(s, t, 1.0)?;
        let mut out = Computed::new();
        out.insert("loss".into(), Output::scalar(r.loss));
        out.insert("grad.student".into(), Output::array(&r.grad_student));
        Ok(out)
    }
}

/// The kernels' loss and student gradient on `stream` (f64, the gradient flattened).
fn cuda<F: StudentTeacherFamily<Shape = RelationShapes>, T: KdFloat>(
    config: &F::Config,
    stream: &Arc<CudaStream>,
    shapes: &RelationShapes,
    s: &[T],
    t: &[T],
) -> Result<(f64, Vec<f64>), KdError> {
    let dev = |e| KdError::cuda("fixture transfer", e);
    let s = stream.clone_htod(s).map_err(dev)?;
    let t = stream.clone_htod(t).map_err(dev)?;
    let mut loss = stream.alloc_zeros::<f32>(1).map_err(dev)?;
    let mut grad = stream.alloc_zeros::<T>(shapes.student.numel()).map_err(dev)?;
    LossCuda::<F>::new(stream.clone(), config.clone())?.forward_backward(shapes, &s, &t, &mut loss, &mut grad)?;
    let loss = stream.clone_dtoh(&loss).map_err(dev)?[0] as f64;
    Ok((loss, fixture::to_f64(&stream.clone_dtoh(&grad).map_err(dev)?)))
}
