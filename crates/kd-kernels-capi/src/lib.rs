//! The C ABI of kd-kernels (`include/kd_kernels.h`): the losses on raw device pointers and a caller's
//! `CUstream` (the CUDA kernels), or on host pointers (the CPU reference), with status codes and a
//! per-thread error message. One ABI serves C/C++ (libtorch) callers and the `kd_kernels` Python package,
//! which loads this library with ctypes.
//!
//! Every entry point catches panics at the boundary (`guard`) and turns every [`KdError`] into a status
//! code and [`kd_last_error_message`]; nothing unwinds into C.
//!
//! `include/kd_kernels.h` is generated from this source by cbindgen (`cbindgen.toml` beside the manifest):
//! the items, their C names and these doc comments. `tests/header.rs` fails when the committed header
//! differs; `KD_KERNELS_BLESS_HEADER=1 cargo test -p kd-kernels-capi --test header` rewrites it.
// The doc comments are also the C header's (cbindgen copies them), written for C readers: shape notation
// such as `W1 [Ch, Cs]` is not an intra-doc link.
#![allow(rustdoc::broken_intra_doc_links)]
// The entry points take their tensors, shapes and outputs one argument each, as C callers pass them; the
// generic bodies they call take the same.
#![allow(clippy::too_many_arguments)]

// First: its `abi_config!` serves the family modules below.
#[macro_use]
mod entry;
mod cirkd;
mod context;
mod cpu;
mod cwd;
mod cwt;
mod dist;
mod icsd;
mod ifvd;
mod pixel_kd;
mod pkd;
mod relation;
mod semckd;
mod skd;

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use kd::{DType, GradOptions, KdError};

pub use cirkd::{kd_cirkd_cpu, kd_cirkd_cuda, KdCirkdConfig, KD_CIRKD_POOL_AUTO, KD_CIRKD_POOL_NONE};
pub use context::{kd_context_create, kd_context_destroy, KdContext};
pub use cwd::{kd_cwd_cpu, kd_cwd_cuda, KdCwdConfig};
pub use cwt::{kd_cwt_cpu, kd_cwt_cuda, KdCwtConfig, KdCwtNormalize, KD_CWT_NORMALIZE_BATCH, KD_CWT_NORMALIZE_MEAN};
pub use dist::{kd_dist_cpu, kd_dist_cuda, KdDistConfig};
pub use icsd::{kd_icsd_cpu, kd_icsd_cuda, KdIcsdConfig, KdIcsdVariant, KD_ICSD_OFFICIAL, KD_ICSD_PAPER};
pub use ifvd::{kd_ifvd_cpu, kd_ifvd_cuda, KdIfvdConfig, KdLabelDtype, KD_LABEL_I32, KD_LABEL_I64, KD_LABEL_U8};
pub use pixel_kd::{
    kd_pixel_kd_cpu, kd_pixel_kd_cuda, KdPixelKdConfig, KdReduction, KD_REDUCTION_BATCHMEAN, KD_REDUCTION_MEAN,
    KD_REDUCTION_PIXELMEAN, KD_REDUCTION_SUM,
};
pub use pkd::{kd_pkd_cpu, kd_pkd_cuda, KdPkdConfig};
pub use semckd::{kd_semckd_cpu, kd_semckd_cuda, KdSemckdConfig};
pub use skd::{kd_skd_cpu, kd_skd_cuda, KdSkdConfig};

/// What every call returns: `KD_OK`, or the kind of failure (`kd_last_error_message()` has the details).
pub type KdStatus = i32;

