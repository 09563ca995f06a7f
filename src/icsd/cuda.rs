//! ICSD on the GPU: `icsd_stats`, `icsd_gram`, `icsd_epilogue`, then for a gradient `icsd_dot` and
//! `icsd_grad` (kernels/icsd.cu), on the caller's stream. The typed API checks cudarc buffers and calls the
//! raw layer ([`IcsdCuda::launch_raw`]), which plans and launches through [`super::driver`].

use std::sync::Arc;

use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::driver::{self, IcsdRawBuffers};
use super::{plan, IcsdConfig};
use crate::cuda::{self, CudaLauncher, Guards, KernelModule, Workspace};
use crate::dtype::{DType, KdFloat};
use crate::error::Result;
use crate::grad::GradOptions;
use crate::launch::DeviceInfo;
use crate::shape::Nchw;

/// ICSD on the GPU, with the same surface as [`super::IcsdCpu`].
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use kd_kernels::icsd::{IcsdConfig, IcsdCuda};
/// let stream = kd_kernels::cuda::default_stream(0)?;
/// let shape = [6, 21, 129, 129];
/// let numel: usize = shape.iter().product();
/// let student = stream.alloc_zeros::<f32>(numel)?; // the student's logits
/// let teacher = stream.alloc_zeros::<f32>(numel)?;
/// let mut grad = stream.alloc_zeros::<f32>(numel)?;
/// let mut loss = stream.alloc_zeros::<f32>(1)?;
/// let mut icsd = IcsdCuda::new(stream.clone(), IcsdConfig::default())?;
/// icsd.forward_backward(&shape, &student, &teacher, &mut loss, &mut grad)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct IcsdCuda {
    pub(super) config: IcsdConfig,
    pub(super) stream: Arc<CudaStream>,
    pub(super) module: KernelModule,
    pub(super) workspace: Workspace,
}

impl IcsdCuda {
    /// Validates `config`, probes for a driver, and loads the kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, config: IcsdConfig) -> Result<Self> {
        config.validate()?;
        let module = KernelModule::load(&stream, "icsd", &plan::KERNELS, &[])?;
        let workspace = Workspace::new(&stream)?;
        Ok(IcsdCuda { config, stream, module, workspace })
    }

    /// The configuration.
    pub fn config(&self) -> &IcsdConfig {
        &self.config
    }

    /// The stream the typed calls launch on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Sizes the workspace for calls on `shape`, so that later calls allocate nothing (call it before a
    /// graph capture). The workspace does not depend on the dtype.
    pub fn reserve(&mut self, shape: &[usize], _dtype: DType) -> Result<()> {
        let shape = Nchw::from_dims("student", shape)?;
        let floats = driver::workspace_bound(&self.config, &shape, self.module.sm_count())?;
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
        self.launch(shape, student, teacher, Some(loss), None, None, None, GradOptions::OVERWRITE)
    }

    /// The two row-normalised `C x C` matrices (f32, row-major): `Mh_S` into `sim_student`, `Mh_T` into
    /// `sim_teacher`, and the loss into `loss[0]`.
    pub fn forward_matrices<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        sim_student: &mut dyn DevicePtrMut<f32>,
        sim_teacher: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        self.launch(
            shape,
            student,
            teacher,
            Some(loss),
            None,
            None,
            Some((sim_student, sim_teacher)),
            GradOptions::OVERWRITE,
        )
    }

    /// The training-step call: the loss into `loss[0]` and d loss / d student into `grad_student`.
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

    /// [`Self::forward_backward`] with the gradient scaled by `options.scale` and, with `options.accumulate`,
    /// added into `grad_student`.
    pub fn forward_backward_with<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        options: GradOptions,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), Some(grad_student), None, None, options)
    }

    /// The gradient times the device scalar `upstream[0]` (d total / d loss), without the loss.
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
        self.launch(shape, student, teacher, None, Some(grad_student), Some(upstream), None, options)
    }

    /// The raw layer under the typed calls: one call on device addresses, launched on `stream`; what it
    /// writes follows from which addresses are non-zero (see [`IcsdRawBuffers`]).
    ///
    /// # Safety
    /// `stream` is a live stream of this loss's context. Every non-zero address points to device memory of
    /// that context holding, for `shape` = [B, C, H, W] and `dtype`: B*C*H*W elements of `dtype` (student,
    /// teacher, gradient; contiguous NCHW), one f32 (loss, upstream), C*C f32 (matrices). Calls of one loss
    /// object share its workspace: order calls on different streams.
    pub unsafe fn launch_raw(
        &mut self,
        stream: CUstream,
        shape: &[usize],
        dtype: DType,
        buffers: &IcsdRawBuffers,
        options: GradOptions,
    ) -> Result<()> {
        let shape = Nchw::from_dims("student", shape)?;
        self.workspace.launch_on(stream);
        let mut launcher = CudaLauncher { module: &self.module, stream };
        // SAFETY: forwarded from the caller.
        unsafe {
            driver::run(&self.config, &shape, dtype, buffers, options, &self.module, &mut self.workspace, &mut launcher)
        }
    }

    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn launch<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: Option<&mut dyn DevicePtrMut<f32>>,
        grad_student: Option<&mut dyn DevicePtrMut<T>>,
        upstream: Option<&dyn DevicePtr<f32>>,
        sims: Option<(&mut dyn DevicePtrMut<f32>, &mut dyn DevicePtrMut<f32>)>,
        options: GradOptions,
    ) -> Result<()> {
        let nchw = Nchw::from_dims("student", shape)?;
        let numel = nchw.numel();
        let cc = nchw.c * nchw.c;
        let stream = self.stream.clone();
        let mut guards: Guards<'_> = Vec::with_capacity(7);
        let (sim_s, sim_t) = match sims {
            Some((s, t)) => (Some(s), Some(t)),
            None => (None, None),
        };
        let buffers = IcsdRawBuffers {
            student: cuda::input("student", student, numel, &stream, &mut guards)?,
            teacher: cuda::input("teacher", teacher, numel, &stream, &mut guards)?,
            loss: cuda::optional_output("loss", loss, 1, &stream, &mut guards)?,
            grad_student: cuda::optional_output("grad_student", grad_student, numel, &stream, &mut guards)?,
            upstream: cuda::optional_input("upstream", upstream, 1, &stream, &mut guards)?,
            sim_student: cuda::optional_output("sim_student", sim_s, cc, &stream, &mut guards)?,
            sim_teacher: cuda::optional_output("sim_teacher", sim_t, cc, &stream, &mut guards)?,
        };
        // SAFETY: every buffer was checked to live in this stream's context and to hold what the shape needs.
        unsafe { self.launch_raw(stream.cu_stream(), shape, T::DTYPE, &buffers, options)? };
        drop(guards);
        Ok(())
    }
}
