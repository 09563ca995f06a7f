//! Host pointers into the CPU reference and its f64 gradients back into the caller's dtype.

use std::ffi::c_void;

use kd::family::PairFamily;
use kd::half::{bf16, f16};
use kd::ndarray::{Array4, ArrayView4};
use kd::shape::Nchw;
use kd::{DType, GradOptions, HostFloat};

use crate::{Failure, HostDtype, KD_ERR_NULL_POINTER};

/// An element type the CPU entry points read and write.
pub(crate) trait Element: HostFloat {
    fn round_from(v: f64) -> Self;
}

impl Element for f32 {
    fn round_from(v: f64) -> Self {
        v as f32
    }
}

impl Element for f16 {
    fn round_from(v: f64) -> Self {
        f16::from_f64(v)
    }
}

impl Element for bf16 {
    fn round_from(v: f64) -> Self {
        bf16::from_f64(v)
    }
}

impl Element for f64 {
    fn round_from(v: f64) -> Self {
        v
    }
}

/// Code generic over the element type, run for a `kd_dtype` known at run time.
pub(crate) trait PerElement {
    fn run<T: Element>(self) -> crate::Outcome;
}

pub(crate) fn dispatch(dtype: HostDtype, job: impl PerElement) -> crate::Outcome {
    match dtype {
        HostDtype::Kernel(DType::F32) => job.run::<f32>(),
        HostDtype::Kernel(DType::F16) => job.run::<f16>(),
        HostDtype::Kernel(DType::BF16) => job.run::<bf16>(),
        HostDtype::F64 => job.run::<f64>(),
    }
}

/// A view of a caller's host tensor.
///
/// # Safety
/// `data` is null or points to `shape.numel()` readable, initialised `T`s that outlive `'a`.
pub(crate) unsafe fn view<'a, T>(what: &str, data: *const c_void, shape: &Nchw) -> Result<ArrayView4<'a, T>, Failure> {
    if data.is_null() {
        return Err(Failure::new(KD_ERR_NULL_POINTER, format!("{what}: a null pointer; pass the tensor's data")));
    }
    // The shape was validated (no zero dimension, element count within i64), which is what `from_shape_ptr`
    // needs besides the caller's contract.
    // SAFETY: forwarded from the caller.
    Ok(unsafe { ArrayView4::from_shape_ptr(shape.dims(), data.cast::<T>()) })
}

/// Writes `options.scale * grad` (added to what is there, with `options.accumulate`), rounded once.
///
/// # Safety
/// `out` points to `grad.len()` writable `T`s (initialised, with `options.accumulate`).
pub(crate) unsafe fn store<T: Element>(out: *mut c_void, grad: &Array4<f64>, options: GradOptions) {
    // SAFETY: forwarded from the caller.
    let out = unsafe { std::slice::from_raw_parts_mut(out.cast::<T>(), grad.len()) };
    // `grad` is freshly allocated by the reference, so its iteration order is its memory order (NCHW).
    for (o, &g) in out.iter_mut().zip(grad.iter()) {
        let value = options.scale * g;
        *o = T::round_from(if options.accumulate { o.to_f64() + value } else { value });
    }
}

/// A CPU call of a pair family (its f64 reference's `forward_backward`): the loss into `*loss` when not
/// null, the student gradient into `grad_student` when not null, and the teacher's into `grad_teacher` when
/// the reference gives one (CWD with `teacher_grad`).
pub(crate) struct PairCall<F: PairFamily> {
    pub(crate) config: F::Config,
    pub(crate) shape: Nchw,
    pub(crate) student: *const c_void,
    pub(crate) teacher: *const c_void,
    pub(crate) loss: *mut f64,
    pub(crate) grad_student: *mut c_void,
    pub(crate) grad_teacher: *mut c_void,
    pub(crate) options: GradOptions,
}

impl<F: PairFamily> PerElement for PairCall<F> {
    fn run<T: Element>(self) -> crate::Outcome {
        // SAFETY: the entry point's contract: host tensors of `shape` in this dtype.
        let student = unsafe { view::<T>("student", self.student, &self.shape)? };
        let teacher = unsafe { view::<T>("teacher", self.teacher, &self.shape)? };
        let out = F::cpu(&self.config, student, teacher)?;
        if !self.grad_student.is_null() {
            // SAFETY: the entry point's contract: a writable gradient of `shape` in this dtype.
            unsafe { store::<T>(self.grad_student, &out.grad_student, self.options) };
        }
        if let (Some(grad), false) = (&out.grad_teacher, self.grad_teacher.is_null()) {
            // SAFETY: as the student's.
            unsafe { store::<T>(self.grad_teacher, grad, self.options) };
        }
        if !self.loss.is_null() {
            // SAFETY: the entry point's contract.
            unsafe { *self.loss = out.loss };
        }
        Ok(())
    }
}
