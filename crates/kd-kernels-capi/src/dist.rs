//! DIST's entry points: `kd_dist_cuda` (device addresses, the caller's stream) and `kd_dist_cpu` (host
//! pointers, the f64 reference).

use std::ffi::c_void;
use std::ptr::null_mut;

use kd::dist::{Dist, DistConfig};
use kd::family::PairRawBuffers;
use kd::shape::Nchw;

use crate::context::{launch, KdContext};
use crate::cpu::{self, PairCall};
use crate::{guard, host_dtype, kernel_dtype, read_params, read_shape, Failure, KdDtype, KdGradOptions, KdStatus};

/// DIST, segmentation form (docs/losses.md §8): with p = softmax over C of x / tau per pixel,
/// L = loss_weight * tau^2 * (inter_loss_weight * (1 - mean over pixels of the Pearson correlation of p_S and
/// p_T across classes) + intra_loss_weight * (1 - mean over classes of their correlation across all
/// N*H*W pixels)). Defaults (DIST_KD's, mmrazor's DISTLoss): all 1.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdDistConfig {
    /// Softmax temperature; finite and > 0.
    pub tau: f64,
    /// Weight of the inter-class term (DIST's beta); finite.
    pub inter_loss_weight: f64,
    /// Weight of the intra-class term (DIST's gamma); finite.
    pub intra_loss_weight: f64,
    /// Factor on the whole loss; finite.
    pub loss_weight: f64,
}

fn config(params: KdDistConfig) -> Result<DistConfig, Failure> {
    let config = DistConfig {
        tau: params.tau,
        beta: params.inter_loss_weight,
        gamma: params.intra_loss_weight,
        loss_weight: params.loss_weight,
    };
    config.validate()?;
    Ok(config)
}

/// DIST on the GPU, queued on `stream` (no teacher gradient: the teacher is a constant).
///
/// # Safety
/// As `kd_cwd_cuda`: `ctx` from `kd_context_create`; readable `params` and `shape`; `stream` of the
/// context's device or null; non-zero addresses are device memory of that context sized for `shape`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kd_dist_cuda(
    ctx: *mut KdContext,
    params: *const KdDistConfig,
    shape: *const i64,
    ndim: usize,
    dtype: KdDtype,
    student: u64,
    teacher: u64,
    loss: u64,
    grad_student: u64,
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
        let config = config(params)?;
        let buffers = PairRawBuffers { student, teacher, loss, grad_student, grad_teacher: 0, upstream };
        // SAFETY: forwarded from the caller.
        unsafe { launch::<Dist>(ctx, &config, &shape, dtype, &buffers, options, stream) }
    })
}

/// DIST on the CPU reference: the loss into `*loss` (when not null), the student gradient (when not null)
/// in `dtype`.
///
/// # Safety
/// As `kd_cwd_cpu`, without a teacher gradient.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kd_dist_cpu(
    params: *const KdDistConfig,
    shape: *const i64,
    ndim: usize,
    dtype: KdDtype,
    student: *const c_void,
    teacher: *const c_void,
    loss: *mut f64,
    grad_student: *mut c_void,
    options: KdGradOptions,
) -> KdStatus {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let params = unsafe { read_params(params, "params")? };
        let dims = unsafe { read_shape(shape, ndim)? };
        let shape = Nchw::from_dims("student", &dims)?;
        let dtype = host_dtype(dtype)?;
        let options = options.to_crate()?;
        let config = config(params)?;
        cpu::dispatch(
            dtype,
            PairCall::<Dist> { config, shape, student, teacher, loss, grad_student, grad_teacher: null_mut(), options },
        )
    })
}
