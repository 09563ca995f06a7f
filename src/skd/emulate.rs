//! SKD through the emulated kernels (feature `emulator`): the driver the CUDA loss object uses, on host slices,
//! with [`EmulatedGpu`] facts and the kernels' own source compiled for the host.

use super::driver::SkdRawBuffers;
use super::{RelationShapes, Skd, SkdConfig};
use crate::dtype::KdFloat;
use crate::emulator::{self, EmulatedGpu, EmulatedOutput, HostBuffers, Mode};
use crate::error::{KdError, Result};
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
    for (what, len, needed) in [("student", student.len(), numel), ("teacher", teacher.len(), teacher_numel)] {
        if len < needed {
            return Err(KdError::BufferTooSmall { what, needed, len });
        }
    }
    let backward = matches!(mode, Mode::Backward { .. });
    let upstream = match mode {
        Mode::Backward { upstream } => upstream,
        _ => 1.0,
    };
    let mut loss = f32::NAN;
    let mut grad: Vec<T> = match (mode, initial) {
        (Mode::Forward, _) => Vec::new(),
        (_, Some(init)) if init.len() >= numel => init[..numel].to_vec(),
        (_, Some(init)) => {
            return Err(KdError::BufferTooSmall { what: "initial gradient", needed: numel, len: init.len() })
        }
        (_, None) => vec![T::from_f32(f32::NAN); numel],
    };
    let buffers = SkdRawBuffers {
        student: student.as_ptr() as u64,
        teacher: teacher.as_ptr() as u64,
        loss: if backward { 0 } else { &mut loss as *mut f32 as u64 },
        grad_student: if grad.is_empty() { 0 } else { grad.as_mut_ptr() as u64 },
        grad_teacher: 0,
        upstream: if backward { &upstream as *const f32 as u64 } else { 0 },
    };
    let registered = HostBuffers::new()
        .input("student", &student[..numel])
        .input("teacher", &teacher[..teacher_numel])
        .output("loss", std::slice::from_ref(&loss))
        .input("upstream", std::slice::from_ref(&upstream))
        .output("grad_student", &grad);
    let call = RawCall::<Skd> { config, path: (), shape: shapes, dtype: T::DTYPE, buffers: &buffers, options };
    // SAFETY: every address is a live host buffer of the size the shapes need (checked above).
    unsafe { emulator::run(call, gpu)? };
    drop(registered);
    Ok(EmulatedOutput {
        loss: (!backward).then_some(loss),
        grad_student: (mode != Mode::Forward).then_some(grad),
        grad_teacher: None,
    })
}
