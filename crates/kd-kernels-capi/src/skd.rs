//! SKD's entry points: `kd_skd_cuda` (device addresses, the caller's stream) and `kd_skd_cpu` (host pointers,
//! the f64 reference). Two shapes: the teacher's channel count may differ from the student's.

use std::ffi::c_void;

use kd::skd::{Skd, SkdConfig, SkdPool};
use kd::KdError;

use kd::family::PairRawBuffers;

use crate::context::KdContext;
use crate::entry::HostPair;
use crate::relation;
use crate::{KdDtype, KdGradOptions, KdStatus};

/// SKD, pair-wise similarity distillation (docs/losses.md §9): per image, the features pooled (`pool`),
/// normalised per pixel over the channels, every pixel's cosine similarity to every other pixel of its image
/// (a P x P matrix, never formed); L = loss_weight * mean over N*P*P of (A_S - A_T)^2. The defaults (the
/// official CriterionStructuralKD): loss_weight 1, pool 2.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdSkdConfig {
    /// Factor on the mean; finite (CIRKD's scripts use 10).
    pub loss_weight: f64,
    /// 2: the official 2x2 max pool, stride 2, ceil_mode; 1: no pooling.
    pub pool: i64,
}

abi_config!(KdSkdConfig => Skd, |params, _teacher_grad| {
    let pool = usize::try_from(params.pool).ok().map(SkdPool::from_window).unwrap_or_else(|| {
        Err(KdError::InvalidParameter {
            name: "pool",
            value: params.pool.to_string(),
            requirement: "2 (the official 2x2 max pool) or 1 (no pooling)",
        })
    })?;
    Ok(SkdConfig { loss_weight: params.loss_weight, pool })
});

/// SKD on the GPU, queued on `stream`: the loss (one f32) where `loss` is non-zero, d loss / d student (in
/// `dtype`, times the device f32 at `upstream` where that is non-zero) where `grad_student` is. Student
/// [N, Cs, H, W], teacher [N, Ct, H, W] (the same N, H, W; the channel counts may differ). No teacher gradient.
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble), for the two shapes.
#[no_mangle]
pub unsafe extern "C" fn kd_skd_cuda(
    ctx: *mut KdContext, params: *const KdSkdConfig, student_shape: *const i64, student_ndim: usize,
    teacher_shape: *const i64, teacher_ndim: usize, dtype: KdDtype, student: u64, teacher: u64, loss: u64,
    grad_student: u64, upstream: u64, options: KdGradOptions, stream: *mut c_void,
) -> KdStatus {
    let shapes = [(student_shape, student_ndim), (teacher_shape, teacher_ndim)];
    let pair = PairRawBuffers { student, teacher, loss, grad_student, grad_teacher: 0, upstream };
    // SAFETY: forwarded from the caller.
    unsafe { relation::cuda(ctx, params, shapes, dtype, pair, options, stream) }
}

/// SKD on the CPU reference: the loss into `*loss` (where not null) and the student gradient (in `dtype`)
/// where `grad_student` is not null. Shapes as in `kd_skd_cuda`.
///
/// # Safety
/// The CPU entry points' contract (the header's preamble), for the two shapes; `grad_student` of the
/// student's.
#[no_mangle]
pub unsafe extern "C" fn kd_skd_cpu(
    params: *const KdSkdConfig, student_shape: *const i64, student_ndim: usize, teacher_shape: *const i64,
    teacher_ndim: usize, dtype: KdDtype, student: *const c_void, teacher: *const c_void, loss: *mut f64,
    grad_student: *mut c_void, options: KdGradOptions,
) -> KdStatus {
    let shapes = [(student_shape, student_ndim), (teacher_shape, teacher_ndim)];
    let io = HostPair { student, teacher, loss, grad_student, grad_teacher: std::ptr::null_mut() };
    // SAFETY: forwarded from the caller.
    unsafe { relation::cpu(params, shapes, dtype, io, options) }
}
