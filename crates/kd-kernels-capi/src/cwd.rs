//! CWD's entry points: `kd_cwd_cuda` (device addresses, the caller's stream) and `kd_cwd_cpu` (host
//! pointers, the f64 reference).

use std::ffi::c_void;

use kd::cwd::{Cwd, CwdConfig, CwdRawBuffers};

use crate::context::KdContext;
use crate::entry::{self, HostPair};
use crate::{KdDtype, KdGradOptions, KdStatus};

/// Channel-wise distillation (docs/losses.md §1). The paper's setting: tau 4, loss_weight 3.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdCwdConfig {
    /// Softmax temperature; finite and > 0.
    pub tau: f64,
    /// Weight of the loss; finite.
    pub loss_weight: f64,
}

// The teacher gradient is part of CWD's configuration (its kernels compute it in the same pass).
abi_config!(KdCwdConfig => Cwd, |params, teacher_grad| {
    Ok(CwdConfig { tau: params.tau, loss_weight: params.loss_weight, teacher_grad })
});

/// CWD on the GPU, queued on `stream`. The teacher gradient is computed exactly when `grad_teacher` != 0.
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble), for `shape` (`CwdCuda::launch_raw`'s contract).
#[no_mangle]
pub unsafe extern "C" fn kd_cwd_cuda(
    ctx: *mut KdContext, params: *const KdCwdConfig, shape: *const i64, ndim: usize, dtype: KdDtype, student: u64,
    teacher: u64, loss: u64, grad_student: u64, grad_teacher: u64, upstream: u64, options: KdGradOptions,
    stream: *mut c_void,
) -> KdStatus {
    let pair = CwdRawBuffers { student, teacher, loss, grad_student, grad_teacher, upstream };
    let buffers = entry::pair_buffers::<KdCwdConfig>(pair);
    // SAFETY: forwarded from the caller.
    unsafe { entry::same_shape_cuda(ctx, params, (shape, ndim), dtype, buffers, options, stream) }
}

/// CWD on the CPU reference: the loss into `*loss` (when not null), the gradients (when not null) in
/// `dtype`; the teacher gradient exactly when `grad_teacher` is not null, which needs `grad_student`.
///
/// # Safety
/// The CPU entry points' contract (the header's preamble), for `shape`; `grad_teacher` as `grad_student`.
#[no_mangle]
pub unsafe extern "C" fn kd_cwd_cpu(
    params: *const KdCwdConfig, shape: *const i64, ndim: usize, dtype: KdDtype, student: *const c_void,
    teacher: *const c_void, loss: *mut f64, grad_student: *mut c_void, grad_teacher: *mut c_void,
    options: KdGradOptions,
) -> KdStatus {
    let io = HostPair { student, teacher, loss, grad_student, grad_teacher };
    // SAFETY: forwarded from the caller.
    unsafe { entry::pair_cpu(params, (shape, ndim), dtype, io, options) }
}
