//! CWD's entry points: `kd_cwd_cuda` (device addresses, the caller's stream) and `kd_cwd_cpu` (host
//! pointers, the f64 reference).

use std::ffi::c_void;

use kd::cwd::{Cwd, CwdConfig, CwdRawBuffers};
use kd::shape::Nchw;

use crate::context::{launch, KdContext};
use crate::cpu::{self, PairCall};
use crate::{
    guard, host_dtype, kernel_dtype, read_params, read_shape, Failure, KdDtype, KdGradOptions, KdStatus, KD_ERR_OUTPUT,
};

/// Channel-wise distillation (docs/losses.md §1). The paper's setting: tau 4, loss_weight 3.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdCwdConfig {
    /// Softmax temperature; finite and > 0.
    pub tau: f64,
    /// Weight of the loss; finite.
    pub loss_weight: f64,
}

fn config(params: KdCwdConfig, teacher_grad: bool) -> Result<CwdConfig, Failure> {
    let config = CwdConfig { tau: params.tau, loss_weight: params.loss_weight, teacher_grad };
    config.validate()?;
    Ok(config)
}

/// CWD on the GPU, queued on `stream`. The teacher gradient is computed exactly when `grad_teacher` != 0.
///
/// # Safety
/// `ctx` comes from `kd_context_create`; `params` and `shape` (`ndim` entries) are readable; `stream` is a
/// live stream of the context's device (its primary context), or null; every non-zero address is device
/// memory of that context holding what `shape` and `dtype` need (`CwdCuda::launch_raw`'s contract).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kd_cwd_cuda(
    ctx: *mut KdContext,
    params: *const KdCwdConfig,
    shape: *const i64,
    ndim: usize,
    dtype: KdDtype,
    student: u64,
    teacher: u64,
    loss: u64,
    grad_student: u64,
    grad_teacher: u64,
    upstream: u64,
    options: KdGradOptions,
    stream: *mut c_void,
) -> KdStatus {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let params = unsafe { read_params(params, "params")? };
        let shape = unsafe { read_shape(shape, ndim)? };
        let dtype = kernel_dtype(dtype)?;
        let options = options.to_crate()?;
        let config = config(params, grad_teacher != 0)?;
        let buffers = CwdRawBuffers { student, teacher, loss, grad_student, grad_teacher, upstream };
        // SAFETY: forwarded from the caller.
        unsafe { launch::<Cwd>(ctx, &config, &shape, dtype, &buffers, options, stream) }
    })
}

/// CWD on the CPU reference: the loss into `*loss` (when not null), the gradients (when not null) in
/// `dtype`; the teacher gradient exactly when `grad_teacher` is not null, which needs `grad_student`.
///
/// # Safety
/// `params` and `shape` (`ndim` entries) are readable; `student` and `teacher` point to contiguous NCHW
/// tensors of `shape` in `dtype`; `loss` is null or writable; `grad_student` and `grad_teacher` are null or
/// point to writable tensors of `shape` in `dtype` (initialised, with `options.accumulate`).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kd_cwd_cpu(
    params: *const KdCwdConfig,
    shape: *const i64,
    ndim: usize,
    dtype: KdDtype,
    student: *const c_void,
    teacher: *const c_void,
    loss: *mut f64,
    grad_student: *mut c_void,
    grad_teacher: *mut c_void,
    options: KdGradOptions,
) -> KdStatus {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let params = unsafe { read_params(params, "params")? };
        let dims = unsafe { read_shape(shape, ndim)? };
        let shape = Nchw::from_dims("student", &dims)?;
        let dtype = host_dtype(dtype)?;
        let options = options.to_crate()?;
        if grad_student.is_null() && !grad_teacher.is_null() {
            return Err(Failure::new(
                KD_ERR_OUTPUT,
                "grad_teacher: a teacher gradient needs the student gradient too; pass grad_student",
            ));
        }
        let config = config(params, !grad_teacher.is_null())?;
        cpu::dispatch(
            dtype,
            PairCall::<Cwd> { config, shape, student, teacher, loss, grad_student, grad_teacher, options },
        )
    })
}
