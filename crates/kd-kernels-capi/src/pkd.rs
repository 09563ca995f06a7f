//! PKD's entry points: `kd_pkd_cuda` (device addresses, the caller's stream) and `kd_pkd_cpu` (host pointers,
//! the f64 reference), on a list of levels (the FPN levels of a detector): one call for all of them.

use std::ffi::c_void;

use kd::pkd::{Pkd, PkdConfig, PkdCpu, PkdLevels, PkdRawBuffers};
use kd::GradOptions;

use crate::context::{launch, KdContext};
use crate::cpu::{self, Element, PerElement};
use crate::entry;
use crate::{guard, read_shape, Failure, KdDtype, KdGradOptions, KdStatus, KD_ERR_NULL_POINTER, KD_ERR_OUTPUT};

/// PKD (docs/losses.md §7): per level and channel, student and teacher standardised over the whole batch
/// (unbiased std + 1e-6), loss = loss_weight * sum over levels of 0.5 * mean (S_hat - T_hat)^2. mmrazor's
/// default loss_weight is 1 (its detection configs use 6).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdPkdConfig {
    /// Weight of the summed level losses; finite.
    pub loss_weight: f64,
}

abi_config!(KdPkdConfig => Pkd, |params, _teacher_grad| {
    Ok(PkdConfig { loss_weight: params.loss_weight })
});

/// Reads `count` rank-4 shapes (`count * 4` values) and checks them as levels.
///
/// # Safety
/// Both are null or point to `count * 4` readable `i64`s.
unsafe fn read_levels(count: usize, student: *const i64, teacher: *const i64) -> Result<PkdLevels, Failure> {
    // SAFETY: forwarded from the caller.
    let (s, t) =
        unsafe { (read_shape(student, count.saturating_mul(4))?, read_shape(teacher, count.saturating_mul(4))?) };
    let s: Vec<&[usize]> = s.chunks(4).collect();
    let t: Vec<&[usize]> = t.chunks(4).collect();
    Ok(PkdLevels::new(&s, &t)?)
}

/// `n` entries, or `None` for a null list.
///
/// # Safety
/// `at` is null or points to `n` readable `P`s.
unsafe fn list<P: Copy>(at: *const P, n: usize) -> Option<Vec<P>> {
    // SAFETY: forwarded from the caller.
    (!at.is_null()).then(|| unsafe { std::slice::from_raw_parts(at, n) }.to_vec())
}

fn missing(what: &str) -> Failure {
    Failure::new(KD_ERR_NULL_POINTER, format!("{what}: a null list; pass one entry per level"))
}

/// PKD on the GPU, queued on `stream`, every level in the same launches. `student_shapes` and
/// `teacher_shapes`: `num_levels` rank-4 shapes (4 values each, at most 8 levels), equal level by level
/// (resize the student to the teacher's H x W first, as mmrazor does). `student`, `teacher`: one device
/// address per level. The loss is written where `loss` != 0; with `grad_student` != NULL (one address per
/// level) the gradients, times the device f32 at `upstream` where that is != 0.
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble); the shape lists hold `num_levels * 4` values and the address lists `num_levels`
/// entries (or `grad_student` is null), every address device memory of the context's device holding what its
/// level's shape and `dtype` need.
#[no_mangle]
pub unsafe extern "C" fn kd_pkd_cuda(
    ctx: *mut KdContext, params: *const KdPkdConfig, num_levels: usize, student_shapes: *const i64,
    teacher_shapes: *const i64, dtype: KdDtype, student: *const u64, teacher: *const u64, loss: u64,
    grad_student: *const u64, upstream: u64, options: KdGradOptions, stream: *mut c_void,
) -> KdStatus {
    guard(|| {
        // SAFETY: forwarded from the caller (every list read below has the length the header states).
        let call = unsafe { entry::device(params, dtype, options, false)? };
        let levels = unsafe { read_levels(num_levels, student_shapes, teacher_shapes)? };
        let n = levels.len();
        let buffers = unsafe {
            PkdRawBuffers {
                student: list(student, n).ok_or_else(|| missing("student"))?,
                teacher: list(teacher, n).ok_or_else(|| missing("teacher"))?,
                loss,
                grad_student: list(grad_student, n).unwrap_or_default(),
                upstream,
            }
        };
        // SAFETY: forwarded from the caller.
        unsafe { launch::<Pkd>(ctx, &call.config, &levels, call.dtype, &buffers, call.options, stream) }
    })
}

