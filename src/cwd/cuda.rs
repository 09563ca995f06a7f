//! CWD on the GPU: launches `cwd_stats_{dtype}` then `cwd_finish_{dtype}` (kernels/cwd.cu) on the caller's
//! stream, reading and writing caller-owned buffers. No host synchronisation; no allocation once the
//! workspace has grown to the largest shape seen.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop};

use super::{plan, CwdConfig};
use crate::cuda::{self, Family, Kernels, Workspace, BLOCK_THREADS};
use crate::dtype::KdFloat;
use crate::error::{KdError, Result};
use crate::outputs::OutputSet;
use crate::shape::Nchw;

const OP_STATS: usize = 0;
const OP_FINISH: usize = 1;

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
    stream: Arc<CudaStream>,
    kernels: Kernels,
    workspace: Workspace,
}

impl CwdCuda {
    /// Validates `config`, probes for a driver, and loads the kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, config: CwdConfig) -> Result<Self> {
        config.validate()?;
        let kernels = Kernels::load(&stream, Family::Cwd, &["cwd_stats", "cwd_finish"])?;
        let workspace = Workspace::new(&stream)?;
        Ok(CwdCuda { config, stream, kernels, workspace })
    }

    /// The configuration.
    pub fn config(&self) -> &CwdConfig {
        &self.config
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
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

    /// The training-step call: the loss into `loss[0]` and d loss / d student into `grad_student`, in two
    /// launches. `grad_teacher` must be `Some` exactly when `config.teacher_grad` is set.
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
        let plan = plan::plan(&self.config, &shape, self.kernels.sm_count as usize, outputs)?;
        let params = plan.params;
        let numel = shape.numel();

        let stream = &self.stream;
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::with_capacity(10);
        let (s, t) = cuda::input_pair(student, teacher, numel, stream, &mut guards)?;
        let loss_ptr = cuda::optional_output("loss", loss, 1, stream, &mut guards)?;
        let gs = cuda::optional_output("grad_student", grad_student, numel, stream, &mut guards)?;
        let gt = cuda::optional_output("grad_teacher", grad_teacher, numel, stream, &mut guards)?;
        let up = cuda::optional_input("upstream", upstream, 1, stream, &mut guards)?;
        let (partials, counter) = self.workspace.floats_and_counter(stream, plan.workspace_floats, &mut guards)?;
        let row_kl = partials + plan.row_kl_offset_bytes;

        let cfg = |blocks: u32| LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let stats = self.kernels.get(OP_STATS, T::DTYPE);
        let finish = self.kernels.get(OP_FINISH, T::DTYPE);
        // SAFETY: the argument lists match `cwd_stats_*` / `cwd_finish_*` in kernels/cwd.cu; every pointer was
        // checked to hold the elements the kernels touch (numel inputs and gradients, one loss and upstream
        // value, the workspace sized above); null pointers are only passed for outputs the flags turn off.
        unsafe {
            stream
                .launch_builder(stats)
                .arg(&s)
                .arg(&t)
                .arg(&partials)
                .arg(&params)
                .launch(cfg(plan.stats_blocks))
                .map_err(|e| KdError::cuda("launch cwd_stats", e))?;
            stream
                .launch_builder(finish)
                .arg(&s)
                .arg(&t)
                .arg(&partials)
                .arg(&row_kl)
                .arg(&counter)
                .arg(&loss_ptr)
                .arg(&gs)
                .arg(&gt)
                .arg(&up)
                .arg(&params)
                .launch(cfg(plan.finish_blocks))
                .map_err(|e| KdError::cuda("launch cwd_finish", e))?;
        }
        drop(guards);
        Ok(())
    }
}
