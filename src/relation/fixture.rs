//! The fixture case of a pixel-relation loss (SKD, CIRKD): inputs `student` [N,Cs,H,W] and `teacher`
//! [N,Ct,H,W] in the case's dtype, outputs `loss` and `grad.student`. Written once over [`RelationReference`];
//! each family parses its own parameters.

use std::sync::Arc;

use cudarc::driver::CudaStream;
use ndarray::ArrayView4;

use super::{check_shapes, RelationShapes};
use crate::cpu::CpuOutput;
use crate::cuda::LossCuda;
use crate::dtype::{DType, KdFloat};
use crate::error::KdError;
use crate::family::StudentTeacherFamily;
use crate::fixture::{self, err, Backend, Computed, Fixture, FixtureError, Output, TypedCase};

/// A relation loss as the fixtures run it.
pub(crate) trait RelationReference: 'static {
    /// Its configuration.
    type Config: Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static;
    /// The CPU reference's `forward_backward`.
    fn cpu<T: KdFloat>(config: &Self::Config, s: ArrayView4<'_, T>, t: ArrayView4<'_, T>)
        -> Result<CpuOutput, KdError>;
    /// Its kernels.
    type Family: StudentTeacherFamily<Config = Self::Config, Shape = RelationShapes>;
}

/// A parsed case.
pub(crate) struct RelationCase<R: RelationReference> {
    pub config: R::Config,
    pub shapes: RelationShapes,
    pub dtype: DType,
}

impl<R: RelationReference> RelationCase<R> {
    /// Checks the file's `student` and `teacher` (present, rank 4, the same `N`, `H`, `W`, one float dtype).
    pub(crate) fn new(config: R::Config, fixture: &Fixture) -> Result<Self, FixtureError> {
        let s = fixture.tensor("student")?;
        let t = fixture.tensor("teacher")?;
        let shapes = check_shapes(&s.shape, &t.shape)?;
        let dtype = fixture.input_dtype("student")?;
        if t.dtype != Some(dtype) {
            return err(format!("input `teacher` is {} but `student` is {}", t.dtype_name, s.dtype_name));
        }
        Ok(RelationCase { config, shapes, dtype })
    }
}

impl<R: RelationReference> TypedCase for RelationCase<R> {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn run<T: KdFloat>(&self, fixture: &Fixture, backend: &Backend) -> Result<Computed, FixtureError> {
        let RelationCase { config, shapes, .. } = self;
        let (_, student) = fixture.input::<T>("student")?;
        let (_, teacher) = fixture.input::<T>("teacher")?;
        if let Backend::Cuda(stream) = backend {
            let (loss, grad) = cuda::<R::Family, T>(config, stream, shapes, &student, &teacher)?;
            let mut out = Computed::new();
            out.insert("loss".into(), Output::scalar(loss));
            out.insert("grad.student".into(), Output::tensor(&shapes.student.dims(), grad));
            return Ok(out);
        }
        let s = fixture::view4(&shapes.student, &student, "student")?;
        let t = fixture::view4(&shapes.teacher(), &teacher, "teacher")?;
        let r = R::cpu(config, s, t)?;
        let mut out = Computed::new();
        out.insert("loss".into(), Output::scalar(r.loss));
        out.insert(
            "grad.student".into(),
            Output::tensor(&shapes.student.dims(), r.grad_student.iter().copied().collect()),
        );
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
