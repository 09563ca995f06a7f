//! What the entry points of the pixel-relation losses (SKD, CIRKD) share: a student `[N, Cs, H, W]` and a
//! teacher `[N, Ct, H, W]` whose channel counts may differ, each with its own shape (as IFVD and CWT take
//! them), a student gradient and no teacher gradient. Each family supplies its configuration and
//! [`RelationFamily`]; the bodies of its two entry points are [`cuda`] and [`cpu`].

use std::ffi::c_void;

use kd::family::Family;
use kd::ndarray::{Array4, ArrayView4};
use kd::skd::{check_shapes, RelationShapes};
use kd::{GradOptions, HostFloat, KdError};

use crate::context::{launch, KdContext};
use crate::cpu::{self, Element, PerElement};
use crate::{host_dtype, kernel_dtype, read_shape, Failure, KdDtype, KdGradOptions};

/// A relation family as its entry points call it.
pub(crate) trait RelationFamily: Family<Shape = RelationShapes> {
    /// The f64 CPU reference: the loss, and d loss / d student when `want_grad`.
    fn reference<T: HostFloat>(
        config: &Self::Config,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        want_grad: bool,
    ) -> Result<(f64, Option<Array4<f64>>), KdError>;

    /// The family's raw buffers (device addresses, 0 for an absent output).
    fn raw_buffers(student: u64, teacher: u64, loss: u64, grad_student: u64, upstream: u64) -> Self::RawBuffers;
}

/// Reads and checks the two shapes: the same `N`, `H`, `W`; the channel counts may differ.
///
/// # Safety
/// Each shape pointer is null or points to its `ndim` readable `i64`s.
unsafe fn read_shapes(
    student: *const i64,
    student_ndim: usize,
    teacher: *const i64,
    teacher_ndim: usize,
) -> Result<RelationShapes, Failure> {
    // SAFETY: forwarded from the caller.
    let (s, t) = unsafe { (read_shape(student, student_ndim)?, read_shape(teacher, teacher_ndim)?) };
    Ok(check_shapes(&s, &t)?)
}

/// The arguments of a `kd_*_cuda` relation entry point after its parameters.
pub(crate) struct DeviceCall {
    pub(crate) student_shape: *const i64,
    pub(crate) student_ndim: usize,
    pub(crate) teacher_shape: *const i64,
    pub(crate) teacher_ndim: usize,
    pub(crate) dtype: KdDtype,
    pub(crate) student: u64,
    pub(crate) teacher: u64,
    pub(crate) loss: u64,
    pub(crate) grad_student: u64,
    pub(crate) upstream: u64,
    pub(crate) options: KdGradOptions,
    pub(crate) stream: *mut c_void,
}

/// The body of a `kd_*_cuda` relation entry point, `config` already read and checked.
///
/// # Safety
/// As `kd_cwd_cuda`: `ctx` from `kd_context_create`; readable shapes; `stream` of the context's device or
/// null; non-zero addresses are device memory of that context sized for the shapes.
pub(crate) unsafe fn cuda<F: RelationFamily>(
    ctx: *mut KdContext,
    config: &F::Config,
    call: DeviceCall,
) -> crate::Outcome {
    // SAFETY: forwarded from the caller.
    let shapes = unsafe { read_shapes(call.student_shape, call.student_ndim, call.teacher_shape, call.teacher_ndim)? };
    let dtype = kernel_dtype(call.dtype)?;
    let options = call.options.to_crate()?;
    let buffers = F::raw_buffers(call.student, call.teacher, call.loss, call.grad_student, call.upstream);
    // SAFETY: forwarded from the caller.
    unsafe { launch::<F>(ctx, config, &shapes, dtype, &buffers, options, call.stream) }
}

/// The arguments of a `kd_*_cpu` relation entry point after its parameters.
pub(crate) struct HostCall {
    pub(crate) student_shape: *const i64,
    pub(crate) student_ndim: usize,
    pub(crate) teacher_shape: *const i64,
    pub(crate) teacher_ndim: usize,
    pub(crate) dtype: KdDtype,
    pub(crate) student: *const c_void,
    pub(crate) teacher: *const c_void,
    pub(crate) loss: *mut f64,
    pub(crate) grad_student: *mut c_void,
    pub(crate) options: KdGradOptions,
}

/// The body of a `kd_*_cpu` relation entry point, `config` already read and checked.
///
/// # Safety
/// Readable shapes; `student` and `teacher` point to contiguous NCHW tensors of their shapes in `dtype`;
/// `loss` is null or writable; `grad_student` is null or a writable tensor of the student's shape
/// (initialised, with `options.accumulate`).
pub(crate) unsafe fn cpu<F: RelationFamily>(config: F::Config, call: HostCall) -> crate::Outcome {
    // SAFETY: forwarded from the caller.
    let shapes = unsafe { read_shapes(call.student_shape, call.student_ndim, call.teacher_shape, call.teacher_ndim)? };
    let dtype = host_dtype(call.dtype)?;
    let options = call.options.to_crate()?;
    let job = CpuCall::<F> {
        config,
        shapes,
        student: call.student,
        teacher: call.teacher,
        loss: call.loss,
        grad_student: call.grad_student,
        options,
    };
    cpu::dispatch(dtype, job)
}

struct CpuCall<F: RelationFamily> {
    config: F::Config,
    shapes: RelationShapes,
    student: *const c_void,
    teacher: *const c_void,
    loss: *mut f64,
    grad_student: *mut c_void,
    options: GradOptions,
}

impl<F: RelationFamily> PerElement for CpuCall<F> {
    fn run<T: Element>(self) -> crate::Outcome {
        // SAFETY: the entry point's contract: host tensors of the shapes in this dtype.
        let student = unsafe { cpu::view::<T>("student", self.student, &self.shapes.student)? };
        let teacher = unsafe { cpu::view::<T>("teacher", self.teacher, &self.shapes.teacher())? };
        let (loss, grad) = F::reference(&self.config, student, teacher, !self.grad_student.is_null())?;
        if let Some(grad) = &grad {
            // SAFETY: the entry point's contract: a writable gradient of the student's shape in this dtype.
            unsafe { cpu::store::<T>(self.grad_student, grad, self.options) };
        }
        if !self.loss.is_null() {
            // SAFETY: the entry point's contract: null or one writable f64.
            unsafe { *self.loss = loss };
        }
        Ok(())
    }
}
