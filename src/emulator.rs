//! The kernels' own CUDA source, compiled for the host and run on the CPU (feature `emulator`).
//!
//! `kernels/emulator/cuda_emulation.h` emulates the CUDA features the kernels use (blocks running at once,
//! threads as fibers meeting at barriers and warp shuffles, per-block shared memory, atomics and fences);
//! `build.rs` compiles every `kernels/*.cu` against it with the host C++ compiler, where each entry point
//! registers itself under its CUDA name. A loss call here goes through the very driver the CUDA wrappers use
//! (plan, workspace, argument block, launches), with an [`EmulatedGpu`] for the device facts, host vectors
//! for the workspace and the registered entry points as the launcher, on host slices: a machine without a
//! GPU tests the kernels' indexing, splitting, vector/scalar paths, reductions, blocks waiting for each
//! other, and output flags against the CPU reference. What only a GPU shows (its memory model, occupancy,
//! speed) is left to the GPU tests.
//!
//! Every emulated launch also checks what compute-sanitizer would on a GPU (docs/emulation.md): each load and
//! store against the buffers registered for the call ([`checks::HostBuffers`]; out of bounds, misaligned
//! vector and WMMA access, stores to inputs), block-shared memory races between barriers, reads of workspace or
//! shared memory nothing wrote, barriers and warp-collective calls not reached by every thread or lane, and
//! the shared memory of every block within the per-block limit. A failed check is the launch's error.

use std::ffi::{c_char, c_void, CStr, CString};

use crate::dtype::{DType, KdFloat};
use crate::error::{KdError, Result};
use crate::family::{Family, KernelFile, PairFamily, PairRawBuffers, RawCall};
use crate::grad::GradOptions;
use crate::launch::{DeviceInfo, Launch, LaunchError, Launcher, Machine, Scratch};
use crate::shape::Nchw;

pub(crate) mod checks;
use checks::BufferKind;
pub(crate) use checks::HostBuffers;
#[doc(hidden)]
pub use checks::{selftest, Selftest, UNDEFINED_BEHAVIOR_SANITIZER};

/// Blocks the emulation runs at once for ordinary (non-cooperative) launches: enough for blocks to race
/// for the "last block done" ticket, few enough to keep the thread count small. Results do not depend on it.
const CONCURRENT_BLOCKS: u32 = 3;

extern "C" {
    /// kernels/emulator/launch.cpp: runs the registered entry point `name`; -1 when there is none, 1 when a
    /// check failed (its message in `error`).
    fn kd_emu_launch(
        name: *const c_char,
        grid: u32,
        resident: u32,
        dynamic_smem: u32,
        shared_limit: u32,
        args: *const c_void,
        error: *mut c_char,
        error_len: usize,
    ) -> i32;
}

macro_rules! kernel_files {
    ($($variant:ident => $module:ident :: $marker:ident, $name:literal, $fixtures:ident;)*) => {
        /// Every registered family's kernel file (`crate::for_each_family!`).
        const KERNEL_FILES: &[KernelFile] = &[$(<crate::$module::$marker as Family>::FILE,)*];
    };
}
crate::for_each_family!(kernel_files);

/// The static shared memory its kernel file declares for `kernel` ([`KernelFile::static_smem`]), for a
/// kernel launched with dynamic shared memory. The planners give these kernels the per-block limit less this
/// ([`EmulatedGpu::max_dynamic_smem`]); an emulated launch of one of them fails when the kernel's static
/// shared memory exceeds the value declared, so it cannot go stale unseen.
fn declared_static_smem(kernel: &str) -> Option<usize> {
    KERNEL_FILES.iter().flat_map(|file| file.static_smem).find(|(k, _)| *k == kernel).map(|&(_, bytes)| bytes)
}

/// The static shared memory declared for `kernel` (0 for kernels without dynamic memory): see
/// [`KernelFile::static_smem`].
pub fn static_smem(kernel: &str) -> usize {
    declared_static_smem(kernel).unwrap_or(0)
}

/// Static shared memory a kernel without dynamic shared memory may use: the limit of every CUDA GPU.
const STATIC_SMEM_LIMIT: usize = 48 * 1024;

