//! SKD through the emulated kernels (feature `emulator`): the driver the CUDA loss object uses, on host slices,
//! with [`EmulatedGpu`] facts and the kernels' own source compiled for the host.

use super::{RelationShapes, Skd, SkdConfig};
use crate::dtype::KdFloat;
use crate::emulator::{self, check_len, EmulatedGpu, EmulatedOutput, HostBuffers, Mode, Outputs};
use crate::error::Result;
use crate::family::RawCall;
use crate::grad::GradOptions;

/// Runs one call on host slices (contiguous NCHW: the student `[N, Cs, H, W]`, the teacher `[N, Ct, H, W]`),
/// planned as [`super::SkdCuda`] plans it. The gradient starts as `initial` (for accumulation) or NaN
/// sentinels, so that an element the kernels miss shows. `grad_teacher` is always `None`.
#[allow(clippy::too_many_arguments)]
pub fn skd<T: KdFloat>(
    config: &SkdConfig,
    shapes: &RelationShapes,
    student: &[T],
    teacher: &[T],
    mode: Mode,
    options: GradOptions,
    initial: Option<&[T]>,
    gpu: EmulatedGpu,
) -> Result<EmulatedOutput<T>> {
    let (numel, teacher_numel) = (shapes.student.numel(), shapes.teacher().numel());
    check_len("student", student.len(), numel)?;
    check_len("teacher", teacher.len(), teacher_numel)?;
    let mut out = Outputs::new(numel, mode, false, initial)?;
    let buffers = out.pair_raw(student, teacher);
    let _registered = out
        .register(HostBuffers::new().input("student", &student[..numel]).input("teacher", &teacher[..teacher_numel]));
    let call = RawCall::<Skd> { config, path: (), shape: shapes, dtype: T::DTYPE, buffers: &buffers, options };
    // SAFETY: every address is a live host buffer of the size the shapes need (checked above).
    unsafe { emulator::run(call, gpu)? };
    Ok(out.finish())
}
