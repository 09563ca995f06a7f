//! The kernels' own CUDA source, compiled for the host and run on the CPU (feature `emulator`).
//!
//! `kernels/emulator/cuda_emulation.h` emulates the CUDA features the kernels use (threads, barriers, warp
//! shuffles, shared memory, the "last block done" atomic); `build.rs` compiles `kernels/*.cu` against it
//! with the host C++ compiler. The functions here run one loss call through it with the launch plans the
//! CUDA wrappers use (`cwd::plan`, `pixel_kd::plan`), on host slices, so a machine without a GPU can test
//! the kernels' indexing, splitting, vector/scalar paths, reductions and output flags against the CPU
//! reference. What only a GPU shows (memory model across SMs, speed) is left to the GPU tests.

use std::ffi::c_void;

use crate::cwd::CwdConfig;
use crate::dtype::{DType, KdFloat};
use crate::error::{KdError, Result};
use crate::ffi::{KdCwdParams, KdPixelKdParams};
use crate::outputs::OutputSet;
use crate::pixel_kd::PixelKdConfig;
use crate::shape::Nchw;
use crate::{cwd, pixel_kd};

type CwdStats = unsafe extern "C" fn(u32, *const c_void, *const c_void, *mut f64, KdCwdParams);
/// (grid, student, teacher, partials, row_kl, counter, loss, grad_student, grad_teacher, upstream, params)
type CwdFinish = unsafe extern "C" fn(
    u32,
    *const c_void,
    *const c_void,
    *const f64,
    *mut f32,
    *mut u32,
    *mut f32,
    *mut c_void,
    *mut c_void,
    *const f32,
    KdCwdParams,
);
/// (grid, student, teacher, block_totals, counter, loss, grad_student, upstream, params)
type PixelKd = unsafe extern "C" fn(
    u32,
    *const c_void,
    *const c_void,
    *mut f32,
    *mut u32,
    *mut f32,
    *mut c_void,
    *const f32,
    KdPixelKdParams,
);

/// Declares the C launchers of kernels/emulator/emulate_*.cpp that share one parameter list, one per dtype.
macro_rules! launchers {
    ($params:tt => $($name:ident),+) => {
        extern "C" {
            $(fn $name $params;)+
        }
    };
}

launchers!((grid: u32, s: *const c_void, t: *const c_void, partials: *mut f64, p: KdCwdParams)
    => kd_emu_cwd_stats_f32, kd_emu_cwd_stats_f16, kd_emu_cwd_stats_bf16);
launchers!((
        grid: u32,
        s: *const c_void,
        t: *const c_void,
        partials: *const f64,
        row_kl: *mut f32,
        counter: *mut u32,
        loss: *mut f32,
        gs: *mut c_void,
        gt: *mut c_void,
        upstream: *const f32,
        p: KdCwdParams,
    ) => kd_emu_cwd_finish_f32, kd_emu_cwd_finish_f16, kd_emu_cwd_finish_bf16);
launchers!((
        grid: u32,
        s: *const c_void,
        t: *const c_void,
        totals: *mut f32,
        counter: *mut u32,
        loss: *mut f32,
        gs: *mut c_void,
        upstream: *const f32,
        p: KdPixelKdParams,
    ) => kd_emu_pixel_kd_f32, kd_emu_pixel_kd_f16, kd_emu_pixel_kd_bf16);

/// Which entry point of the CUDA wrappers to mirror.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `forward`: the loss only.
    Forward,
    /// `forward_backward`: the loss and the gradients.
    ForwardBackward,
    /// `backward`: the gradients times this upstream gradient, no loss.
    Backward {
        /// d total / d loss.
        upstream: f32,
    },
}

/// What an emulated call wrote, as the GPU would have: the loss in f32, gradients in the input dtype.
#[derive(Debug, Clone)]
pub struct EmulatedOutput<T> {
    /// The loss (`None` for [`Mode::Backward`]).
    pub loss: Option<f32>,
    /// d loss / d student (`None` for [`Mode::Forward`]).
    pub grad_student: Option<Vec<T>>,
    /// d loss / d teacher, when the configuration asks for it and gradients are computed.
    pub grad_teacher: Option<Vec<T>>,
}

/// Host buffers for one call; the gradients' contents start as a sentinel so unwritten elements show.
struct Buffers<T> {
    loss: f32,
    grad_student: Vec<T>,
    grad_teacher: Vec<T>,
    /// f32 workspace, allocated as f64 so that it is 8-byte aligned like the GPU's (CWD keeps doubles in it).
    workspace: Vec<f64>,
    counter: u32,
}

impl<T: KdFloat> Buffers<T> {
    fn new(numel: usize, teacher_grad: bool, workspace: usize) -> Self {
        let sentinel = T::from_f32(f32::NAN);
        Buffers {
            loss: f32::NAN,
            grad_student: vec![sentinel; numel],
            grad_teacher: if teacher_grad { vec![sentinel; numel] } else { Vec::new() },
            workspace: vec![f64::NAN; workspace.div_ceil(2).max(1)],
            counter: 0,
        }
    }
}

fn check_inputs<T>(shape: &[usize], student: &[T], teacher: &[T]) -> Result<Nchw> {
    let shape = Nchw::from_dims("student", shape)?;
    for (what, len) in [("student", student.len()), ("teacher", teacher.len())] {
        if len < shape.numel() {
            return Err(KdError::BufferTooSmall { what, needed: shape.numel(), len });
        }
    }
    Ok(shape)
}

