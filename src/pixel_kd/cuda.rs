//! Pixel KD on the GPU: one launch of `pixel_kd_{dtype}` (kernels/pixel_kd.cu) on the caller's stream.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop};

use super::{plan, PixelKdConfig};
use crate::cuda::{self, Family, Kernels, Workspace, BLOCK_THREADS};
use crate::dtype::KdFloat;
use crate::error::{KdError, Result};
use crate::outputs::OutputSet;
use crate::shape::Nchw;

const OP_PIXEL_KD: usize = 0;

/// Pixel KD on the GPU, with the same surface as [`super::PixelKdCpu`].
#[derive(Debug)]
pub struct PixelKdCuda {
    config: PixelKdConfig,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    workspace: Workspace,
}

impl PixelKdCuda {
    /// Validates `config`, probes for a driver, and loads the kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, config: PixelKdConfig) -> Result<Self> {
        config.validate()?;
        let kernels = Kernels::load(&stream, Family::PixelKd, &["pixel_kd"])?;
        let workspace = Workspace::new(&stream)?;
        Ok(PixelKdCuda { config, stream, kernels, workspace })
    }

    /// The configuration.
    pub fn config(&self) -> &PixelKdConfig {
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
        self.launch(shape, student, teacher, Some(loss), None, None)
    }

    /// The training-step call: loss and d loss / d student in one launch.
    pub fn forward_backward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), Some(grad_student), None)
    }

    /// d loss / d student times the upstream gradient `upstream[0]` (a device f32), without the loss.
    pub fn backward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        upstream: &dyn DevicePtr<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, None, Some(grad_student), Some(upstream))
    }

    fn launch<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: Option<&mut dyn DevicePtrMut<f32>>,
        grad_student: Option<&mut dyn DevicePtrMut<T>>,
        upstream: Option<&dyn DevicePtr<f32>>,
    ) -> Result<()> {
        let shape = Nchw::from_dims("student", shape)?;
        let outputs = OutputSet {
            loss: loss.is_some(),
            grad_student: grad_student.is_some(),
            grad_teacher: false,
            upstream: upstream.is_some(),
        };
        let plan = plan::plan(&self.config, &shape, self.kernels.sm_count as usize, outputs)?;
        let params = plan.params;
        let numel = shape.numel();

        let stream = &self.stream;
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::with_capacity(8);
        let (s, t) = cuda::input_pair(student, teacher, numel, stream, &mut guards)?;
        let loss_ptr = cuda::optional_output("loss", loss, 1, stream, &mut guards)?;
        let gs = cuda::optional_output("grad_student", grad_student, numel, stream, &mut guards)?;
        let up = cuda::optional_input("upstream", upstream, 1, stream, &mut guards)?;
        let (block_totals, counter) = self.workspace.prepare(stream, plan.workspace_floats, 1)?;
        let function = self.kernels.get(OP_PIXEL_KD, T::DTYPE);
        let cfg = LaunchConfig { grid_dim: (plan.blocks, 1, 1), block_dim: (BLOCK_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the argument list matches `pixel_kd_*` in kernels/pixel_kd.cu; every pointer was checked to
        // hold the elements the kernel touches; null pointers only for outputs the flags turn off.
        unsafe {
            stream
                .launch_builder(function)
                .arg(&s)
                .arg(&t)
                .arg(&block_totals)
                .arg(&counter)
                .arg(&loss_ptr)
                .arg(&gs)
                .arg(&up)
                .arg(&params)
                .launch(cfg)
                .map_err(|e| KdError::cuda("launch pixel_kd", e))?;
        }
        drop(guards);
        Ok(())
    }
}
