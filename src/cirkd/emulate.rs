//! CIRKD through the emulated kernels (feature `emulator`): the very driver [`super::CirkdCuda`] uses, on host
//! buffers, with [`EmulatedGpu`] device facts.

use super::{check_shapes, Cirkd, CirkdConfig};
use crate::dtype::KdFloat;
use crate::emulator::{self, check_len, EmulatedGpu, EmulatedOutput, HostBuffers, Mode, Outputs};
use crate::error::Result;
use crate::family::RawCall;
use crate::family::StudentGradFamily;
use crate::grad::GradOptions;

/// The host inputs of one call: the student `[B, Cs, H, W]` and the teacher `[B, Ct, H, W]` with their dims.
#[derive(Debug, Clone, Copy)]
pub struct CirkdHostInputs<'a, T> {
    /// The student's dims.
    pub student_dims: &'a [usize],
    /// The student's features.
    pub student: &'a [T],
    /// The teacher's dims.
    pub teacher_dims: &'a [usize],
    /// The teacher's features.
    pub teacher: &'a [T],
}

/// Runs CIRKD through the emulated kernels, as [`super::CirkdCuda`] plans it; the gradient starts as
/// `initial_grad` (for accumulation) or NaN, so that an element the kernels miss shows.
pub fn cirkd<T: KdFloat>(
    config: &CirkdConfig,
    inputs: CirkdHostInputs<'_, T>,
    mode: Mode,
    gpu: EmulatedGpu,
    options: GradOptions,
    initial_grad: Option<&[T]>,
) -> Result<EmulatedOutput<T>> {
    let shapes = check_shapes(inputs.student_dims, inputs.teacher_dims)?;
    let numel = shapes.student.numel();
    let teacher_numel = shapes.teacher().numel();
    check_len("student", inputs.student.len(), numel)?;
    check_len("teacher", inputs.teacher.len(), teacher_numel)?;
    let mut out = Outputs::new(numel, mode, false, initial_grad)?;
    let buffers = Cirkd::raw_buffers(out.pair_raw(inputs.student, inputs.teacher))?;
    let _registered = out.register(
        HostBuffers::new()
            .input("student", &inputs.student[..numel])
            .input("teacher", &inputs.teacher[..teacher_numel]),
    );
    let call = RawCall::<Cirkd> { config, path: (), shape: &shapes, dtype: T::DTYPE, buffers: &buffers, options };
    // SAFETY: every address is a live host buffer of the size the shapes need.
    unsafe { emulator::run(call, gpu)? };
    Ok(out.finish())
}
