//! ICSD's entry points: `kd_icsd_cuda` (device addresses, the caller's stream) and `kd_icsd_cpu` (host
//! pointers, the f64 reference). AICSD is ICSD and pixel KD weighted by the ALW schedule: two calls (the
//! second with `accumulate`), or the composition in the Python package.

use std::ffi::c_void;

use kd::icsd::{Icsd, IcsdConfig, IcsdCpu, IcsdRawBuffers, IcsdVariant};
use kd::shape::Nchw;
use kd::GradOptions;

use crate::context::{launch, KdContext};
use crate::cpu::{self, Element, PerElement};
use crate::{
    guard, host_dtype, kernel_dtype, read_params, read_shape, Failure, KdDtype, KdGradOptions, KdStatus,
    KD_ERR_PARAMETER,
};

/// ICSD's similarity matrix (docs/losses.md §3.4, §3.7).
pub type KdIcsdVariant = i32;

/// The official code: softmax along H, M = A_max(i,j) - G.
pub const KD_ICSD_OFFICIAL: KdIcsdVariant = 0;
/// The paper's prose: softmax over H*W, pairwise KL.
pub const KD_ICSD_PAPER: KdIcsdVariant = 1;

/// ICSD (docs/losses.md §3): L_ICS = loss_weight / (C^2 B) * sum (Mh_S - Mh_T)^2. Defaults: tau 1,
/// loss_weight 9500, KD_ICSD_OFFICIAL. AICSD = alpha * L_ICS + (1 - alpha) * pixel KD, alpha =
/// clamp(epoch / 120, 0, 1): two calls, the second with `accumulate` and the scales alpha, 1 - alpha.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdIcsdConfig {
    /// Softmax temperature; finite and > 0.
    pub tau: f64,
    /// The weight of `L_ICS`; finite.
    pub loss_weight: f64,
    /// A kd_icsd_variant.
    pub variant: KdIcsdVariant,
}

fn config(params: KdIcsdConfig) -> Result<IcsdConfig, Failure> {
    let variant = match params.variant {
        KD_ICSD_OFFICIAL => IcsdVariant::Official,
        KD_ICSD_PAPER => IcsdVariant::Paper,
        other => {
            return Err(Failure::new(
                KD_ERR_PARAMETER,
                format!(
                    "parameter `variant` = {other} is invalid: it must be KD_ICSD_OFFICIAL (0) or KD_ICSD_PAPER (1)"
                ),
            ))
        }
    };
    let config = IcsdConfig { tau: params.tau, loss_weight: params.loss_weight, variant };
    config.validate()?;
    Ok(config)
}

/// ICSD on the GPU, queued on `stream` (no teacher gradient); the row-normalised C x C matrices (f32) into
/// `sim_student` and `sim_teacher` where those addresses are non-zero.
///
/// # Safety
/// As `kd_cwd_cuda`: `ctx` from `kd_context_create`; readable `params` and `shape`; `stream` of the
/// context's device or null; non-zero addresses are device memory of that context sized for `shape`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kd_icsd_cuda(
    ctx: *mut KdContext,
    params: *const KdIcsdConfig,
    shape: *const i64,
    ndim: usize,
    dtype: KdDtype,
    student: u64,
    teacher: u64,
    loss: u64,
    grad_student: u64,
    upstream: u64,
    sim_student: u64,
    sim_teacher: u64,
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
        let buffers = IcsdRawBuffers { student, teacher, loss, grad_student, upstream, sim_student, sim_teacher };
        // SAFETY: forwarded from the caller.
        unsafe { launch::<Icsd>(ctx, &config, &shape, dtype, &buffers, options, stream) }
    })
}

struct CpuCall {
    icsd: IcsdCpu,
    shape: Nchw,
    student: *const c_void,
    teacher: *const c_void,
    loss: *mut f64,
    grad_student: *mut c_void,
    sim_student: *mut f64,
    sim_teacher: *mut f64,
    options: GradOptions,
}

impl PerElement for CpuCall {
    fn run<T: Element>(self) -> crate::Outcome {
        // SAFETY: the entry point's contract: host tensors of `shape` in this dtype.
        let student = unsafe { cpu::view::<T>("student", self.student, &self.shape)? };
        let teacher = unsafe { cpu::view::<T>("teacher", self.teacher, &self.shape)? };
        let out = if self.grad_student.is_null() {
            self.icsd.forward(student, teacher)?
        } else {
            let out = self.icsd.forward_backward(student, teacher)?;
            // SAFETY: the entry point's contract: a writable gradient of `shape` in this dtype.
            unsafe { cpu::store::<T>(self.grad_student, &out.grad_student, self.options) };
            out
        };
        // SAFETY: the entry point's contract: null or writable (C*C f64 for the matrices).
        unsafe {
            if !self.loss.is_null() {
                *self.loss = out.loss;
            }
            for (at, matrix) in [(self.sim_student, &out.sim_student), (self.sim_teacher, &out.sim_teacher)] {
                if !at.is_null() {
                    std::slice::from_raw_parts_mut(at, matrix.len())
                        .iter_mut()
                        .zip(matrix.iter())
                        .for_each(|(o, v)| *o = *v);
                }
            }
        }
        Ok(())
    }
}

/// ICSD on the CPU reference: the loss into `*loss`, the student gradient (in `dtype`), and the
/// row-normalised matrices (C*C f64, row-major) where the pointers are not null.
///
/// # Safety
/// As `kd_cwd_cpu`; `sim_student` and `sim_teacher` are null or point to C*C writable f64.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kd_icsd_cpu(
    params: *const KdIcsdConfig,
    shape: *const i64,
    ndim: usize,
    dtype: KdDtype,
    student: *const c_void,
    teacher: *const c_void,
    loss: *mut f64,
    grad_student: *mut c_void,
    sim_student: *mut f64,
    sim_teacher: *mut f64,
    options: KdGradOptions,
) -> KdStatus {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let params = unsafe { read_params(params, "params")? };
        let dims = unsafe { read_shape(shape, ndim)? };
        let shape = Nchw::from_dims("student", &dims)?;
        let dtype = host_dtype(dtype)?;
        let options = options.to_crate()?;
        let icsd = IcsdCpu::new(config(params)?)?;
        let call = CpuCall { icsd, shape, student, teacher, loss, grad_student, sim_student, sim_teacher, options };
        cpu::dispatch(dtype, call)
    })
}
