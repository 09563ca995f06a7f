//! PKD through the emulated kernels (feature `emulator`): the driver the CUDA loss object uses, on host
//! slices, with [`EmulatedGpu`] facts and the kernels' own source compiled for the host.

use super::driver::PkdRawBuffers;
use super::{Pkd, PkdConfig, PkdLevels};
use crate::dtype::KdFloat;
use crate::emulator::{self, check_len, start_grad, EmulatedGpu, HostBuffers, Mode};
use crate::error::{KdError, Result};
use crate::family::RawCall;
use crate::grad::GradOptions;

/// What an emulated call wrote, as the GPU would have: the loss in f32, each level's gradient in the input
/// dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct PkdEmulated<T> {
    /// The loss (`None` for [`Mode::Backward`]).
    pub loss: Option<f32>,
    /// d loss / d student per level (empty for [`Mode::Forward`]).
    pub grad_student: Vec<Vec<T>>,
}

/// Runs one call on host slices (contiguous NCHW, one per level), planned as [`super::PkdCuda`] plans it.
/// Gradients start as `initial` (for accumulation) or NaN sentinels, so that an element the kernels miss
/// shows.
#[allow(clippy::too_many_arguments)]
pub fn pkd<T: KdFloat>(
    config: &PkdConfig,
    levels: &PkdLevels,
    student: &[&[T]],
    teacher: &[&[T]],
    mode: Mode,
    options: GradOptions,
    initial: Option<&[Vec<T>]>,
    gpu: EmulatedGpu,
) -> Result<PkdEmulated<T>> {
    let l = levels.len();
    if student.len() != l || teacher.len() != l || initial.is_some_and(|g| g.len() != l) {
        return Err(KdError::ShapeMismatch {
            what: "host buffer counts (student, teacher, initial gradients): one per level",
            expected: vec![l, l, l],
            got: vec![student.len(), teacher.len(), initial.map_or(l, <[Vec<T>]>::len)],
        });
    }
    for (shape, (s, t)) in levels.shapes().iter().zip(student.iter().zip(teacher)) {
        check_len("student", s.len(), shape.numel())?;
        check_len("teacher", t.len(), shape.numel())?;
    }
    let mut loss = f32::NAN;
    let upstream = match mode {
        Mode::Backward { upstream } => upstream,
        _ => 1.0,
    };
    let mut grads: Vec<Vec<T>> = Vec::new();
    if mode != Mode::Forward {
        for (i, shape) in levels.shapes().iter().enumerate() {
            grads.push(start_grad(shape.numel(), initial.map(|init| init[i].as_slice()))?);
        }
    }
    let backward = matches!(mode, Mode::Backward { .. });
    let buffers = PkdRawBuffers {
        student: student.iter().map(|s| s.as_ptr() as u64).collect(),
        teacher: teacher.iter().map(|t| t.as_ptr() as u64).collect(),
        loss: if backward { 0 } else { &mut loss as *mut f32 as u64 },
        grad_student: grads.iter_mut().map(|g| g.as_mut_ptr() as u64).collect(),
        upstream: if backward { &upstream as *const f32 as u64 } else { 0 },
    };
    let mut registered = HostBuffers::new()
        .output("loss", std::slice::from_ref(&loss))
        .input("upstream", std::slice::from_ref(&upstream));
    for (i, shape) in levels.shapes().iter().enumerate() {
        registered = registered
            .input(&format!("student[{i}]"), &student[i][..shape.numel()])
            .input(&format!("teacher[{i}]"), &teacher[i][..shape.numel()]);
    }
    for (i, g) in grads.iter().enumerate() {
        registered = registered.output(&format!("grad_student[{i}]"), g);
    }
    let call = RawCall::<Pkd> { config, path: (), shape: levels, dtype: T::DTYPE, buffers: &buffers, options };
    // SAFETY: every address is a live host buffer of the size its level needs (checked above).
    unsafe { emulator::run(call, gpu)? };
    drop(registered);
    Ok(PkdEmulated { loss: (!backward).then_some(loss), grad_student: grads })
}
