//! CIRKD through the emulated kernels (feature `emulator`): the very driver [`super::CirkdCuda`] uses, on host
//! buffers, with [`EmulatedGpu`] device facts.

use super::{check_shapes, Cirkd, CirkdConfig, CirkdRawBuffers};
use crate::dtype::KdFloat;
use crate::emulator::{self, EmulatedGpu, EmulatedOutput, HostBuffers, Mode};
use crate::error::{KdError, Result};
use crate::family::RawCall;
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

fn check_len(what: &'static str, len: usize, needed: usize) -> Result<()> {
    if len < needed {
        return Err(KdError::BufferTooSmall { what, needed, len });
    }
    Ok(())
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
    let mut grad = match (mode, initial_grad) {
        (Mode::Forward, _) => Vec::new(),
        (_, Some(v)) => {
            check_len("initial gradient", v.len(), numel)?;
            v[..numel].to_vec()
        }
        (_, None) => vec![T::from_f32(f32::NAN); numel],
    };
    let mut loss = f32::NAN;
    let backward = matches!(mode, Mode::Backward { .. });
    let upstream = match mode {
        Mode::Backward { upstream } => upstream,
        _ => 1.0,
    };
    let buffers = CirkdRawBuffers {
        student: inputs.student.as_ptr() as u64,
        teacher: inputs.teacher.as_ptr() as u64,
        loss: if backward { 0 } else { &mut loss as *mut f32 as u64 },
        grad_student: if grad.is_empty() { 0 } else { grad.as_mut_ptr() as u64 },
        upstream: if backward { &upstream as *const f32 as u64 } else { 0 },
    };
    let _registered = HostBuffers::new()
        .input("student", &inputs.student[..numel])
        .input("teacher", &inputs.teacher[..teacher_numel])
        .output("loss", std::slice::from_ref(&loss))
        .input("upstream", std::slice::from_ref(&upstream))
        .output("grad_student", &grad);
    let call = RawCall::<Cirkd> { config, path: (), shape: &shapes, dtype: T::DTYPE, buffers: &buffers, options };
    // SAFETY: every address is a live host buffer of the size the shapes need.
    unsafe { emulator::run(call, gpu)? };
    Ok(EmulatedOutput {
        loss: (!backward).then_some(loss),
        grad_student: (!grad.is_empty()).then_some(grad),
        grad_teacher: None,
    })
}
