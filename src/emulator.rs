//! The kernels' own CUDA source, compiled for the host and run on the CPU (feature `emulator`).
//!
//! `kernels/emulator/cuda_emulation.h` emulates the CUDA features the kernels use (blocks running at once,
//! threads as fibers meeting at barriers and warp shuffles, per-block shared memory, atomics and fences);
//! `build.rs` compiles `kernels/*.cu` against it with the host C++ compiler. The functions here run one loss
//! call through it with the launch plans the CUDA wrappers use (`cwd::plan`, `pixel_kd::plan`) for an
//! [`EmulatedGpu`], on host slices, so a machine without a GPU can test the kernels' indexing, splitting,
//! vector/scalar paths, reductions, blocks waiting for each other, and output flags against the CPU
//! reference. What only a GPU shows (its memory model, occupancy, speed) is left to the GPU tests.

use std::ffi::c_void;

use crate::cwd::plan::{self as cwd_plan, Launches};
use crate::cwd::{CwdConfig, CwdPath};
use crate::dtype::{DType, KdFloat};
use crate::error::{KdError, Result};
use crate::ffi::{KdCwdParams, KdPixelKdParams};
use crate::outputs::OutputSet;
use crate::pixel_kd::plan::{self as pixel_plan, Kernel};
use crate::pixel_kd::{PixelKdConfig, PixelKdPath};
use crate::shape::Nchw;

/// Blocks the emulation runs at once for ordinary (non-cooperative) launches: enough for blocks to race
/// for the "last block done" ticket, few enough to keep the thread count small. Results do not depend on it.
const CONCURRENT_BLOCKS: u32 = 3;

