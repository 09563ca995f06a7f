//! Pixel KD on the GPU: one launch of `pixel_kd_tiled_{dtype}` or `pixel_kd_{dtype}` (kernels/pixel_kd.cu;
//! see [`PixelKdPath`]) on the caller's stream. The typed API checks cudarc buffers and calls the raw layer
//! ([`PixelKdCuda::launch_raw`]), which plans and launches through [`super::driver`].

use std::sync::Arc;

use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::driver::{self, PixelKdRawBuffers};
use super::{plan, PixelKdConfig, PixelKdPath};
use crate::cuda::{self, CudaLauncher, Guards, KernelModule, Workspace};
use crate::dtype::{DType, KdFloat};
use crate::error::Result;
use crate::grad::GradOptions;
use crate::launch::OutputSet;
use crate::shape::Nchw;

/// Pixel KD on the GPU, with the same surface as [`super::PixelKdCpu`].
#[derive(Debug)]
pub struct PixelKdCuda {
    config: PixelKdConfig,
    path: PixelKdPath,
    stream: Arc<CudaStream>,
    module: KernelModule,
    workspace: Workspace,
}

impl PixelKdCuda {
    /// Validates `config`, probes for a driver, and loads the kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, config: PixelKdConfig) -> Result<Self> {
        config.validate()?;
        let module = KernelModule::load(&stream, "pixel_kd", &plan::KERNELS, &plan::OPT_IN_SMEM)?;
        let workspace = Workspace::new(&stream)?;
        Ok(PixelKdCuda { config, path: PixelKdPath::Auto, stream, module, workspace })
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

    /// The stream the typed calls launch on (and the workspace is allocated on).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The kernel a call on `shape` with `dtype` inputs runs: [`PixelKdPath::Tiled`] or
    /// [`PixelKdPath::PerPixel`] (never `Auto`), or the error such a call would return for its configuration.
    pub fn resolved_path(&self, shape: &[usize], dtype: DType) -> Result<PixelKdPath> {
        let shape = Nchw::from_dims("student", shape)?;
        let outputs = OutputSet { loss: true, grad_student: true, ..OutputSet::default() };
        Ok(driver::plan_on(&self.config, self.path, &shape, dtype, outputs, 1.0, &self.module)?.path)
    }

    /// Sizes the workspace for calls on `shape` in `dtype`, so that later calls allocate nothing. Call it
    /// before capturing the stream into a CUDA graph: a call that would have to grow the workspace during a
    /// capture returns [`crate::KdError::WorkspaceTooSmall`] instead.
    pub fn reserve(&mut self, shape: &[usize], dtype: DType) -> Result<()> {
        let shape = Nchw::from_dims("student", shape)?;
        let outputs = OutputSet { loss: true, grad_student: true, ..OutputSet::default() };
        let mut floats = 0;
        for path in [PixelKdPath::Tiled, PixelKdPath::PerPixel] {
            if let Ok(p) = driver::plan_on(&self.config, path, &shape, dtype, outputs, 1.0, &self.module) {
                floats = floats.max(p.workspace_floats);
            }
        }
        self.workspace.reserve(floats, 1)
    }

    /// Writes the loss into `loss[0]` (f32).
    pub fn forward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), None, None, GradOptions::OVERWRITE)
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
        self.forward_backward_with(shape, student, teacher, loss, grad_student, GradOptions::OVERWRITE)
    }

    /// [`Self::forward_backward`] with the gradient scaled by `options.scale` and, with
    /// `options.accumulate`, added into `grad_student` instead of overwriting it.
    pub fn forward_backward_with<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        options: GradOptions,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), Some(grad_student), None, options)
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
        self.backward_with(shape, student, teacher, upstream, grad_student, GradOptions::OVERWRITE)
    }

    /// [`Self::backward`] with [`GradOptions`].
    pub fn backward_with<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        upstream: &dyn DevicePtr<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        options: GradOptions,
    ) -> Result<()> {
        self.launch(shape, student, teacher, None, Some(grad_student), Some(upstream), options)
    }

    /// The raw layer under the typed calls, for stacks whose buffers are not cudarc slices: one call on
    /// device addresses, launched on `stream`. What it writes follows from which addresses are non-zero (see
    /// [`PixelKdRawBuffers`]). Checks the shape and the configuration as the typed calls do; it cannot check
    /// the buffers.
    ///
    /// # Safety
    /// As for [`crate::cwd::CwdCuda::launch_raw`]: `stream` belongs to this loss's context, and every
    /// non-zero address holds N*C*H*W elements of `dtype` (student, teacher, gradient) or one f32 (loss,
    /// upstream) of that context's device memory, not used by other streams until the launch finishes.
    pub unsafe fn launch_raw(
        &mut self,
        stream: CUstream,
        shape: &[usize],
        dtype: DType,
        buffers: &PixelKdRawBuffers,
        options: GradOptions,
    ) -> Result<PixelKdPath> {
        let shape = Nchw::from_dims("student", shape)?;
        self.workspace.launch_on(stream);
        let mut launcher = CudaLauncher { module: &self.module, stream };
        // SAFETY: forwarded from the caller.
        unsafe {
            driver::run(
                &self.config,
                self.path,
                &shape,
                dtype,
                buffers,
                options,
                &self.module,
                &mut self.workspace,
                &mut launcher,
            )
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
        upstream: Option<&dyn DevicePtr<f32>>,
        options: GradOptions,
    ) -> Result<()> {
        let numel = Nchw::from_dims("student", shape)?.numel();
        let stream = self.stream.clone();
        let mut guards: Guards<'_> = Vec::with_capacity(5);
        let buffers = PixelKdRawBuffers {
            student: cuda::input("student", student, numel, &stream, &mut guards)?,
            teacher: cuda::input("teacher", teacher, numel, &stream, &mut guards)?,
            loss: cuda::optional_output("loss", loss, 1, &stream, &mut guards)?,
            grad_student: cuda::optional_output("grad_student", grad_student, numel, &stream, &mut guards)?,
            upstream: cuda::optional_input("upstream", upstream, 1, &stream, &mut guards)?,
        };
        // SAFETY: every buffer was checked to live in this stream's context and to hold what the shape needs.
        unsafe { self.launch_raw(stream.cu_stream(), shape, T::DTYPE, &buffers, options)? };
        drop(guards);
        Ok(())
    }
}