/// Success.
pub const KD_OK: KdStatus = 0;
/// A required pointer (context, parameters, shape, input) is NULL.
pub const KD_ERR_NULL_POINTER: KdStatus = 1;
/// Wrong rank, shapes that do not match, a zero or negative dimension, a buffer too small.
pub const KD_ERR_SHAPE: KdStatus = 2;
/// A tensor too large for the kernels' launch geometry or index arithmetic.
pub const KD_ERR_TOO_LARGE: KdStatus = 3;
/// A parameter out of its domain (tau not finite and > 0, a non-finite weight or scale, an unknown
/// reduction).
pub const KD_ERR_PARAMETER: KdStatus = 4;
/// The set of outputs given does not make a call (nothing to compute, a teacher gradient without the
/// student's, a teacher gradient a loss does not have).
pub const KD_ERR_OUTPUT: KdStatus = 5;
/// An unknown dtype, or one the call does not take (f64 on the GPU).
pub const KD_ERR_DTYPE: KdStatus = 6;
/// A buffer or stream of another CUDA context than the kd_context's device.
pub const KD_ERR_CONTEXT: KdStatus = 7;
/// A requested way of computing does not apply here.
pub const KD_ERR_UNSUPPORTED: KdStatus = 8;
/// The call would grow its workspace while its stream is being captured into a CUDA graph.
pub const KD_ERR_WORKSPACE: KdStatus = 9;
/// This library was built without nvcc: it has no GPU kernels (the CPU entry points work).
pub const KD_ERR_KERNELS_UNAVAILABLE: KdStatus = 10;
/// No usable CUDA driver or device.
pub const KD_ERR_CUDA_UNAVAILABLE: KdStatus = 11;
/// The CUDA driver returned an error.
pub const KD_ERR_CUDA: KdStatus = 12;
/// A Rust panic was caught at the boundary (a bug: please report it with the message).
pub const KD_ERR_PANIC: KdStatus = 13;
/// An error of a kind this version of the header does not name.
pub const KD_ERR_OTHER: KdStatus = 14;

/// The element type of the tensors of a call.
pub type KdDtype = i32;

/// 32-bit float.
pub const KD_DTYPE_F32: KdDtype = 0;
/// IEEE half.
pub const KD_DTYPE_F16: KdDtype = 1;
/// bfloat16.
pub const KD_DTYPE_BF16: KdDtype = 2;
/// 64-bit float: CPU reference only.
pub const KD_DTYPE_F64: KdDtype = 3;

/// A failed call: its status code and its message.
#[derive(Debug)]
pub(crate) struct Failure {
    status: KdStatus,
    message: String,
}

impl Failure {
    pub(crate) fn new(status: KdStatus, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }
}

impl From<KdError> for Failure {
    fn from(error: KdError) -> Self {
        let status = match &error {
            KdError::WrongRank { .. }
            | KdError::ShapeMismatch { .. }
            | KdError::EmptyInput { .. }
            | KdError::LevelShapeMismatch { .. }
            | KdError::TooFewValues { .. }
            | KdError::BufferTooSmall { .. } => KD_ERR_SHAPE,
            KdError::TooLarge { .. } => KD_ERR_TOO_LARGE,
            KdError::InvalidParameter { .. } => KD_ERR_PARAMETER,
            KdError::OutputMismatch { .. } => KD_ERR_OUTPUT,
            KdError::DTypeMismatch { .. } => KD_ERR_DTYPE,
            KdError::ContextMismatch { .. } => KD_ERR_CONTEXT,
            KdError::Unsupported { .. } => KD_ERR_UNSUPPORTED,
            KdError::WorkspaceTooSmall { .. } => KD_ERR_WORKSPACE,
            KdError::KernelsUnavailable => KD_ERR_KERNELS_UNAVAILABLE,
            KdError::CudaUnavailable { .. } => KD_ERR_CUDA_UNAVAILABLE,
            KdError::Cuda { .. } => KD_ERR_CUDA,
            _ => KD_ERR_OTHER,
        };
        Failure { status, message: error.to_string() }
    }
}

pub(crate) type Outcome = Result<(), Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // An interior NUL cannot come from the crate's messages; drop it rather than lose the message.
    let message = CString::new(message.replace('\0', "")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    format!("internal error (a panic caught at the C boundary; please report it): {what}")
}

/// Runs one entry point's body: its status, with the message recorded for [`kd_last_error_message`], and
/// any panic caught and returned as [`KD_ERR_PANIC`].
pub(crate) fn guard(body: impl FnOnce() -> Outcome) -> KdStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            KD_OK
        }
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(payload) => {
            set_last_error(&panic_message(payload.as_ref()));
            KD_ERR_PANIC
        }
    }
}

