//! Pixel KD's entry points: `kd_pixel_kd_cuda` (device addresses, the caller's stream) and
//! `kd_pixel_kd_cpu` (host pointers, the f64 reference).

use std::ffi::c_void;
use std::ptr::null_mut;

use kd::pixel_kd::{PixelKd, PixelKdConfig, PixelKdRawBuffers, Reduction};

use crate::context::KdContext;
use crate::entry::{self, HostPair};
use crate::{KdDtype, KdGradOptions, KdStatus};

/// Pixel KD's divisor of the summed per-pixel KL.
pub type KdReduction = i32;

/// Pixel-wise KD (docs/losses.md §2). Official defaults: tau 1, loss_weight 10, KD_REDUCTION_MEAN,
/// scale_tau2 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdPixelKdConfig {
    /// Softmax temperature; finite and > 0.
    pub tau: f64,
    /// Weight of the loss; finite.
    pub loss_weight: f64,
    /// A kd_reduction.
    pub reduction: KdReduction,
    /// Non-zero: multiply by tau^2.
    pub scale_tau2: i32,
}

abi_config!(KdPixelKdConfig => PixelKd, |params, _teacher_grad| {
    let reduction = entry::named(
        "reduction",
        params.reduction,
        &[
            ("KD_REDUCTION_MEAN", KD_REDUCTION_MEAN, Reduction::Mean),
            ("KD_REDUCTION_BATCHMEAN", KD_REDUCTION_BATCHMEAN, Reduction::BatchMean),
            ("KD_REDUCTION_SUM", KD_REDUCTION_SUM, Reduction::Sum),
            ("KD_REDUCTION_PIXELMEAN", KD_REDUCTION_PIXELMEAN, Reduction::PixelMean),
        ],
    )?;
    let scale_tau2 = params.scale_tau2 != 0;
    Ok(PixelKdConfig { tau: params.tau, loss_weight: params.loss_weight, reduction, scale_tau2 })
});

/// N*C*H*W (PyTorch KLDivLoss's default, the official one).
pub const KD_REDUCTION_MEAN: KdReduction = 0;
/// N.
pub const KD_REDUCTION_BATCHMEAN: KdReduction = 1;
/// 1.
pub const KD_REDUCTION_SUM: KdReduction = 2;
/// N*H*W.
pub const KD_REDUCTION_PIXELMEAN: KdReduction = 3;

/// Pixel KD on the GPU, queued on `stream` (no teacher gradient: the teacher is a constant).
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble), for `shape`.
#[no_mangle]
pub unsafe extern "C" fn kd_pixel_kd_cuda(
    ctx: *mut KdContext, params: *const KdPixelKdConfig, shape: *const i64, ndim: usize, dtype: KdDtype, student: u64,
    teacher: u64, loss: u64, grad_student: u64, upstream: u64, options: KdGradOptions, stream: *mut c_void,
) -> KdStatus {
    let pair = PixelKdRawBuffers { student, teacher, loss, grad_student, grad_teacher: 0, upstream };
    let buffers = entry::pair_buffers::<KdPixelKdConfig>(pair);
    // SAFETY: forwarded from the caller.
    unsafe { entry::same_shape_cuda(ctx, params, (shape, ndim), dtype, buffers, options, stream) }
}

/// Pixel KD on the CPU reference: the loss into `*loss` (when not null), the student gradient (when not
/// null) in `dtype`.
///
/// # Safety
/// The CPU entry points' contract (the header's preamble), for `shape`.
#[no_mangle]
pub unsafe extern "C" fn kd_pixel_kd_cpu(
    params: *const KdPixelKdConfig, shape: *const i64, ndim: usize, dtype: KdDtype, student: *const c_void,
    teacher: *const c_void, loss: *mut f64, grad_student: *mut c_void, options: KdGradOptions,
) -> KdStatus {
    let io = HostPair { student, teacher, loss, grad_student, grad_teacher: null_mut() };
    // SAFETY: forwarded from the caller.
    unsafe { entry::pair_cpu(params, (shape, ndim), dtype, io, options) }
}
