//! CIRKD's entry points: `kd_cirkd_cuda` (device addresses, the caller's stream) and `kd_cirkd_cpu` (host
//! pointers, the f64 reference). Two shapes: the teacher's channel count may differ from the student's.

use std::ffi::c_void;

use kd::cirkd::{Cirkd, CirkdConfig, CirkdPool};
use kd::KdError;

use kd::family::PairRawBuffers;

use crate::context::KdContext;
use crate::entry::HostPair;
use crate::relation;
use crate::{KdDtype, KdGradOptions, KdStatus};

/// CIRKD, mini-batch cross-image pixel relations (docs/losses.md §10): the features pooled (`pool`) and
/// normalised per pixel over the channels; for every ordered pair of images (i, j), i = j included, each
/// pixel of image i gets a softmax over the pixels of image j of the similarities / tau, and the student's is
/// pulled to the teacher's: L = loss_weight * sum over pairs of KL_ij / B^2 (KL_ij averaged over the rows).
/// The defaults (the official CriterionMiniBatchCrossImagePair(0.1)): tau 0.1, loss_weight 1, pool
/// KD_CIRKD_POOL_AUTO.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdCirkdConfig {
    /// Temperature dividing the similarities; finite and > 0.
    pub tau: f64,
    /// Factor on the loss; finite.
    pub loss_weight: f64,
    /// KD_CIRKD_POOL_AUTO (0, the official rule), KD_CIRKD_POOL_NONE (1), or K >= 2: a K x K average pool,
    /// stride K, ceil_mode, whatever the size.
    pub pool: i64,
}

abi_config!(KdCirkdConfig => Cirkd, |params, _teacher_grad| {
    let pool = match params.pool {
        KD_CIRKD_POOL_AUTO => CirkdPool::Auto,
        KD_CIRKD_POOL_NONE => CirkdPool::None,
        k if k < 0 => {
            return Err(KdError::InvalidParameter {
                name: "pool",
                value: k.to_string(),
                requirement: "KD_CIRKD_POOL_AUTO (0), KD_CIRKD_POOL_NONE (1) or a window side K >= 2",
            }
            .into())
        }
        // A side beyond usize (a 32-bit host) is beyond any window: the crate's check refuses it.
        k => CirkdPool::Avg(usize::try_from(k).unwrap_or(usize::MAX)),
    };
    Ok(CirkdConfig { tau: params.tau, loss_weight: params.loss_weight, pool })
});

/// `kd_cirkd_config.pool`: the official rule, a 4x4 average pool when H >= 256 and W >= 256, else none.
pub const KD_CIRKD_POOL_AUTO: i64 = 0;
/// `kd_cirkd_config.pool`: no pooling, whatever the size.
pub const KD_CIRKD_POOL_NONE: i64 = 1;

/// CIRKD on the GPU, queued on `stream`: the loss (one f32) where `loss` is non-zero, d loss / d student (in
/// `dtype`, times the device f32 at `upstream` where that is non-zero) where `grad_student` is. Student
/// [B, Cs, H, W], teacher [B, Ct, H, W] (the same B, H, W; the channel counts may differ). No teacher gradient.
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble), for the two shapes.
#[no_mangle]
pub unsafe extern "C" fn kd_cirkd_cuda(
    ctx: *mut KdContext, params: *const KdCirkdConfig, student_shape: *const i64, student_ndim: usize,
    teacher_shape: *const i64, teacher_ndim: usize, dtype: KdDtype, student: u64, teacher: u64, loss: u64,
    grad_student: u64, upstream: u64, options: KdGradOptions, stream: *mut c_void,
) -> KdStatus {
    let shapes = [(student_shape, student_ndim), (teacher_shape, teacher_ndim)];
    let pair = PairRawBuffers { student, teacher, loss, grad_student, grad_teacher: 0, upstream };
    // SAFETY: forwarded from the caller.
    unsafe { relation::cuda(ctx, params, shapes, dtype, pair, options, stream) }
}

/// CIRKD on the CPU reference: the loss into `*loss` (where not null) and the student gradient (in `dtype`)
/// where `grad_student` is not null. Shapes as in `kd_cirkd_cuda`.
///
/// # Safety
/// The CPU entry points' contract (the header's preamble), for the two shapes; `grad_student` of the
/// student's.
#[no_mangle]
pub unsafe extern "C" fn kd_cirkd_cpu(
    params: *const KdCirkdConfig, student_shape: *const i64, student_ndim: usize, teacher_shape: *const i64,
    teacher_ndim: usize, dtype: KdDtype, student: *const c_void, teacher: *const c_void, loss: *mut f64,
    grad_student: *mut c_void, options: KdGradOptions,
) -> KdStatus {
    let shapes = [(student_shape, student_ndim), (teacher_shape, teacher_ndim)];
    let io = HostPair { student, teacher, loss, grad_student, grad_teacher: std::ptr::null_mut() };
    // SAFETY: forwarded from the caller.
    unsafe { relation::cpu(params, shapes, dtype, io, options) }
}
