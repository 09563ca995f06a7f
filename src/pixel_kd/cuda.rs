//! Pixel KD on the GPU: one launch of `pixel_kd_tiled_{dtype}` or `pixel_kd_{dtype}` (kernels/pixel_kd.cu;
//! see [`PixelKdPath`]) on the caller's stream.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop};

use super::plan::{self, Device, Kernel};
use super::{PixelKdConfig, PixelKdPath};
use crate::cuda::{self, Family, Kernels, Workspace, BLOCK_THREADS};
use crate::dtype::{DType, KdFloat};
use crate::error::{KdError, Result};
use crate::outputs::OutputSet;
use crate::shape::Nchw;

const OP_TILED: usize = 0;
const OP_PER_PIXEL: usize = 1;

/// Pixel KD on the GPU, with the same surface as [`super::PixelKdCpu`].
#[derive(Debug)]
pub struct PixelKdCuda {
    config: PixelKdConfig,
    path: PixelKdPath,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    /// The most dynamic shared memory a block of the tiled kernel may use on this device.
    max_dynamic_smem: usize,
    workspace: Workspace,
}

impl PixelKdCuda {
    /// Validates `config`, probes for a driver, and loads the kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, config: PixelKdConfig) -> Result<Self> {
        config.validate()?;
        let kernels = Kernels::load(&stream, Family::PixelKd, &["pixel_kd_tiled", "pixel_kd"])?;
        let max_dynamic_smem = kernels.allow_max_dynamic_smem(&stream, OP_TILED)?;
        let workspace = Workspace::new(&stream)?;
        Ok(PixelKdCuda { config, path: PixelKdPath::Auto, stream, kernels, max_dynamic_smem, workspace })
    }

    /// The same loss, computed by the kernel `path` selects (default [`PixelKdPath::Auto`]).
    pub fn with_path(mut self, path: PixelKdPath) -> Self {
        self.path = path;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &PixelKdConfig {
        &self.config
    }

    /// Which kernel the calls run.
    pub fn path(&self) -> PixelKdPath {
        self.path
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The kernel a call on `shape` with `dtype` inputs runs: [`PixelKdPath::Tiled`] or
    /// [`PixelKdPath::PerPixel`] (never `Auto`), or the error such a call would return for its configuration.
    pub fn resolved_path(&self, shape: &[usize], dtype: DType) -> Result<PixelKdPath> {
        let shape = Nchw::from_dims("student", shape)?;
        let outputs = OutputSet { loss: true, grad_student: true, grad_teacher: false, upstream: false };
        Ok(match self.plan(&shape, dtype, outputs)?.kernel {
            Kernel::Tiled { .. } => PixelKdPath::Tiled,
            Kernel::PerPixel => PixelKdPath::PerPixel,
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

    fn plan(&self, shape: &Nchw, dtype: DType, outputs: OutputSet) -> Result<plan::PixelKdPlan> {
        let device = Device { sm_count: self.kernels.sm_count as usize, max_dynamic_smem: self.max_dynamic_smem };
        let mut resident = Ok(0);
        let plan = plan::plan(&self.config, shape, dtype, device, self.path, outputs, |bytes| {
            resident = self.kernels.resident_blocks_with_smem(OP_TILED, dtype, bytes);
            *resident.as_ref().unwrap_or(&0) as usize
        })?;
        resident?;
        Ok(plan)
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
        let plan = self.plan(&shape, T::DTYPE, outputs)?;
        let params = plan.params;
        let numel = shape.numel();

        let stream = &self.stream;
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::with_capacity(8);
        let (s, t) = cuda::input_pair(student, teacher, numel, stream, &mut guards)?;
        let loss_ptr = cuda::optional_output("loss", loss, 1, stream, &mut guards)?;
        let gs = cuda::optional_output("grad_student", grad_student, numel, stream, &mut guards)?;
        let up = cuda::optional_input("upstream", upstream, 1, stream, &mut guards)?;
        let (block_totals, counter) = self.workspace.prepare(stream, plan.workspace_floats, 1)?;
        let (op, shared_mem_bytes) = match plan.kernel {
            Kernel::Tiled { dynamic_smem } => (OP_TILED, dynamic_smem),
            Kernel::PerPixel => (OP_PER_PIXEL, 0),
        };
        let function = self.kernels.get(op, T::DTYPE);
        let cfg = LaunchConfig { grid_dim: (plan.blocks, 1, 1), block_dim: (BLOCK_THREADS, 1, 1), shared_mem_bytes };
        // SAFETY: both kernels take this argument list (kernels/pixel_kd.cu); every pointer was checked to hold
        // the elements the kernel touches; null pointers only for outputs the flags turn off; the tiled
        // kernel's dynamic shared memory is what its tile needs, within what the function was allowed.
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