/// The GPU an emulated call is planned for: what the CUDA wrappers would read from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmulatedGpu {
    /// Streaming multiprocessors: sets CWD's two-pass split and the per-pixel KD kernel's grid.
    pub sm_count: usize,
    /// Blocks resident at once (occupancy times SMs), for every kernel: the grids of the persistent kernels
    /// (CWD's single pass, tiled pixel KD). 0 means no cooperative launch.
    pub resident_blocks: usize,
    /// The most shared memory a block may have, static and dynamic together (the opt-in limit): a kernel's
    /// dynamic shared memory may be this less its static shared memory ([`static_smem`]); it sets the
    /// pixel-KD tile and CWT's fused forward.
    pub max_dynamic_smem: usize,
}

impl EmulatedGpu {
    /// An H100's 132 SMs and shared memory (227 KiB a block), with a small resident grid (the emulation's
    /// cost, not the H100's hundreds of blocks): the two-pass plans the H100 would use, single-pass CWD rows
    /// of up to 6 chunks, pixel-KD tiles striding over 6 blocks.
    pub const H100_SMALL_GRID: EmulatedGpu =
        EmulatedGpu { sm_count: 132, resident_blocks: 6, max_dynamic_smem: 227 * 1024 };
}

impl DeviceInfo for EmulatedGpu {
    fn sm_count(&self) -> usize {
        self.sm_count
    }
    fn cooperative(&self) -> bool {
        self.resident_blocks > 0
    }
    fn resident_blocks(&self, _kernel: &'static str, _dtype: DType, _dynamic_smem: usize) -> Result<usize> {
        Ok(self.resident_blocks)
    }
    fn max_dynamic_smem(&self, kernel: &'static str) -> usize {
        self.max_dynamic_smem.saturating_sub(static_smem(kernel))
    }
}

/// Runs the registered entry points under the checks; a cooperative launch runs every block at once.
pub(crate) struct EmulatedLauncher;

impl Launcher for EmulatedLauncher {
    unsafe fn launch(&mut self, launch: &Launch, dtype: DType, args: *const c_void) -> Result<(), LaunchError> {
        let name = CString::new(format!("{}_{}", launch.kernel, dtype.name())).expect("kernel names have no NUL");
        let resident = if launch.cooperative { launch.grid } else { CONCURRENT_BLOCKS };
        let failed = |error: String| Err(LaunchError::Failed(KdError::Cuda { op: "emulated launch", error }));
        let dynamic = launch.dynamic_smem as usize;
        let shared_limit = match (dynamic, declared_static_smem(launch.kernel)) {
            (0, _) => STATIC_SMEM_LIMIT,
            (_, Some(declared)) => dynamic + declared,
            (_, None) => {
                return failed(format!(
                    "{name:?} has dynamic shared memory but its kernel file declares no static shared memory for it \
                     (KernelFile::with_static_smem)"
                ))
            }
        };
        let mut error = vec![0 as c_char; 2048];
        // SAFETY: the caller vouches for the argument block; the entry point reads it as its own type.
        let status = unsafe {
            kd_emu_launch(
                name.as_ptr(),
                launch.grid,
                resident,
                launch.dynamic_smem,
                shared_limit as u32,
                args,
                error.as_mut_ptr(),
                error.len(),
            )
        };
        match status {
            0 => Ok(()),
            -1 => failed(format!("no emulated entry point {name:?} (is its kernels/*.cu compiled in?)")),
            _ => {
                // SAFETY: the launcher wrote a NUL-terminated message into `error`.
                let message = unsafe { CStr::from_ptr(error.as_ptr()) };
                failed(message.to_string_lossy().into_owned())
            }
        }
    }
}

/// Host workspace: floats start as NaN (and unwritten for the initcheck), counters at zero. Registered with
/// the checks as the workspace of the call.
#[derive(Default)]
pub(crate) struct HostScratch {
    /// f32 words, allocated as f64 so that they are 8-byte aligned like the GPU's (CWD keeps doubles there).
    floats: Vec<f64>,
    counters: Vec<u32>,
    registered: HostBuffers,
}

