//! Host pointers into the CPU reference and its f64 gradients back into the caller's dtype.

use std::ffi::c_void;

use kd::family::PairFamily;
use kd::half::{bf16, f16};
use kd::ndarray::{Array4, ArrayView4};
use kd::shape::Nchw;
use kd::{DType, GradOptions, HostFloat};

use crate::entry::HostPair;
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

/// Writes f64 values (parameter gradients, matrices) with the options: `scale` times the value, added to
/// what is there with `accumulate`.
///
/// # Safety
/// `out` points to as many writable f64 as `values` yields.
pub(crate) unsafe fn store_f64<'a>(
    out: *mut f64, values: impl ExactSizeIterator<Item = &'a f64>, options: GradOptions,
) {
    // SAFETY: forwarded from the caller.
    let out = unsafe { std::slice::from_raw_parts_mut(out, values.len()) };
    for (o, &v) in out.iter_mut().zip(values) {
        *o = options.scale * v + if options.accumulate { *o } else { 0.0 };
    }
}

/// Writes what a CPU call computed: the loss where `loss_at` is not null, the student gradient where
/// `grad_at` is not null and the call computed one.
///
/// # Safety
/// `loss_at` is null or one writable f64; `grad_at` is null or as [`store`]'s `out` for `grad`.
pub(crate) unsafe fn write_outputs<T: Element>(
    (loss_at, loss): (*mut f64, f64), (grad_at, grad): (*mut c_void, Option<&Array4<f64>>), options: GradOptions,
) {
    if let (Some(grad), false) = (grad, grad_at.is_null()) {
        // SAFETY: forwarded from the caller.
        unsafe { store::<T>(grad_at, grad, options) };
    }
    if !loss_at.is_null() {
        // SAFETY: forwarded from the caller.
        unsafe { *loss_at = loss };
    }
}

/// A CPU call of a pair family (its f64 reference's `forward_backward`): the loss into `*loss` when not
/// null, the student gradient into `grad_student` when not null, and the teacher's into `grad_teacher` when
/// the reference gives one (CWD with `teacher_grad`).
pub(crate) struct PairCall<F: PairFamily> {
    pub(crate) config: F::Config,
    pub(crate) shape: Nchw,
    pub(crate) io: HostPair,
    pub(crate) options: GradOptions,
}

impl<F: PairFamily> PerElement for PairCall<F> {
    fn run<T: Element>(self) -> crate::Outcome {
        let io = self.io;
        // SAFETY: the entry point's contract: host tensors of `shape` in this dtype.
        let student = unsafe { view::<T>("student", io.student, &self.shape)? };
        let teacher = unsafe { view::<T>("teacher", io.teacher, &self.shape)? };
        let out = F::cpu(&self.config, student, teacher)?;
        // SAFETY: the entry point's contract: null or writable outputs of `shape` in this dtype.
        unsafe {
            write_outputs::<T>((io.loss, out.loss), (io.grad_student, Some(&out.grad_student)), self.options);
            write_outputs::<T>((std::ptr::null_mut(), 0.0), (io.grad_teacher, out.grad_teacher.as_ref()), self.options);
        }
        Ok(())
    }
}
