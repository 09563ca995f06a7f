//! ICSD's entry points: `kd_icsd_cuda` (device addresses, the caller's stream) and `kd_icsd_cpu` (host
//! pointers, the f64 reference). AICSD is ICSD and pixel KD weighted by the ALW schedule: two calls (the
//! second with `accumulate`), or the composition in the Python package.

use std::ffi::c_void;

use kd::icsd::{Icsd, IcsdConfig, IcsdCpu, IcsdRawBuffers, IcsdVariant};
use kd::shape::Nchw;
use kd::GradOptions;

use crate::context::KdContext;
use crate::cpu::{self, Element, PerElement};
use crate::entry::{self, HostPair};
use crate::{KdDtype, KdGradOptions, KdStatus};

/// ICSD's similarity matrix (docs/losses.md §3.4, §3.7).
pub type KdIcsdVariant = i32;

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

abi_config!(KdIcsdConfig => Icsd, |params, _teacher_grad| {
    let variants = [("KD_ICSD_OFFICIAL", KD_ICSD_OFFICIAL, IcsdVariant::Official), ("KD_ICSD_PAPER", KD_ICSD_PAPER, IcsdVariant::Paper)];
    let variant = entry::named("variant", params.variant, &variants)?;
    Ok(IcsdConfig { tau: params.tau, loss_weight: params.loss_weight, variant })
});

/// The official code: softmax along H, M = A_max(i,j) - G.
pub const KD_ICSD_OFFICIAL: KdIcsdVariant = 0;
/// The paper's prose: softmax over H*W, pairwise KL.
pub const KD_ICSD_PAPER: KdIcsdVariant = 1;

/// ICSD on the GPU, queued on `stream` (no teacher gradient); the row-normalised C x C matrices (f32) into
/// `sim_student` and `sim_teacher` where those addresses are non-zero.
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble), for `shape`.
#[no_mangle]
pub unsafe extern "C" fn kd_icsd_cuda(
    ctx: *mut KdContext, params: *const KdIcsdConfig, shape: *const i64, ndim: usize, dtype: KdDtype, student: u64,
    teacher: u64, loss: u64, grad_student: u64, upstream: u64, sim_student: u64, sim_teacher: u64,
    options: KdGradOptions, stream: *mut c_void,
) -> KdStatus {
    let buffers = IcsdRawBuffers { student, teacher, loss, grad_student, upstream, sim_student, sim_teacher };
    // SAFETY: forwarded from the caller.
    unsafe { entry::same_shape_cuda(ctx, params, (shape, ndim), dtype, (Ok(buffers), false), options, stream) }
}

/// ICSD's CPU call: the pair outputs and the two C x C matrices.
struct CpuCall {
    icsd: IcsdCpu,
    shape: Nchw,
    io: HostPair,
    sim: [*mut f64; 2],
    options: GradOptions,
}

impl PerElement for CpuCall {
    fn run<T: Element>(self) -> crate::Outcome {
        let io = self.io;
        // SAFETY: the entry point's contract: host tensors of `shape` in this dtype.
        let student = unsafe { cpu::view::<T>("student", io.student, &self.shape)? };
        let teacher = unsafe { cpu::view::<T>("teacher", io.teacher, &self.shape)? };
        let out = if io.grad_student.is_null() {
            self.icsd.forward(student, teacher)?
        } else {
            self.icsd.forward_backward(student, teacher)?
        };
        let grad = (!io.grad_student.is_null()).then_some(&out.grad_student);
        // SAFETY: the entry point's contract: null or writable (C*C f64 for the matrices).
        unsafe {
            cpu::write_outputs::<T>((io.loss, out.loss), (io.grad_student, grad), self.options);
            for (at, matrix) in self.sim.into_iter().zip([&out.sim_student, &out.sim_teacher]) {
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
/// The CPU entry points' contract (the header's preamble), for `shape`; `sim_student` and `sim_teacher` are
/// null or point to C*C writable f64.
#[no_mangle]
pub unsafe extern "C" fn kd_icsd_cpu(
    params: *const KdIcsdConfig, shape: *const i64, ndim: usize, dtype: KdDtype, student: *const c_void,
    teacher: *const c_void, loss: *mut f64, grad_student: *mut c_void, sim_student: *mut f64, sim_teacher: *mut f64,
    options: KdGradOptions,
) -> KdStatus {
    let io = HostPair { student, teacher, loss, grad_student, grad_teacher: std::ptr::null_mut() };
    let sim = [sim_student, sim_teacher];
    // SAFETY: forwarded from the caller.
    unsafe {
        entry::same_shape_cpu(params, (shape, ndim), dtype, (options, false), |config, shape, options| {
            Ok(CpuCall { icsd: IcsdCpu::new(config)?, shape, io, sim, options })
        })
    }
}
