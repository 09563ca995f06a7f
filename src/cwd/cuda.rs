//! CWD on the GPU: by default one cooperative launch of `cwd_fused_{dtype}`, else `cwd_stats_{dtype}` then
//! `cwd_finish_{dtype}` (kernels/cwd.cu; see [`CwdPath`]), on the caller's stream, reading and writing
//! caller-owned buffers. No host synchronisation; no allocation once the workspace has grown to the
//! largest shape seen.

use std::sync::Arc;

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop};

use super::plan::{self, CwdPlan, Device, Launches};
use super::{CwdConfig, CwdPath};
use crate::cuda::{self, Family, Kernels, Workspace, BLOCK_THREADS};
use crate::dtype::{DType, KdFloat};
use crate::error::{KdError, Result};
use crate::outputs::OutputSet;
use crate::shape::Nchw;

const OP_FUSED: usize = 0;
const OP_STATS: usize = 1;
const OP_FINISH: usize = 2;

/// CWD on the GPU, with the same surface as [`super::CwdCpu`].
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use kd_kernels::cwd::{CwdConfig, CwdCuda};
/// let stream = kd_kernels::cuda::default_stream(0)?;
/// let shape = [8, 19, 64, 128];
/// let numel: usize = shape.iter().product();
/// let student = stream.alloc_zeros::<f32>(numel)?; // the student's logits, from your model
/// let teacher = stream.alloc_zeros::<f32>(numel)?;
/// let mut grad = stream.alloc_zeros::<f32>(numel)?;
/// let mut loss = stream.alloc_zeros::<f32>(1)?;
/// let mut cwd = CwdCuda::new(stream.clone(), CwdConfig::default())?;
/// cwd.forward_backward(&shape, &student, &teacher, &mut loss, &mut grad, None)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CwdCuda {
    config: CwdConfig,
    path: CwdPath,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    workspace: Workspace,
    /// Set when the driver refused a cooperative launch (e.g. under MPS with fewer SMs than the device
    /// reports): from then on `Auto` takes the two passes.
    cooperative_refused: bool,
}

/// Device addresses of one call's buffers (0 for the absent ones).
struct Buffers {
    student: u64,
    teacher: u64,
    loss: u64,
    grad_student: u64,
    grad_teacher: u64,
    upstream: u64,
}

