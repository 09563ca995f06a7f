//! IFVD through the emulated kernels (feature `emulator`): the very driver [`super::IfvdCuda`] uses, on host
//! buffers, with [`EmulatedGpu`] device facts.

use super::{check_shapes, Ifvd, IfvdConfig, IfvdRawBuffers};
use crate::dtype::{KdFloat, LabelInt};
use crate::emulator::{self, check_len, EmulatedGpu, EmulatedOutput, HostBuffers, Mode, Outputs};
use crate::error::Result;
use crate::family::RawCall;
use crate::grad::GradOptions;

/// The host inputs of one call: features `[N, Cs, H, W]` and `[N, Ct, H, W]` with their dims, labels
/// `[N, Hl, Wl]` with theirs.
#[derive(Debug, Clone, Copy)]
pub struct IfvdHostInputs<'a, T, L> {
    /// The student's dims.
    pub student_dims: &'a [usize],
    /// The student's features.
    pub student: &'a [T],
    /// The teacher's dims.
    pub teacher_dims: &'a [usize],
    /// The teacher's features.
    pub teacher: &'a [T],
    /// The labels' dims.
    pub label_dims: &'a [usize],
    /// The labels.
    pub labels: &'a [L],
}

/// Runs IFVD through the emulated kernels, as [`super::IfvdCuda`] plans it for `gpu`; the gradient starts as
/// `initial_grad` (for accumulation) or NaN.
pub fn ifvd<T: KdFloat, L: LabelInt>(
    config: &IfvdConfig,
    inputs: IfvdHostInputs<'_, T, L>,
    mode: Mode,
    gpu: EmulatedGpu,
    options: GradOptions,
    initial_grad: Option<&[T]>,
) -> Result<EmulatedOutput<T>> {
    let shapes = check_shapes(inputs.student_dims, inputs.teacher_dims, inputs.label_dims)?;
    let numel = shapes.student.numel();
    let label_numel: usize = shapes.label_dims().iter().product();
    check_len("student", inputs.student.len(), numel)?;
    check_len("teacher", inputs.teacher.len(), shapes.teacher().numel())?;
    check_len("labels", inputs.labels.len(), label_numel)?;
    let mut out = Outputs::new(numel, mode, false, initial_grad)?;
    let pair = out.pair_raw(inputs.student, inputs.teacher);
    let buffers = IfvdRawBuffers {
        student: pair.student,
        teacher: pair.teacher,
        labels: inputs.labels.as_ptr() as u64,
        label_dtype: L::LABEL_DTYPE,
        loss: pair.loss,
        grad_student: pair.grad_student,
        upstream: pair.upstream,
    };
    let _registered = out.register(
        HostBuffers::new()
            .input("student", &inputs.student[..numel])
            .input("teacher", &inputs.teacher[..shapes.teacher().numel()])
            .input("labels", &inputs.labels[..label_numel]),
    );
    let call = RawCall::<Ifvd> { config, path: (), shape: &shapes, dtype: T::DTYPE, buffers: &buffers, options };
    // SAFETY: every address is a live host buffer of the size the shapes need.
    unsafe { emulator::run(call, gpu)? };
    Ok(out.finish())
}
