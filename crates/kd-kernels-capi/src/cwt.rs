//! CWT's entry points: `kd_cwt_cuda` (device addresses, the caller's stream) and `kd_cwt_cpu` (host
//! pointers, the f64 reference). The MLP parameters are f32 (`W1 [Ch, Cs]`, `b1 [Ch]`, `W2 [Ct, Ch]`,
//! `b2 [Ct]`), as the crate keeps them.

use std::ffi::c_void;

use kd::cwt::{Cwt, CwtConfig, CwtCpu, CwtNormalize, CwtRawBuffers, CwtSetup, CwtShapes, MlpParams};
use kd::ndarray::{ArrayView1, ArrayView2};
use kd::shape::Nchw;
use kd::GradOptions;

use crate::context::{launch, KdContext};
use crate::cpu::{self, Element, PerElement};
use crate::entry::{self, RawShape};
use crate::{
    guard, host_dtype, kernel_dtype, read_params, read_shape, Failure, KdDtype, KdGradOptions, KdStatus,
    KD_ERR_NULL_POINTER, KD_ERR_OUTPUT, KD_ERR_PARAMETER,
};

/// CWT's divisor of the summed squared error.
pub type KdCwtNormalize = i32;

/// Channel-wise transformation (docs/losses.md §5): Y = W2 ReLU(W1 x + b1) + b2 per pixel (Cs -> Ch -> Ct),
/// loss = loss_weight * sum (Y - F_t)^2 / D. Default loss_weight 2e-5, KD_CWT_NORMALIZE_BATCH, Ch = Ct.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdCwtConfig {
    /// The loss weight; finite.
    pub loss_weight: f64,
    /// A kd_cwt_normalize.
    pub normalize: KdCwtNormalize,
    /// The hidden width `Ch`.
    pub hidden_channels: i64,
}

/// D = N (MGD's normaliser, the default).
pub const KD_CWT_NORMALIZE_BATCH: KdCwtNormalize = 0;
/// D = N*Ct*H*W.
pub const KD_CWT_NORMALIZE_MEAN: KdCwtNormalize = 1;

/// The configuration, and the channel counts with both feature shapes checked by the crate.
fn config(params: KdCwtConfig, student: &[usize], teacher: &[usize]) -> Result<(CwtConfig, CwtShapes), Failure> {
    let modes = [
        ("KD_CWT_NORMALIZE_BATCH", KD_CWT_NORMALIZE_BATCH, CwtNormalize::Batch),
        ("KD_CWT_NORMALIZE_MEAN", KD_CWT_NORMALIZE_MEAN, CwtNormalize::Mean),
    ];
    let normalize = entry::named("normalize", params.normalize, &modes)?;
    let config = CwtConfig { loss_weight: params.loss_weight, normalize };
    config.validate()?;
    let ch = usize::try_from(params.hidden_channels).map_err(|_| {
        Failure::new(
            KD_ERR_PARAMETER,
            format!("parameter `hidden_channels` = {} is invalid: it must be at least 1", params.hidden_channels),
        )
    })?;
    let dim = |shape: &[usize], i: usize| shape.get(i).copied().unwrap_or(0);
    let shapes = CwtShapes { cs: dim(student, 1), ch, ct: dim(teacher, 1) };
    // Rank and shape errors first, in the crate's words (a missing dimension reads as rank, not as 0).
    Nchw::from_dims("student", student)?;
    Nchw::from_dims("teacher", teacher)?;
    shapes.check_features(student, teacher)?;
    Ok((config, shapes))
}

/// The parameter block and the two shapes, read and checked: what both entry points start from.
///
/// # Safety
/// `params` and the shapes are null or readable.
unsafe fn read_setup(
    params: *const KdCwtConfig, [student, teacher]: [RawShape; 2],
) -> Result<(CwtConfig, CwtShapes, [Vec<usize>; 2]), Failure> {
    // SAFETY: forwarded from the caller.
    let params = unsafe { read_params(params, "params")? };
    let dims = unsafe { [read_shape(student.0, student.1)?, read_shape(teacher.0, teacher.1)?] };
    let (config, shapes) = config(params, &dims[0], &dims[1])?;
    Ok((config, shapes, dims))
}