impl CwdCuda {
    /// Validates `config`, probes for a driver, and loads the kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, config: CwdConfig) -> Result<Self> {
        config.validate()?;
        let kernels = Kernels::load(&stream, Family::Cwd, &["cwd_fused", "cwd_stats", "cwd_finish"])?;
        let workspace = Workspace::new(&stream)?;
        Ok(CwdCuda { config, path: CwdPath::Auto, stream, kernels, workspace, cooperative_refused: false })
    }

    /// The same loss, computed by the kernels `path` selects (default [`CwdPath::Auto`]).
    pub fn with_path(mut self, path: CwdPath) -> Self {
        self.path = path;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &CwdConfig {
        &self.config
    }

    /// Which kernels the calls run.
    pub fn path(&self) -> CwdPath {
        self.path
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The longest row (H*W) the single-pass kernel takes on this device for `dtype`; 0 where it cannot run.
    pub fn single_pass_max_row_len(&self, dtype: DType) -> usize {
        plan::single_pass_max_row_len(dtype, self.device(dtype).single_pass_resident)
    }

    /// The kernels a call on `shape` with 16-byte aligned `dtype` buffers runs: [`CwdPath::SinglePass`] or
    /// [`CwdPath::TwoPass`] (never `Auto`), or the error such a call would return for its configuration.
    pub fn resolved_path(&self, shape: &[usize], dtype: DType) -> Result<CwdPath> {
        let shape = Nchw::from_dims("student", shape)?;
        let outputs =
            OutputSet { loss: true, grad_student: true, grad_teacher: self.config.teacher_grad, upstream: false };
        let plan = plan::plan(&self.config, &shape, dtype, self.device(dtype), self.path, outputs, 0)?;
        Ok(match plan.launches {
            Launches::SinglePass { .. } => CwdPath::SinglePass,
            Launches::TwoPass { .. } => CwdPath::TwoPass,
        })
    }

    /// Writes the loss into `loss[0]` (f32).
    pub fn forward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), None, None, None)
    }

    /// The training-step call: the loss into `loss[0]` and d loss / d student into `grad_student`, in one
    /// launch (two on the [`CwdPath::TwoPass`] path). `grad_teacher` must be `Some` exactly when
    /// `config.teacher_grad` is set.
    pub fn forward_backward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        grad_teacher: Option<&mut dyn DevicePtrMut<T>>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), Some(grad_student), grad_teacher, None)
    }

    /// Gradients times the upstream gradient `upstream[0]` (a device f32, d total / d loss), without
    /// the loss. `grad_teacher` must be `Some` exactly when `config.teacher_grad` is set.
    pub fn backward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        upstream: &dyn DevicePtr<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        grad_teacher: Option<&mut dyn DevicePtrMut<T>>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, None, Some(grad_student), grad_teacher, Some(upstream))
    }

    fn device(&self, dtype: DType) -> Device {
        let cooperative = self.kernels.cooperative && !self.cooperative_refused;
        Device {
            sm_count: self.kernels.sm_count as usize,
            single_pass_resident: if cooperative { self.kernels.resident_blocks(OP_FUSED, dtype) as usize } else { 0 },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn launch<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: Option<&mut dyn DevicePtrMut<f32>>,
        grad_student: Option<&mut dyn DevicePtrMut<T>>,
        grad_teacher: Option<&mut dyn DevicePtrMut<T>>,
        upstream: Option<&dyn DevicePtr<f32>>,
    ) -> Result<()> {
        let shape = Nchw::from_dims("student", shape)?;
        let wants_grad = grad_student.is_some();
        if wants_grad && grad_teacher.is_some() != self.config.teacher_grad {
            return Err(if self.config.teacher_grad {
                KdError::OutputMismatch {
                    what: "grad_teacher",
                    fix: "config.teacher_grad is set: pass a buffer for the teacher's gradient",
                }
            } else {
                KdError::OutputMismatch {
                    what: "grad_teacher",
                    fix: "a buffer was passed but config.teacher_grad is off: set it, or pass None",
                }
            });
        }
        let outputs = OutputSet {
            loss: loss.is_some(),
            grad_student: wants_grad,
            grad_teacher: grad_teacher.is_some(),
            upstream: upstream.is_some(),
        };
        let numel = shape.numel();

        let stream = self.stream.clone();
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::with_capacity(8);
        let (s, t) = cuda::input_pair(student, teacher, numel, &stream, &mut guards)?;
        let buffers = Buffers {
            student: s,
            teacher: t,
            loss: cuda::optional_output("loss", loss, 1, &stream, &mut guards)?,
            grad_student: cuda::optional_output("grad_student", grad_student, numel, &stream, &mut guards)?,
            grad_teacher: cuda::optional_output("grad_teacher", grad_teacher, numel, &stream, &mut guards)?,
            upstream: cuda::optional_input("upstream", upstream, 1, &stream, &mut guards)?,
        };
        let addresses: Vec<u64> = [buffers.student, buffers.teacher, buffers.grad_student, buffers.grad_teacher]
            .into_iter()
            .filter(|&a| a != 0)
            .collect();
        let lead = plan::single_pass_lead(&addresses, shape.plane(), T::DTYPE);
        let plan = plan::plan(&self.config, &shape, T::DTYPE, self.device(T::DTYPE), self.path, outputs, lead)?;
        match self.enqueue::<T>(&plan, &buffers) {
            Err(Enqueue::CooperativeRefused(e)) => {
                // The driver would not keep the planned grid resident (fewer SMs than reported, e.g. MPS). With
                // `Auto`, take the two passes from now on; a forced single pass reports it.
                if self.path == CwdPath::SinglePass {
                    return Err(KdError::cuda("cuLaunchCooperativeKernel (cwd_fused)", e));
                }
                self.cooperative_refused = true;
                let plan = plan::plan(&self.config, &shape, T::DTYPE, self.device(T::DTYPE), self.path, outputs, lead)?;
                self.enqueue::<T>(&plan, &buffers).map_err(Enqueue::into_error)?;
            }
            other => other.map_err(Enqueue::into_error)?,
        }
        drop(guards);
        Ok(())
    }

    /// Queues the launches of `plan` on the loss's stream.
    fn enqueue<T: KdFloat>(&mut self, plan: &CwdPlan, b: &Buffers) -> Result<(), Enqueue> {
        let stream = &self.stream;
        let (workspace, counters) =
            self.workspace.prepare(stream, plan.workspace_floats, plan.counters).map_err(Enqueue::Kd)?;
        let partials = workspace;
        let row_kl = workspace + plan.row_kl_offset_bytes;
        let counter = counters;
        let row_sync = counters + std::mem::size_of::<u32>() as u64;
        let params = plan.params;
        let cfg = |blocks: u32| LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let launch_error = |op: &'static str| move |e| Enqueue::Kd(KdError::cuda(op, e));
        // SAFETY (all launches): the argument lists match `cwd_fused_*`, `cwd_stats_*` and `cwd_finish_*` in
        // kernels/cwd.cu; every pointer was checked to hold the elements the kernels touch (numel inputs and
        // gradients, one loss and upstream value, the workspace sized by the plan); null pointers are only
        // passed for outputs the flags turn off.
        match plan.launches {
            Launches::SinglePass { blocks } => {
                let fused = self.kernels.get(OP_FUSED, T::DTYPE);
                let mut builder = stream.launch_builder(fused);
                builder
                    .arg(&b.student)
                    .arg(&b.teacher)
                    .arg(&partials)
                    .arg(&row_kl)
                    .arg(&counter)
                    .arg(&row_sync)
                    .arg(&b.loss)
                    .arg(&b.grad_student)
                    .arg(&b.grad_teacher)
                    .arg(&b.upstream)
                    .arg(&params);
                // Cooperative: the driver guarantees every block is resident at once (or refuses), which the
                // blocks of a row waiting for each other require.
                match unsafe { builder.launch_cooperative(cfg(blocks)) } {
                    Ok(_) => {}
                    Err(e) if e.0 == CUresult::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE => {
                        return Err(Enqueue::CooperativeRefused(e))
                    }
                    Err(e) => return Err(Enqueue::Kd(KdError::cuda("cuLaunchCooperativeKernel (cwd_fused)", e))),
                }
            }
            Launches::TwoPass { stats_blocks, finish_blocks } => {
                let stats = self.kernels.get(OP_STATS, T::DTYPE);
                let finish = self.kernels.get(OP_FINISH, T::DTYPE);
                unsafe {
                    stream
                        .launch_builder(stats)
                        .arg(&b.student)
                        .arg(&b.teacher)
                        .arg(&partials)
                        .arg(&params)
                        .launch(cfg(stats_blocks))
                        .map_err(launch_error("launch cwd_stats"))?;
                    stream
                        .launch_builder(finish)
                        .arg(&b.student)
                        .arg(&b.teacher)
                        .arg(&partials)
                        .arg(&row_kl)
                        .arg(&counter)
                        .arg(&b.loss)
                        .arg(&b.grad_student)
                        .arg(&b.grad_teacher)
                        .arg(&b.upstream)
                        .arg(&params)
                        .launch(cfg(finish_blocks))
                        .map_err(launch_error("launch cwd_finish"))?;
                }
            }
        }
        Ok(())
    }
}

/// Why queuing failed: a refused cooperative grid (recoverable with the two passes) or anything else.
enum Enqueue {
    CooperativeRefused(cudarc::driver::DriverError),
    Kd(KdError),
}

impl Enqueue {
    fn into_error(self) -> KdError {
        match self {
            Enqueue::CooperativeRefused(e) => KdError::cuda("cuLaunchCooperativeKernel (cwd_fused)", e),
            Enqueue::Kd(e) => e,
        }
    }
}