struct CpuCall {
    pkd: PkdCpu,
    levels: PkdLevels,
    student: Vec<*const c_void>,
    teacher: Vec<*const c_void>,
    loss: *mut f64,
    grad_student: Vec<*mut c_void>,
    options: GradOptions,
}

impl PerElement for CpuCall {
    fn run<T: Element>(self) -> crate::Outcome {
        let shapes = self.levels.shapes();
        let mut s = Vec::with_capacity(shapes.len());
        let mut t = Vec::with_capacity(shapes.len());
        for (l, shape) in shapes.iter().enumerate() {
            // SAFETY: the entry point's contract: host tensors of the levels' shapes in this dtype.
            s.push(unsafe { cpu::view::<T>("student", self.student[l], shape)? });
            t.push(unsafe { cpu::view::<T>("teacher", self.teacher[l], shape)? });
        }
        let loss = if self.grad_student.is_empty() {
            self.pkd.forward(&s, &t)?
        } else {
            let out = self.pkd.forward_backward(&s, &t)?;
            for (g, &at) in out.grad_student.iter().zip(&self.grad_student) {
                // SAFETY: the entry point's contract: writable gradients of the levels' shapes in this dtype.
                unsafe { cpu::store::<T>(at, g, self.options) };
            }
            out.loss
        };
        // SAFETY: the entry point's contract: null or one writable f64.
        unsafe { cpu::write_outputs::<T>((self.loss, loss), (std::ptr::null_mut(), None), self.options) };
        Ok(())
    }
}

/// PKD on the CPU reference (host pointers; shapes as in `kd_pkd_cuda`): the loss into `*loss` (when not
/// null) and, with `grad_student` not null (one pointer per level), the gradients in `dtype`.
///
/// # Safety
/// The shape lists hold `num_levels * 4` values; `student` and `teacher` hold `num_levels` pointers to
/// contiguous NCHW tensors of their level's shape in `dtype`; `loss` is null or writable; `grad_student` is
/// null or holds `num_levels` pointers to writable tensors (initialised, with `options.accumulate`).
#[no_mangle]
pub unsafe extern "C" fn kd_pkd_cpu(
    params: *const KdPkdConfig, num_levels: usize, student_shapes: *const i64, teacher_shapes: *const i64,
    dtype: KdDtype, student: *const *const c_void, teacher: *const *const c_void, loss: *mut f64,
    grad_student: *const *mut c_void, options: KdGradOptions,
) -> KdStatus {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let prelude = unsafe { entry::host(params, dtype, options, false)? };
        let levels = unsafe { read_levels(num_levels, student_shapes, teacher_shapes)? };
        let pkd = PkdCpu::new(prelude.config)?;
        let n = levels.len();
        // SAFETY: forwarded from the caller.
        let (student, teacher, grads) = unsafe { (list(student, n), list(teacher, n), list(grad_student, n)) };
        let grad_student = grads.unwrap_or_default();
        if grad_student.iter().any(|p| p.is_null()) {
            return Err(Failure::new(KD_ERR_OUTPUT, "grad_student: a null pointer in the list; give every level's"));
        }
        let call = CpuCall {
            student: student.ok_or_else(|| missing("student"))?,
            teacher: teacher.ok_or_else(|| missing("teacher"))?,
            pkd,
            levels,
            loss,
            grad_student,
            options: prelude.options,
        };
        cpu::dispatch(prelude.dtype, call)
    })
}