fn outputs_for(mode: Mode, teacher_grad: bool) -> OutputSet {
    let grads = mode != Mode::Forward;
    OutputSet {
        loss: !matches!(mode, Mode::Backward { .. }),
        grad_student: grads,
        grad_teacher: grads && teacher_grad,
        upstream: matches!(mode, Mode::Backward { .. }),
    }
}

fn upstream_of(mode: Mode) -> f32 {
    match mode {
        Mode::Backward { upstream } => upstream,
        _ => 1.0,
    }
}

/// Runs CWD through the emulated kernels, planned for a GPU with `sm_count` SMs (which sets how rows
/// are split into chunks: use a large count to exercise many chunks on small inputs).
pub fn cwd<T: KdFloat>(
    config: &CwdConfig,
    shape: &[usize],
    student: &[T],
    teacher: &[T],
    mode: Mode,
    sm_count: usize,
) -> Result<EmulatedOutput<T>> {
    config.validate()?;
    let shape = check_inputs(shape, student, teacher)?;
    let outputs = outputs_for(mode, config.teacher_grad);
    let plan = cwd::plan::plan(config, &shape, sm_count, outputs)?;
    let mut b = Buffers::<T>::new(shape.numel(), outputs.grad_teacher, plan.workspace_floats);
    let (stats, finish): (CwdStats, CwdFinish) = match T::DTYPE {
        DType::F32 => (kd_emu_cwd_stats_f32, kd_emu_cwd_finish_f32),
        DType::F16 => (kd_emu_cwd_stats_f16, kd_emu_cwd_finish_f16),
        DType::BF16 => (kd_emu_cwd_stats_bf16, kd_emu_cwd_finish_bf16),
    };
    let upstream = upstream_of(mode);
    let row_kl_offset = plan.row_kl_offset_bytes as usize / std::mem::size_of::<f32>();
    let ws = b.workspace.as_mut_ptr().cast::<f32>();
    // SAFETY: the same argument lists, element counts and null-for-disabled-output convention as the CUDA
    // wrapper (cwd/cuda.rs); every buffer holds what the plan says the kernels touch.
    unsafe {
        // The statistics are doubles at the start of the (8-byte aligned) f32 workspace, as on the GPU.
        stats(plan.stats_blocks, student.as_ptr().cast(), teacher.as_ptr().cast(), ws.cast(), plan.params);
        finish(
            plan.finish_blocks,
            student.as_ptr().cast(),
            teacher.as_ptr().cast(),
            ws.cast(),
            ws.add(row_kl_offset),
            &mut b.counter,
            if outputs.loss { &mut b.loss } else { std::ptr::null_mut() },
            if outputs.grad_student { b.grad_student.as_mut_ptr().cast() } else { std::ptr::null_mut() },
            if outputs.grad_teacher { b.grad_teacher.as_mut_ptr().cast() } else { std::ptr::null_mut() },
            if outputs.upstream { &upstream } else { std::ptr::null() },
            plan.params,
        );
    }
    debug_assert_eq!(b.counter, 0, "the last block must reset the counter");
    Ok(EmulatedOutput {
        loss: outputs.loss.then_some(b.loss),
        grad_student: outputs.grad_student.then_some(b.grad_student),
        grad_teacher: outputs.grad_teacher.then_some(b.grad_teacher),
    })
}

/// Runs pixel KD through the emulated kernel, planned for a GPU with `sm_count` SMs (which sets the grid
/// size: a small count makes every thread stride over several pixels).
pub fn pixel_kd<T: KdFloat>(
    config: &PixelKdConfig,
    shape: &[usize],
    student: &[T],
    teacher: &[T],
    mode: Mode,
    sm_count: usize,
) -> Result<EmulatedOutput<T>> {
    config.validate()?;
    let shape = check_inputs(shape, student, teacher)?;
    let outputs = outputs_for(mode, false);
    let plan = pixel_kd::plan::plan(config, &shape, sm_count, outputs)?;
    let mut b = Buffers::<T>::new(shape.numel(), false, plan.workspace_floats);
    let kernel: PixelKd = match T::DTYPE {
        DType::F32 => kd_emu_pixel_kd_f32,
        DType::F16 => kd_emu_pixel_kd_f16,
        DType::BF16 => kd_emu_pixel_kd_bf16,
    };
    let upstream = upstream_of(mode);
    // SAFETY: as for `cwd` above, mirroring pixel_kd/cuda.rs.
    unsafe {
        kernel(
            plan.blocks,
            student.as_ptr().cast(),
            teacher.as_ptr().cast(),
            b.workspace.as_mut_ptr().cast::<f32>(),
            &mut b.counter,
            if outputs.loss { &mut b.loss } else { std::ptr::null_mut() },
            if outputs.grad_student { b.grad_student.as_mut_ptr().cast() } else { std::ptr::null_mut() },
            if outputs.upstream { &upstream } else { std::ptr::null() },
            plan.params,
        );
    }
    debug_assert_eq!(b.counter, 0, "the last block must reset the counter");
    Ok(EmulatedOutput {
        loss: outputs.loss.then_some(b.loss),
        grad_student: outputs.grad_student.then_some(b.grad_student),
        grad_teacher: None,
    })
}