/// The message of the last failed call on this thread (`""` after a successful one); never null, valid
/// until the next call on this thread.
#[no_mangle]
pub extern "C" fn kd_last_error_message() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// 1 when this library carries GPU kernels (it was built with nvcc), else 0.
#[no_mangle]
pub extern "C" fn kd_kernels_compiled() -> i32 {
    i32::from(kd::cuda::KERNELS_COMPILED)
}

/// KD_OK when the kernels are compiled and a CUDA driver with a device is present; else the reason.
#[no_mangle]
pub extern "C" fn kd_cuda_probe() -> KdStatus {
    guard(|| Ok(kd::cuda::probe()?))
}

/// How a call writes its gradients (every call that writes gradients takes one).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdGradOptions {
    /// Factor on every gradient; finite. 1 for none.
    pub scale: f64,
    /// Non-zero: add into the gradient buffers.
    pub accumulate: i32,
}

impl KdGradOptions {
    pub(crate) fn to_crate(self) -> Result<GradOptions, Failure> {
        let options = GradOptions { scale: self.scale, accumulate: self.accumulate != 0 };
        options.validate()?;
        Ok(options)
    }
}

/// The dtypes of `kd_dtype`: the kernels' three and f64 (CPU reference only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostDtype {
    Kernel(DType),
    F64,
}

pub(crate) fn host_dtype(raw: KdDtype) -> Result<HostDtype, Failure> {
    match raw {
        KD_DTYPE_F32 => Ok(HostDtype::Kernel(DType::F32)),
        KD_DTYPE_F16 => Ok(HostDtype::Kernel(DType::F16)),
        KD_DTYPE_BF16 => Ok(HostDtype::Kernel(DType::BF16)),
        KD_DTYPE_F64 => Ok(HostDtype::F64),
        other => Err(Failure::new(
            KD_ERR_DTYPE,
            format!("dtype: unknown kd_dtype {other}; use KD_DTYPE_F32 (0), KD_DTYPE_F16 (1), KD_DTYPE_BF16 (2) or, on the CPU, KD_DTYPE_F64 (3)"),
        )),
    }
}

pub(crate) fn kernel_dtype(raw: KdDtype) -> Result<DType, Failure> {
    match host_dtype(raw)? {
        HostDtype::Kernel(dtype) => Ok(dtype),
        HostDtype::F64 => Err(Failure::new(
            KD_ERR_DTYPE,
            "dtype: the GPU kernels take f32, f16 or bf16 logits, not f64 (f64 is for the CPU reference); convert the tensors",
        )),
    }
}

/// Reads `ndim` dimensions; negative ones are a shape error (the crate checks the rest: rank, zeros, size).
///
/// # Safety
/// `shape` is null or points to `ndim` readable `i64`s.
pub(crate) unsafe fn read_shape(shape: *const i64, ndim: usize) -> Result<Vec<usize>, Failure> {
    if shape.is_null() {
        return Err(Failure::new(KD_ERR_NULL_POINTER, "shape: a null pointer; pass the NCHW dimensions"));
    }
    // SAFETY: forwarded from the caller.
    let dims = unsafe { std::slice::from_raw_parts(shape, ndim) };
    dims.iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                Failure::new(
                    KD_ERR_SHAPE,
                    format!("shape {dims:?} has a negative dimension; every dimension must be at least 1"),
                )
            })
        })
        .collect()
}

/// Reads a parameter block.
///
/// # Safety
/// `params` is null or points to a readable `T`.
pub(crate) unsafe fn read_params<T: Copy>(params: *const T, what: &str) -> Result<T, Failure> {
    if params.is_null() {
        return Err(Failure::new(KD_ERR_NULL_POINTER, format!("{what}: a null pointer; pass the loss's parameters")));
    }
    // SAFETY: forwarded from the caller.
    Ok(unsafe { *params })
}
