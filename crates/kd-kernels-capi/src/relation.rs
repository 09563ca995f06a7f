//! What the entry points of the families with a student gradient alone and a teacher of its own shape share
//! (SKD, CIRKD: a student `[N, Cs, H, W]` and a teacher `[N, Ct, H, W]` whose channel counts may differ, each
//! with its own shape, as IFVD and CWT take them). The family's side is the core's
//! [`StudentGradFamily`]: how it checks the two shapes, its raw buffers, its CPU reference. The bodies of its
//! two entry points are [`cuda`] and [`cpu`]; what is left to each family is its configuration.

use std::ffi::c_void;

use kd::cpu::PairReference;
use kd::family::{PairRawBuffers, StudentGradFamily};
use kd::shape::Nchw;
use kd::GradOptions;

use crate::context::{launch, KdContext};
use crate::cpu::{self, Element, PerElement};
use crate::{host_dtype, kernel_dtype, read_shape, KdDtype, KdGradOptions};

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
pub(crate) unsafe fn cuda<F: StudentGradFamily>(
    ctx: *mut KdContext,
    config: &F::Config,
    call: DeviceCall,
) -> crate::Outcome {
    // SAFETY: forwarded from the caller.
    let (student, teacher) = unsafe {
        (read_shape(call.student_shape, call.student_ndim)?, read_shape(call.teacher_shape, call.teacher_ndim)?)
    };
    let dtype = kernel_dtype(call.dtype)?;
    let options = call.options.to_crate()?;
    let (loss, grad_student, upstream) = (call.loss, call.grad_student, call.upstream);
    let pair =
        PairRawBuffers { student: call.student, teacher: call.teacher, loss, grad_student, grad_teacher: 0, upstream };
    let buffers = F::raw_buffers(pair)?;
    let mut outcome = Ok(());
    F::with_shape(&student, &teacher, |shape| {
        // SAFETY: forwarded from the caller.
        outcome = unsafe { launch::<F>(ctx, config, shape, dtype, &buffers, options, call.stream) };
        Ok(())
    })?;
    outcome
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
pub(crate) unsafe fn cpu<F: StudentGradFamily>(config: F::Config, call: HostCall) -> crate::Outcome {
    // SAFETY: forwarded from the caller.
    let (student, teacher) = unsafe {
        (read_shape(call.student_shape, call.student_ndim)?, read_shape(call.teacher_shape, call.teacher_ndim)?)
    };
    F::with_shape(&student, &teacher, |_| Ok(()))?;
    let dtype = host_dtype(call.dtype)?;
    let options = call.options.to_crate()?;
    let job = CpuCall::<F> {
        reference: F::Reference::new(config)?,
        shapes: (Nchw::from_dims("student", &student)?, Nchw::from_dims("teacher", &teacher)?),
        student: call.student,
        teacher: call.teacher,
        loss: call.loss,
        grad_student: call.grad_student,
        options,
    };
    cpu::dispatch(dtype, job)
}

struct CpuCall<F: StudentGradFamily> {
    reference: F::Reference,
    /// The student's and the teacher's dims, checked by the family.
    shapes: (Nchw, Nchw),
    student: *const c_void,
    teacher: *const c_void,
    loss: *mut f64,
    grad_student: *mut c_void,
    options: GradOptions,
}

impl<F: StudentGradFamily> PerElement for CpuCall<F> {
    fn run<T: Element>(self) -> crate::Outcome {
        // SAFETY: the entry point's contract: host tensors of the shapes in this dtype.
        let student = unsafe { cpu::view::<T>("student", self.student, &self.shapes.0)? };
        let teacher = unsafe { cpu::view::<T>("teacher", self.teacher, &self.shapes.1)? };
        let (loss, grad) = if self.grad_student.is_null() {
            (self.reference.loss(student, teacher)?, None)
        } else {
            let out = self.reference.gradients(student, teacher, 1.0)?;
            (out.loss, Some(out.grad_student))
        };
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