/// CWT on the GPU, queued on `stream`. Student [N, Cs, H, W] and teacher [N, Ct, H, W] in `dtype`;
/// `weights` points to the device addresses of W1 [Ch, Cs], b1 [Ch], W2 [Ct, Ch], b2 [Ct] (f32). With
/// `grad_student` != 0, `grad_weights` points to the addresses of their four f32 gradients (all five
/// gradients or none). The teacher gets no gradient.
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble), for the two shapes (features in `dtype`,
/// parameters and their gradients f32).
#[no_mangle]
pub unsafe extern "C" fn kd_cwt_cuda(
    ctx: *mut KdContext, params: *const KdCwtConfig, student_shape: *const i64, student_ndim: usize,
    teacher_shape: *const i64, teacher_ndim: usize, dtype: KdDtype, student: u64, teacher: u64, weights: *const u64,
    loss: u64, grad_student: u64, grad_weights: *const u64, upstream: u64, options: KdGradOptions, stream: *mut c_void,
) -> KdStatus {
    guard(|| {
        let shapes = [(student_shape, student_ndim), (teacher_shape, teacher_ndim)];
        // SAFETY: forwarded from the caller.
        let (config, shapes, [student_dims, _]) = unsafe { read_setup(params, shapes)? };
        let (dtype, options) = (kernel_dtype(dtype)?, options.to_crate()?);
        let [w1, b1, w2, b2] = unsafe { read_addresses(weights)? }.ok_or_else(|| {
            Failure::new(KD_ERR_NULL_POINTER, "weights: a null pointer; pass the 4 parameter addresses")
        })?;
        let [grad_w1, grad_b1, grad_w2, grad_b2] = unsafe { read_addresses(grad_weights)? }.unwrap_or_default();
        let buffers = CwtRawBuffers {
            student,
            teacher,
            w1,
            b1,
            w2,
            b2,
            loss,
            grad_student,
            grad_w1,
            grad_b1,
            grad_w2,
            grad_b2,
            upstream,
        };
        // SAFETY: forwarded from the caller.
        unsafe { launch::<Cwt>(ctx, &CwtSetup { config, shapes }, &student_dims, dtype, &buffers, options, stream) }
    })
}

/// Four addresses (w1, b1, w2, b2), or `None` for a null pointer.
///
/// # Safety
/// `at` is null or points to 4 readable `u64`s.
unsafe fn read_addresses(at: *const u64) -> Result<Option<[u64; 4]>, Failure> {
    if at.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    Ok(Some(unsafe { *at.cast::<[u64; 4]>() }))
}

struct CpuCall {
    cwt: CwtCpu,
    student_shape: Nchw,
    teacher_shape: Nchw,
    shapes: CwtShapes,
    student: *const c_void,
    teacher: *const c_void,
    weights: [*const f32; 4],
    loss: *mut f64,
    grad_student: *mut c_void,
    grad_weights: [*mut f64; 4],
    options: GradOptions,
}

impl PerElement for CpuCall {
    fn run<T: Element>(self) -> crate::Outcome {
        let CwtShapes { cs, ch, ct } = self.shapes;
        // SAFETY: the entry point's contract: host tensors of these shapes.
        let student = unsafe { cpu::view::<T>("student", self.student, &self.student_shape)? };
        let teacher = unsafe { cpu::view::<T>("teacher", self.teacher, &self.teacher_shape)? };
        let [w1, b1, w2, b2] = self.weights;
        let mlp = unsafe {
            MlpParams {
                w1: ArrayView2::from_shape_ptr((ch, cs), w1),
                b1: ArrayView1::from_shape_ptr(ch, b1),
                w2: ArrayView2::from_shape_ptr((ct, ch), w2),
                b2: ArrayView1::from_shape_ptr(ct, b2),
            }
        };
        let loss = if self.grad_student.is_null() {
            self.cwt.forward(student, teacher, &mlp)?
        } else {
            let out = self.cwt.forward_backward(student, teacher, &mlp)?;
            // SAFETY: the entry point's contract: writable gradients of these shapes.
            unsafe {
                cpu::store::<T>(self.grad_student, &out.grad_student, self.options);
                let [gw1, gb1, gw2, gb2] = self.grad_weights;
                cpu::store_f64(gw1, out.grad_w1.iter(), self.options);
                cpu::store_f64(gb1, out.grad_b1.iter(), self.options);
                cpu::store_f64(gw2, out.grad_w2.iter(), self.options);
                cpu::store_f64(gb2, out.grad_b2.iter(), self.options);
            }
            out.loss
        };
        // SAFETY: the entry point's contract: null or one writable f64.
        unsafe { cpu::write_outputs::<T>((self.loss, loss), (std::ptr::null_mut(), None), self.options) };
        Ok(())
    }
}

/// CWT on the CPU reference: `weights` are the four f32 host arrays W1 [Ch, Cs], b1 [Ch], W2 [Ct, Ch],
/// b2 [Ct]; the loss into `*loss` (when not null); with `grad_student` != NULL, the student gradient (in
/// `dtype`) and the four parameter gradients (f64 host arrays, into `grad_weights[0..4]`, all needed).
///
/// # Safety
/// The CPU entry points' contract (the header's preamble), for the two shapes; `weights` points to the four
/// f32 parameter arrays; with `grad_student`, `grad_weights` points to four writable f64 arrays of the
/// parameters' sizes (initialised, with `options.accumulate`).
#[no_mangle]
pub unsafe extern "C" fn kd_cwt_cpu(
    params: *const KdCwtConfig, student_shape: *const i64, student_ndim: usize, teacher_shape: *const i64,
    teacher_ndim: usize, dtype: KdDtype, student: *const c_void, teacher: *const c_void, weights: *const *const f32,
    loss: *mut f64, grad_student: *mut c_void, grad_weights: *const *mut f64, options: KdGradOptions,
) -> KdStatus {
    guard(|| {
        let shapes = [(student_shape, student_ndim), (teacher_shape, teacher_ndim)];
        // SAFETY: forwarded from the caller.
        let (config, shapes, [student_dims, teacher_dims]) = unsafe { read_setup(params, shapes)? };
        let (dtype, options) = (host_dtype(dtype)?, options.to_crate()?);
        let (student_shape, teacher_shape) = shapes.check_features(&student_dims, &teacher_dims)?;
        if weights.is_null() {
            return Err(Failure::new(KD_ERR_NULL_POINTER, "weights: a null pointer; pass the 4 parameter arrays"));
        }
        // SAFETY: forwarded from the caller.
        let weights = unsafe { *weights.cast::<[*const f32; 4]>() };
        if weights.iter().any(|w| w.is_null()) {
            return Err(Failure::new(KD_ERR_NULL_POINTER, "weights: a null parameter array (w1, b1, w2, b2)"));
        }
        let grad_weights = if grad_student.is_null() {
            [std::ptr::null_mut(); 4]
        } else {
            let missing =
                grad_weights.is_null() || unsafe { *grad_weights.cast::<[*mut f64; 4]>() }.iter().any(|g| g.is_null());
            if missing {
                return Err(Failure::new(
                    KD_ERR_OUTPUT,
                    "grad_weights: the student gradient comes with the four parameter gradients; pass all four",
                ));
            }
            unsafe { *grad_weights.cast::<[*mut f64; 4]>() }
        };
        let cwt = CwtCpu::new(config)?;
        let call = CpuCall {
            cwt,
            student_shape,
            teacher_shape,
            shapes,
            student,
            teacher,
            weights,
            loss,
            grad_student,
            grad_weights,
            options,
        };
        cpu::dispatch(dtype, call)
    })
}