impl Scratch for HostScratch {
    fn prepare(&mut self, floats: usize, counters: usize) -> Result<(u64, u64)> {
        // Forget the previous call's buffers first: the new ones may reuse their addresses.
        self.registered = HostBuffers::new();
        self.floats = vec![f64::NAN; floats.div_ceil(2).max(1)];
        self.counters = vec![0; counters.max(1)];
        let mut registered = HostBuffers::new();
        registered.add("workspace", self.floats.as_ptr().cast(), floats * 4, BufferKind::Workspace);
        registered.add("counters", self.counters.as_ptr().cast(), counters * 4, BufferKind::Counters);
        self.registered = registered;
        Ok((self.floats.as_mut_ptr() as u64, self.counters.as_mut_ptr() as u64))
    }

    fn reset_counters(&mut self) -> Result<()> {
        self.counters.fill(0);
        Ok(())
    }
}

impl HostScratch {
    /// Every kernel leaves its counters at zero; anything else is a kernel bug.
    pub(crate) fn check_counters(&self, what: &str) -> Result<()> {
        if self.counters.iter().any(|&c| c != 0) {
            return Err(KdError::Cuda {
                op: "emulated launch",
                error: format!("{what}: counters left non-zero: {:?}", self.counters),
            });
        }
        Ok(())
    }
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

/// The outputs of one emulated call of a (student, teacher) family, in host memory: the loss, the upstream
/// scalar the kernels read for [`Mode::Backward`], and the gradients. Gradients start as `initial`
/// (accumulation) or a NaN sentinel, so that an element a kernel fails to write shows. Every such family's
/// emulation makes its buffers here, so that the sentinel and the mode's outputs are the same for all.
pub(crate) struct Outputs<T> {
    mode: Mode,
    loss: f32,
    upstream: f32,
    grad_student: Vec<T>,
    grad_teacher: Vec<T>,
}

impl<T: KdFloat> Outputs<T> {
    /// The outputs of a call in `mode` whose gradients have `numel` elements each; the teacher's only where
    /// `teacher_grad`.
    pub(crate) fn new(numel: usize, mode: Mode, teacher_grad: bool, initial: Option<&[T]>) -> Result<Self> {
        let start = |len: usize| start_grad(len, initial);
        let grads = mode != Mode::Forward;
        Ok(Outputs {
            mode,
            loss: f32::NAN,
            upstream: match mode {
                Mode::Backward { upstream } => upstream,
                _ => 1.0,
            },
            grad_student: if grads { start(numel)? } else { Vec::new() },
            grad_teacher: if grads && teacher_grad { start(numel)? } else { Vec::new() },
        })
    }

    fn backward(&self) -> bool {
        matches!(self.mode, Mode::Backward { .. })
    }

    /// The addresses of a call on `student` and `teacher` that writes these outputs: no loss for
    /// [`Mode::Backward`], which reads the upstream scalar instead.
    pub(crate) fn pair_raw(&mut self, student: &[T], teacher: &[T]) -> PairRawBuffers {
        let backward = self.backward();
        PairRawBuffers {
            student: student.as_ptr() as u64,
            teacher: teacher.as_ptr() as u64,
            loss: if backward { 0 } else { &mut self.loss as *mut f32 as u64 },
            grad_student: ptr_or_zero(&mut self.grad_student),
            grad_teacher: ptr_or_zero(&mut self.grad_teacher),
            upstream: if backward { &self.upstream as *const f32 as u64 } else { 0 },
        }
    }

    /// `inputs` (the call's inputs) with these outputs and the upstream scalar registered too.
    pub(crate) fn register(&self, inputs: HostBuffers) -> HostBuffers {
        inputs
            .output("loss", std::slice::from_ref(&self.loss))
            .input("upstream", std::slice::from_ref(&self.upstream))
            .output("grad_student", &self.grad_student)
            .output("grad_teacher", &self.grad_teacher)
    }

