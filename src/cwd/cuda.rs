//! CWD on the GPU: by default one cooperative launch of `cwd_fused_{dtype}`, else `cwd_stats_{dtype}` then
//! `cwd_finish_{dtype}` (kernels/cwd.cu; see [`CwdPath`]). The typed API checks cudarc buffers and calls the
//! raw layer ([`CwdCuda::launch_raw`]), which plans and launches through [`super::driver`].

use std::sync::Arc;

use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::driver::{self, CwdRawBuffers};
use super::plan::{self, Device};
use super::{CwdConfig, CwdPath};
use crate::cuda::{self, CudaLauncher, Guards, KernelModule, Workspace};
use crate::dtype::{DType, KdFloat};
use crate::error::Result;
use crate::grad::GradOptions;
use crate::launch::OutputSet;
use crate::shape::Nchw;

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
    module: KernelModule,
    workspace: Workspace,
}

impl CwdCuda {
    /// Validates `config`, probes for a driver, and loads the kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, config: CwdConfig) -> Result<Self> {
        config.validate()?;
        let module = KernelModule::load(&stream, "cwd", &plan::KERNELS, &[])?;
        let workspace = Workspace::new(&stream)?;
        Ok(CwdCuda { config, path: CwdPath::Auto, stream, module, workspace })
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

    /// The stream the typed calls launch on (and the workspace is allocated on).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The longest row (H*W) the single-pass kernel takes on this device for `dtype`; 0 where it cannot run.
    pub fn single_pass_max_row_len(&self, dtype: DType) -> usize {
        let resident = Device::of(&self.module, dtype).map_or(0, |d| d.single_pass_resident);
        plan::single_pass_max_row_len(dtype, resident)
    }

    /// The kernels a call on `shape` with 16-byte aligned `dtype` buffers runs: [`CwdPath::SinglePass`] or
    /// [`CwdPath::TwoPass`] (never `Auto`), or the error such a call would return for its configuration.
    pub fn resolved_path(&self, shape: &[usize], dtype: DType) -> Result<CwdPath> {
        let shape = Nchw::from_dims("student", shape)?;
        let outputs = OutputSet {
            loss: true,
            grad_student: true,
            grad_teacher: self.config.teacher_grad,
            ..OutputSet::default()
        };
        let device = Device::of(&self.module, dtype)?;
        Ok(plan::plan(&self.config, &shape, dtype, device, self.path, outputs, 1.0, 0)?.path)
    }

    /// Sizes the workspace for calls on `shape` in `dtype` (any path), so that later calls allocate nothing.
    /// Call it before capturing the stream into a CUDA graph: a call that would have to grow the workspace
    /// during a capture returns [`crate::KdError::WorkspaceTooSmall`] instead.
    pub fn reserve(&mut self, shape: &[usize], dtype: DType) -> Result<()> {
        let shape = Nchw::from_dims("student", shape)?;
        let device = Device::of(&self.module, dtype)?;
        let (floats, counters) = driver::workspace_bound(&self.config, &shape, dtype, device)?;
        self.workspace.reserve(floats, counters)
    }

    /// Writes the loss into `loss[0]` (f32).
    pub fn forward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), None, None, None, GradOptions::OVERWRITE)
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
        self.forward_backward_with(shape, student, teacher, loss, grad_student, grad_teacher, GradOptions::OVERWRITE)
    }

    /// [`Self::forward_backward`] with the gradients scaled by `options.scale` and, with
    /// `options.accumulate`, added into `grad_student` (and `grad_teacher`) instead of overwriting them.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_with<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        grad_teacher: Option<&mut dyn DevicePtrMut<T>>,
        options: GradOptions,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), Some(grad_student), grad_teacher, None, options)
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
        self.backward_with(shape, student, teacher, upstream, grad_student, grad_teacher, GradOptions::OVERWRITE)
    }

    /// [`Self::backward`] with [`GradOptions`].
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        upstream: &dyn DevicePtr<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        grad_teacher: Option<&mut dyn DevicePtrMut<T>>,
        options: GradOptions,
    ) -> Result<()> {
        self.launch(shape, student, teacher, None, Some(grad_student), grad_teacher, Some(upstream), options)
    }

    /// The raw layer under the typed calls, for stacks whose buffers are not cudarc slices (burn's raw
    /// device pointers, a C ABI): one call on device addresses, launched on `stream`. What it writes follows
    /// from which addresses are non-zero (see [`CwdRawBuffers`]). Checks the shape and the configuration as
    /// the typed calls do; it cannot check the buffers.
    ///
    /// # Safety
    /// `stream` is a live stream of the context this loss was created in. Every non-zero address points to
    /// device memory of that context holding, for `shape` = [N, C, H, W] and `dtype`: N*C*H*W elements of
    /// `dtype` (student, teacher, gradients; contiguous NCHW), one f32 (loss, upstream). Inputs are not
    /// written; outputs are written (or read and written, with `options.accumulate`) by kernels queued on
    /// `stream` and must not be used by other streams until those finish. Calls of one loss object share
    /// its workspace: order calls on different streams (as with a cuBLAS handle's workspace).
    pub unsafe fn launch_raw(
        &mut self,
        stream: CUstream,
        shape: &[usize],
        dtype: DType,
        buffers: &CwdRawBuffers,
        options: GradOptions,
    ) -> Result<CwdPath> {
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
        grad_teacher: Option<&mut dyn DevicePtrMut<T>>,
        upstream: Option<&dyn DevicePtr<f32>>,
        options: GradOptions,
    ) -> Result<()> {
        let numel = Nchw::from_dims("student", shape)?.numel();
        let stream = self.stream.clone();
        let mut guards: Guards<'_> = Vec::with_capacity(6);
        let buffers = CwdRawBuffers {
            student: cuda::input("student", student, numel, &stream, &mut guards)?,
            teacher: cuda::input("teacher", teacher, numel, &stream, &mut guards)?,
            loss: cuda::optional_output("loss", loss, 1, &stream, &mut guards)?,
            grad_student: cuda::optional_output("grad_student", grad_student, numel, &stream, &mut guards)?,
            grad_teacher: cuda::optional_output("grad_teacher", grad_teacher, numel, &stream, &mut guards)?,
            upstream: cuda::optional_input("upstream", upstream, 1, &stream, &mut guards)?,
        };
        // SAFETY: every buffer was checked to live in this stream's context and to hold what the shape needs;
        // the guards keep cudarc's ordering of the buffers across streams until the launches are queued.
        unsafe { self.launch_raw(stream.cu_stream(), shape, T::DTYPE, &buffers, options)? };
        drop(guards);
        Ok(())
    }
}