/// (grid, resident, student, teacher, partials, row_kl, counter, row_sync, loss, grad_student, grad_teacher,
/// upstream, params)
type CwdFused = unsafe extern "C" fn(
    u32,
    u32,
    *const c_void,
    *const c_void,
    *mut f64,
    *mut f32,
    *mut u32,
    *mut u32,
    *mut f32,
    *mut c_void,
    *mut c_void,
    *const f32,
    KdCwdParams,
);
type CwdStats = unsafe extern "C" fn(u32, u32, *const c_void, *const c_void, *mut f64, KdCwdParams);
/// (grid, resident, student, teacher, partials, row_kl, counter, loss, grad_student, grad_teacher, upstream,
/// params)
type CwdFinish = unsafe extern "C" fn(
    u32,
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
/// (grid, resident, dynamic_smem, student, teacher, block_totals, counter, loss, grad_student, upstream, params)
type PixelKd = unsafe extern "C" fn(
    u32,
    u32,
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

launchers!((
        grid: u32,
        resident: u32,
        s: *const c_void,
        t: *const c_void,
        partials: *mut f64,
        row_kl: *mut f32,
        counter: *mut u32,
        row_sync: *mut u32,
        loss: *mut f32,
        gs: *mut c_void,
        gt: *mut c_void,
        upstream: *const f32,
        p: KdCwdParams,
    ) => kd_emu_cwd_fused_f32, kd_emu_cwd_fused_f16, kd_emu_cwd_fused_bf16);
launchers!((grid: u32, resident: u32, s: *const c_void, t: *const c_void, partials: *mut f64, p: KdCwdParams)
    => kd_emu_cwd_stats_f32, kd_emu_cwd_stats_f16, kd_emu_cwd_stats_bf16);
launchers!((
        grid: u32,
        resident: u32,
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
        resident: u32,
        dynamic_smem: u32,
        s: *const c_void,
        t: *const c_void,
        totals: *mut f32,
        counter: *mut u32,
        loss: *mut f32,
        gs: *mut c_void,
        upstream: *const f32,
        p: KdPixelKdParams,
    ) => kd_emu_pixel_kd_f32, kd_emu_pixel_kd_f16, kd_emu_pixel_kd_bf16,
         kd_emu_pixel_kd_tiled_f32, kd_emu_pixel_kd_tiled_f16, kd_emu_pixel_kd_tiled_bf16);

/// The GPU an emulated call is planned for: what the CUDA wrappers would read from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmulatedGpu {
    /// Streaming multiprocessors: sets CWD's two-pass split and the per-pixel KD kernel's grid.
    pub sm_count: usize,
    /// Blocks of CWD's single-pass kernel, and of the tiled pixel-KD kernel, resident at once (occupancy
    /// times SMs): the grids of those kernels. 0 for CWD means no cooperative launch.
    pub resident_blocks: usize,
    /// The most dynamic shared memory a block may have (sets the pixel-KD tile).
    pub max_dynamic_smem: usize,
}

impl EmulatedGpu {
    /// An H100's 132 SMs and shared memory (227 KiB a block, less the tiled kernel's static 8 KiB), with a
    /// small resident grid (the emulation's cost, not the H100's hundreds of blocks): the two-pass plans
    /// the H100 would use, single-pass CWD rows of up to 6 chunks, pixel-KD tiles striding over 6 blocks.
    pub const H100_SMALL_GRID: EmulatedGpu =
        EmulatedGpu { sm_count: 132, resident_blocks: 6, max_dynamic_smem: 227 * 1024 - 8272 };
}

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
    /// Outputs of `numel` elements; the workspace is sized once the call is planned.
    fn new(numel: usize, teacher_grad: bool) -> Self {
        let sentinel = T::from_f32(f32::NAN);
        Buffers {
            loss: f32::NAN,
            grad_student: vec![sentinel; numel],
            grad_teacher: if teacher_grad { vec![sentinel; numel] } else { Vec::new() },
            workspace: Vec::new(),
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

/// Runs CWD through the emulated kernels, planned as [`crate::cwd::CwdCuda`] plans for `gpu` and `path`.
pub fn cwd<T: KdFloat>(
    config: &CwdConfig,
    path: CwdPath,
    shape: &[usize],
    student: &[T],
    teacher: &[T],
    mode: Mode,
    gpu: EmulatedGpu,
) -> Result<EmulatedOutput<T>> {
    config.validate()?;
    let shape = check_inputs(shape, student, teacher)?;
    let outputs = outputs_for(mode, config.teacher_grad);
    let device = cwd_plan::Device { sm_count: gpu.sm_count, single_pass_resident: gpu.resident_blocks };
    // The plan depends on where the buffers sit (the single pass pads rows to 16-byte boundaries), so the
    // outputs are allocated first, with room for the workspace the largest plan could need.
    let mut b = Buffers::<T>::new(shape.numel(), outputs.grad_teacher);
    let addresses: Vec<u64> = [
        Some(student.as_ptr() as u64),
        Some(teacher.as_ptr() as u64),
        outputs.grad_student.then_some(b.grad_student.as_ptr() as u64),
        outputs.grad_teacher.then_some(b.grad_teacher.as_ptr() as u64),
    ]
    .into_iter()
    .flatten()
    .collect();
    let lead = cwd_plan::single_pass_lead(&addresses, shape.plane(), T::DTYPE);
    let plan = cwd_plan::plan(config, &shape, T::DTYPE, device, path, outputs, lead)?;
    b.workspace = vec![f64::NAN; plan.workspace_floats.div_ceil(2).max(1)];
    let mut counters = vec![0u32; plan.counters];
    let (fused, stats, finish): (CwdFused, CwdStats, CwdFinish) = match T::DTYPE {
        DType::F32 => (kd_emu_cwd_fused_f32, kd_emu_cwd_stats_f32, kd_emu_cwd_finish_f32),
        DType::F16 => (kd_emu_cwd_fused_f16, kd_emu_cwd_stats_f16, kd_emu_cwd_finish_f16),
        DType::BF16 => (kd_emu_cwd_fused_bf16, kd_emu_cwd_stats_bf16, kd_emu_cwd_finish_bf16),
    };
    let upstream = upstream_of(mode);
    let row_kl_offset = plan.row_kl_offset_bytes as usize / std::mem::size_of::<f32>();
    let ws = b.workspace.as_mut_ptr().cast::<f32>();
    let s = student.as_ptr().cast();
    let t = teacher.as_ptr().cast();
    let loss = if outputs.loss { &mut b.loss as *mut f32 } else { std::ptr::null_mut() };
    let gs = if outputs.grad_student { b.grad_student.as_mut_ptr().cast() } else { std::ptr::null_mut() };
    let gt = if outputs.grad_teacher { b.grad_teacher.as_mut_ptr().cast() } else { std::ptr::null_mut() };
    let up = if outputs.upstream { &upstream as *const f32 } else { std::ptr::null() };
    let counter = counters.as_mut_ptr();
    // SAFETY: the same argument lists, element counts and null-for-disabled-output convention as the CUDA
    // wrapper (cwd/cuda.rs); every buffer holds what the plan says the kernels touch. The statistics are
    // doubles at the start of the (8-byte aligned) f32 workspace, as on the GPU.
    unsafe {
        match plan.launches {
            Launches::SinglePass { blocks } => {
                // A cooperative launch: every block resident at once.
                let row_sync = counter.add(1);
                fused(
                    blocks,
                    blocks,
                    s,
                    t,
                    ws.cast(),
                    ws.add(row_kl_offset),
                    counter,
                    row_sync,
                    loss,
                    gs,
                    gt,
                    up,
                    plan.params,
                );
            }
            Launches::TwoPass { stats_blocks, finish_blocks } => {
                stats(stats_blocks, CONCURRENT_BLOCKS, s, t, ws.cast(), plan.params);
                let (partials, row_kl) = (ws.cast(), ws.add(row_kl_offset));
                finish(
                    finish_blocks,
                    CONCURRENT_BLOCKS,
                    s,
                    t,
                    partials,
                    row_kl,
                    counter,
                    loss,
                    gs,
                    gt,
                    up,
                    plan.params,
                );
            }
        }
    }
    if counters.iter().any(|&c| c != 0) {
        return Err(KdError::Cuda { op: "emulated cwd", error: format!("counters left non-zero: {counters:?}") });
    }
    Ok(EmulatedOutput {
        loss: outputs.loss.then_some(b.loss),
        grad_student: outputs.grad_student.then_some(b.grad_student),
        grad_teacher: outputs.grad_teacher.then_some(b.grad_teacher),
    })
}

/// Runs pixel KD through the emulated kernels, planned as [`crate::pixel_kd::PixelKdCuda`] plans for `gpu`
/// and `path`.
pub fn pixel_kd<T: KdFloat>(
    config: &PixelKdConfig,
    path: PixelKdPath,
    shape: &[usize],
    student: &[T],
    teacher: &[T],
    mode: Mode,
    gpu: EmulatedGpu,
) -> Result<EmulatedOutput<T>> {
    config.validate()?;
    let shape = check_inputs(shape, student, teacher)?;
    let outputs = outputs_for(mode, false);
    let device = pixel_plan::Device { sm_count: gpu.sm_count, max_dynamic_smem: gpu.max_dynamic_smem };
    let plan = pixel_plan::plan(config, &shape, T::DTYPE, device, path, outputs, |_| gpu.resident_blocks)?;
    let mut b = Buffers::<T>::new(shape.numel(), false);
    b.workspace = vec![f64::NAN; plan.workspace_floats.div_ceil(2).max(1)];
    let (kernel, dynamic_smem): (PixelKd, u32) = match (plan.kernel, T::DTYPE) {
        (Kernel::Tiled { dynamic_smem }, DType::F32) => (kd_emu_pixel_kd_tiled_f32, dynamic_smem),
        (Kernel::Tiled { dynamic_smem }, DType::F16) => (kd_emu_pixel_kd_tiled_f16, dynamic_smem),
        (Kernel::Tiled { dynamic_smem }, DType::BF16) => (kd_emu_pixel_kd_tiled_bf16, dynamic_smem),
        (Kernel::PerPixel, DType::F32) => (kd_emu_pixel_kd_f32, 0),
        (Kernel::PerPixel, DType::F16) => (kd_emu_pixel_kd_f16, 0),
        (Kernel::PerPixel, DType::BF16) => (kd_emu_pixel_kd_bf16, 0),
    };
    let upstream = upstream_of(mode);
    // SAFETY: as for `cwd` above, mirroring pixel_kd/cuda.rs.
    unsafe {
        kernel(
            plan.blocks,
            CONCURRENT_BLOCKS,
            dynamic_smem,
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
    if b.counter != 0 {
        return Err(KdError::Cuda { op: "emulated pixel_kd", error: format!("counter left at {}", b.counter) });
    }
    Ok(EmulatedOutput {
        loss: outputs.loss.then_some(b.loss),
        grad_student: outputs.grad_student.then_some(b.grad_student),
        grad_teacher: None,
    })
}
