//! DIST's entry points: `kd_dist_cuda` (device addresses, the caller's stream) and `kd_dist_cpu` (host
//! pointers, the f64 reference).

use std::ffi::c_void;
use std::ptr::null_mut;

use kd::dist::{Dist, DistConfig};
use kd::family::PairRawBuffers;

use crate::context::KdContext;
use crate::entry::{self, HostPair};
use crate::{KdDtype, KdGradOptions, KdStatus};

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

abi_config!(KdDistConfig => Dist, |params, _teacher_grad| {
    let (beta, gamma) = (params.inter_loss_weight, params.intra_loss_weight);
    Ok(DistConfig { tau: params.tau, beta, gamma, loss_weight: params.loss_weight })
});

/// DIST on the GPU, queued on `stream` (no teacher gradient: the teacher is a constant).
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble), for `shape`.
#[no_mangle]
pub unsafe extern "C" fn kd_dist_cuda(
    ctx: *mut KdContext, params: *const KdDistConfig, shape: *const i64, ndim: usize, dtype: KdDtype, student: u64,
    teacher: u64, loss: u64, grad_student: u64, upstream: u64, options: KdGradOptions, stream: *mut c_void,
) -> KdStatus {
    let pair = PairRawBuffers { student, teacher, loss, grad_student, grad_teacher: 0, upstream };
    let buffers = entry::pair_buffers::<KdDistConfig>(pair);
    // SAFETY: forwarded from the caller.
    unsafe { entry::same_shape_cuda(ctx, params, (shape, ndim), dtype, buffers, options, stream) }
}

/// DIST on the CPU reference: the loss into `*loss` (when not null), the student gradient (when not null)
/// in `dtype`.
///
/// # Safety
/// The CPU entry points' contract (the header's preamble), for `shape`.
#[no_mangle]
pub unsafe extern "C" fn kd_dist_cpu(
    params: *const KdDistConfig, shape: *const i64, ndim: usize, dtype: KdDtype, student: *const c_void,
    teacher: *const c_void, loss: *mut f64, grad_student: *mut c_void, options: KdGradOptions,
) -> KdStatus {
    let io = HostPair { student, teacher, loss, grad_student, grad_teacher: null_mut() };
    // SAFETY: forwarded from the caller.
    unsafe { entry::pair_cpu(params, (shape, ndim), dtype, io, options) }
}