    /// What the call wrote.
    pub(crate) fn finish(self) -> EmulatedOutput<T> {
        let nonempty = |v: Vec<T>| (!v.is_empty()).then_some(v);
        EmulatedOutput {
            loss: (!self.backward()).then_some(self.loss),
            grad_student: nonempty(self.grad_student),
            grad_teacher: nonempty(self.grad_teacher),
        }
    }
}

/// A gradient buffer of `len` elements as a call finds it: `initial` (to accumulate into) or a NaN sentinel.
pub(crate) fn start_grad<T: KdFloat>(len: usize, initial: Option<&[T]>) -> Result<Vec<T>> {
    match initial {
        Some(values) => {
            check_len("initial gradient", values.len(), len)?;
            Ok(values[..len].to_vec())
        }
        None => Ok(vec![T::from_f32(f32::NAN); len]),
    }
}

/// A host buffer of `len` elements where `needed` are read or written.
pub(crate) fn check_len(what: &'static str, len: usize, needed: usize) -> Result<()> {
    if len < needed {
        return Err(KdError::BufferTooSmall { what, needed, len });
    }
    Ok(())
}

/// The shape of a call on a same-shape pair, checked against the host inputs.
pub(crate) fn check_inputs<T>(shape: &[usize], student: &[T], teacher: &[T]) -> Result<Nchw> {
    let shape = Nchw::from_dims("student", shape)?;
    check_len("student", student.len(), shape.numel())?;
    check_len("teacher", teacher.len(), shape.numel())?;
    Ok(shape)
}

fn ptr_or_zero<T>(v: &mut [T]) -> u64 {
    if v.is_empty() {
        0
    } else {
        v.as_mut_ptr() as u64
    }
}

/// Runs one call of family `F` through the emulated kernels, as its CUDA loss object plans it for `gpu`:
/// the family's own driver, host scratch, the registered entry points. Checks that the kernels left their
/// counters at zero.
///
/// # Safety
/// Every non-zero address of `call.buffers` is a live host buffer holding what the family's raw buffers
/// document for `call.shape` and `call.dtype`.
pub(crate) unsafe fn run<F: Family>(call: RawCall<'_, F>, gpu: EmulatedGpu) -> Result<F::Path> {
    let mut scratch = HostScratch::default();
    let on = Machine { device: &gpu, scratch: &mut scratch, launcher: &mut EmulatedLauncher };
    // SAFETY: forwarded from the caller; the emulated kernels run on the host and return before this does.
    let report = unsafe { F::run(call, on)? };
    scratch.check_counters(F::NAME)?;
    Ok(report)
}

/// Runs a pair family (CWD, pixel KD, ICSD) through the emulated kernels, planned as its CUDA loss object
/// plans for `gpu` and `path`.
pub fn pair<F: PairFamily, T: KdFloat>(
    config: &F::Config,
    path: F::Path,
    shape: &[usize],
    student: &[T],
    teacher: &[T],
    mode: Mode,
    gpu: EmulatedGpu,
) -> Result<EmulatedOutput<T>> {
    pair_with::<F, T>(config, path, shape, student, teacher, mode, gpu, GradOptions::OVERWRITE, None)
}

/// [`pair`] with [`GradOptions`], the gradient buffers starting as `initial_grad` (for accumulation).
#[allow(clippy::too_many_arguments)]
pub fn pair_with<F: PairFamily, T: KdFloat>(
    config: &F::Config,
    path: F::Path,
    shape: &[usize],
    student: &[T],
    teacher: &[T],
    mode: Mode,
    gpu: EmulatedGpu,
    options: GradOptions,
    initial_grad: Option<&[T]>,
) -> Result<EmulatedOutput<T>> {
    let numel = check_inputs(shape, student, teacher)?.numel();
    let mut out = Outputs::new(numel, mode, F::teacher_grad(config), initial_grad)?;
    let buffers = F::pair_raw(out.pair_raw(student, teacher))?;
    let _registered =
        out.register(HostBuffers::new().input("student", &student[..numel]).input("teacher", &teacher[..numel]));
    let call = RawCall::<F> { config, path, shape, dtype: T::DTYPE, buffers: &buffers, options };
    // SAFETY: every address is a live host buffer of the size the shape needs.
    unsafe { run(call, gpu)? };
    Ok(out.finish())
}
