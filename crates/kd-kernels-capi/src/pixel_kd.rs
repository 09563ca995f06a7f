//! Pixel KD's entry points: `kd_pixel_kd_cuda` (device addresses, the caller's stream) and
//! `kd_pixel_kd_cpu` (host pointers, the f64 reference).

use std::ffi::c_void;
use std::ptr::null_mut;

use kd::pixel_kd::{PixelKd, PixelKdConfig, PixelKdRawBuffers, Reduction};
use kd::shape::Nchw;

use crate::context::{launch, KdContext};
use crate::cpu::{self, PairCall};
use crate::{
    guard, host_dtype, kernel_dtype, read_params, read_shape, Failure, KdDtype, KdGradOptions, KdStatus,
    KD_ERR_PARAMETER,
};

/// Pixel KD's divisor of the summed per-pixel KL.
pub type KdReduction = i32;

/// N*C*H*W (PyTorch KLDivLoss's default, the official one).
pub const KD_REDUCTION_MEAN: KdReduction = 0;
/// N.
pub const KD_REDUCTION_BATCHMEAN: KdReduction = 1;
/// 1.
pub const KD_REDUCTION_SUM: KdReduction = 2;
/// N*H*W.
pub const KD_REDUCTION_PIXELMEAN: KdReduction = 3;

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

fn config(params: KdPixelKdConfig) -> Result<PixelKdConfig, Failure> {
    let reduction = match params.reduction {
        KD_REDUCTION_MEAN => Reduction::Mean,
        KD_REDUCTION_BATCHMEAN => Reduction::BatchMean,
        KD_REDUCTION_SUM => Reduction::Sum,
        KD_REDUCTION_PIXELMEAN => Reduction::PixelMean,
        other => {
            return Err(Failure::new(
                KD_ERR_PARAMETER,
                format!("parameter `reduction` = {other} is invalid: it must be one of KD_REDUCTION_MEAN (0), KD_REDUCTION_BATCHMEAN (1), KD_REDUCTION_SUM (2), KD_REDUCTION_PIXELMEAN (3)"),
            ))
        }
    };
    let config = PixelKdConfig {
        tau: params.tau,
        loss_weight: params.loss_weight,
        reduction,
        scale_tau2: params.scale_tau2 != 0,
    };
    config.validate()?;
    Ok(config)
}

/// Pixel KD on the GPU, queued on `stream` (no teacher gradient: the teacher is a constant).
///
/// # Safety
/// As `kd_cwd_cuda`: `ctx` from `kd_context_create`; readable `params` and `shape`; `stream` of the
/// context's device or null; non-zero addresses are device memory of that context sized for `shape`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kd_pixel_kd_cuda(
    ctx: *mut KdContext,
    params: *const KdPixelKdConfig,
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
        let buffers = PixelKdRawBuffers { student, teacher, loss, grad_student, grad_teacher: 0, upstream };
        // SAFETY: forwarded from the caller.
        unsafe { launch::<PixelKd>(ctx, &config, &shape, dtype, &buffers, options, stream) }
    })
}

/// Pixel KD on the CPU reference: the loss into `*loss` (when not null), the student gradient (when not
/// null) in `dtype`.
///
/// # Safety
/// As `kd_cwd_cpu`, without a teacher gradient.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kd_pixel_kd_cpu(
    params: *const KdPixelKdConfig,
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
        let grad_teacher = null_mut();
        cpu::dispatch(
            dtype,
            PairCall::<PixelKd> { config, shape, student, teacher, loss, grad_student, grad_teacher, options },
        )
    })
}
