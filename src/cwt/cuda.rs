//! CWT on the GPU: the tiled kernels of `kernels/cwt.cu`, planned and launched by [`super::driver`]. The
//! typed API checks cudarc buffers and calls the raw layer ([`CwtCuda::launch_raw`]).

use std::sync::Arc;

use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::driver::{self, CwtRawBuffers};
use super::plan;
use super::{CwtConfig, CwtShapes};
use crate::cuda::{self, CudaLauncher, Guards, KernelModule, Workspace};
use crate::dtype::{DType, KdFloat};
use crate::error::Result;
use crate::grad::GradOptions;

/// The MLP's parameters on the device (f32): `W1` `[Ch, Cs]`, `b1` `[Ch]`, `W2` `[Ct, Ch]`, `b2` `[Ct]`.
pub struct CwtParamBuffers<'a> {
    /// `mlp.linear1.weight`.
    pub w1: &'a dyn DevicePtr<f32>,
    /// `mlp.linear1.bias`.
    pub b1: &'a dyn DevicePtr<f32>,
    /// `mlp.linear2.weight`.
    pub w2: &'a dyn DevicePtr<f32>,
    /// `mlp.linear2.bias`.
    pub b2: &'a dyn DevicePtr<f32>,
}

/// Where the parameters' gradients go (f32, the parameters' shapes).
pub struct CwtParamGrads<'a> {
    /// d loss / d `W1`.
    pub w1: &'a mut dyn DevicePtrMut<f32>,
    /// d loss / d `b1`.
    pub b1: &'a mut dyn DevicePtrMut<f32>,
    /// d loss / d `W2`.
    pub w2: &'a mut dyn DevicePtrMut<f32>,
    /// d loss / d `b2`.
    pub b2: &'a mut dyn DevicePtrMut<f32>,
}

/// CWT on the GPU, with the same surface as [`super::CwtCpu`].
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use kd_kernels::cwt::{CwtConfig, CwtCuda, CwtParamBuffers, CwtParamGrads, CwtShapes};
/// let stream = kd_kernels::cuda::default_stream(0)?;
/// let (n, cs, ct, h, w) = (2, 256, 256, 100, 152);
/// let shapes = CwtShapes::new(cs, ct); // hidden width = Ct
/// let alloc = |len: usize| stream.alloc_zeros::<f32>(len);
/// let (student, teacher) = (alloc(n * cs * h * w)?, alloc(n * ct * h * w)?);
/// let (w1, b1, w2, b2) = (alloc(ct * cs)?, alloc(ct)?, alloc(ct * ct)?, alloc(ct)?);
/// let (mut gs, mut gw1, mut gb1, mut gw2, mut gb2) =
///     (alloc(n * cs * h * w)?, alloc(ct * cs)?, alloc(ct)?, alloc(ct * ct)?, alloc(ct)?);
/// let mut loss = alloc(1)?;
/// let mut cwt = CwtCuda::new(stream.clone(), CwtConfig::default(), shapes)?;
/// let params = CwtParamBuffers { w1: &w1, b1: &b1, w2: &w2, b2: &b2 };
/// let grads = CwtParamGrads { w1: &mut gw1, b1: &mut gb1, w2: &mut gw2, b2: &mut gb2 };
/// cwt.forward_backward(&[n, cs, h, w], &student, &teacher, &params, &mut loss, &mut gs, grads)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CwtCuda {
    config: CwtConfig,
    shapes: CwtShapes,
    stream: Arc<CudaStream>,
    module: KernelModule,
    workspace: Workspace,
}

impl CwtCuda {
    /// Validates `config` and `shapes`, probes for a driver, and loads the kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, config: CwtConfig, shapes: CwtShapes) -> Result<Self> {
        config.validate()?;
        shapes.validate()?;
        let module = KernelModule::load(&stream, "cwt", &plan::KERNELS, &plan::OPT_IN_SMEM)?;
        let workspace = Workspace::new(&stream)?;
        Ok(CwtCuda { config, shapes, stream, module, workspace })
    }

    /// The configuration.
    pub fn config(&self) -> &CwtConfig {
        &self.config
    }

    /// The channel counts.
    pub fn shapes(&self) -> &CwtShapes {
        &self.shapes
    }

    /// The stream the typed calls launch on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn teacher_dims(&self, student: &[usize]) -> Vec<usize> {
        let mut t = student.to_vec();
        if t.len() == 4 {
            t[1] = self.shapes.ct;
        }
        t
    }

    /// Sizes the workspace for calls on student shape `student` (`[N, Cs, H, W]`) in `dtype`, so that later
    /// calls allocate nothing (call it before capturing the stream into a CUDA graph). The workspace is planned
    /// within one hidden-activation tensor in `dtype` (`docs/losses.md §5.8`), so a call in f32 may need more
    /// than a reservation for bf16.
    pub fn reserve(&mut self, student: &[usize], dtype: DType) -> Result<()> {
        let (s, t) = self.shapes.check_features(student, &self.teacher_dims(student))?;
        let floats =
            driver::workspace_bound(&self.config, &self.shapes, &s, &t, dtype, plan::Device::of(&self.module))?;
        self.workspace.reserve(floats, 1)
    }

    /// Writes the loss into `loss[0]` (f32). `student` is the student's shape `[N, Cs, H, W]`; the teacher
    /// is `[N, Ct, H, W]`.
    pub fn forward<T: KdFloat>(
        &mut self,
        student_shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        params: &CwtParamBuffers<'_>,
        loss: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        self.launch(student_shape, student, teacher, params, Some(loss), None, None, None, GradOptions::OVERWRITE)
    }

    /// The training-step call: the loss and every gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward<T: KdFloat>(
        &mut self,
        student_shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        params: &CwtParamBuffers<'_>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        grads: CwtParamGrads<'_>,
    ) -> Result<()> {
        self.forward_backward_with(
            student_shape,
            student,
            teacher,
            params,
            loss,
            grad_student,
            grads,
            GradOptions::OVERWRITE,
        )
    }

    /// [`Self::forward_backward`] with every gradient scaled by `options.scale` and, with
    /// `options.accumulate`, added into its buffer.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_with<T: KdFloat>(
        &mut self,
        student_shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        params: &CwtParamBuffers<'_>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        grads: CwtParamGrads<'_>,
        options: GradOptions,
    ) -> Result<()> {
        self.launch(student_shape, student, teacher, params, Some(loss), Some(grad_student), Some(grads), None, options)
    }

    /// Every gradient times the device scalar `upstream[0]` (d total / d loss), without the loss.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: KdFloat>(
        &mut self,
        student_shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        params: &CwtParamBuffers<'_>,
        upstream: &dyn DevicePtr<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        grads: CwtParamGrads<'_>,
    ) -> Result<()> {
        self.backward_with(
            student_shape,
            student,
            teacher,
            params,
            upstream,
            grad_student,
            grads,
            GradOptions::OVERWRITE,
        )
    }

    /// [`Self::backward`] with [`GradOptions`].
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with<T: KdFloat>(
        &mut self,
        student_shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        params: &CwtParamBuffers<'_>,
        upstream: &dyn DevicePtr<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        grads: CwtParamGrads<'_>,
        options: GradOptions,
    ) -> Result<()> {
        self.launch(
            student_shape,
            student,
            teacher,
            params,
            None,
            Some(grad_student),
            Some(grads),
            Some(upstream),
            options,
        )
    }

    /// The raw layer under the typed calls: one call on device addresses, launched on `stream`. What it
    /// writes follows from which addresses are non-zero (see [`CwtRawBuffers`]).
    ///
    /// # Safety
    /// `stream` is a live stream of the context this loss was created in. Every non-zero address points to
    /// device memory of that context holding, for `student_shape` = [N, Cs, H, W] and `dtype`: N*Cs*H*W
    /// elements of `dtype` (student, its gradient), N*Ct*H*W (teacher), the f32 parameters and their
    /// gradients in their shapes, one f32 (loss, upstream). Calls of one loss object share its workspace:
    /// order calls on different streams.
    pub unsafe fn launch_raw(
        &mut self,
        stream: CUstream,
        student_shape: &[usize],
        dtype: DType,
        buffers: &CwtRawBuffers,
        options: GradOptions,
    ) -> Result<()> {
        let teacher = self.teacher_dims(student_shape);
        self.workspace.launch_on(stream);
        let mut launcher = CudaLauncher { module: &self.module, stream };
        // SAFETY: forwarded from the caller.
        unsafe {
            driver::run(
                &self.config,
                &self.shapes,
                student_shape,
                &teacher,
                dtype,
                buffers,
                options,
                None,
                &self.module,
                &mut self.workspace,
                &mut launcher,
            )
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn launch<T: KdFloat>(
        &mut self,
        student_shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        params: &CwtParamBuffers<'_>,
        loss: Option<&mut dyn DevicePtrMut<f32>>,
        grad_student: Option<&mut dyn DevicePtrMut<T>>,
        grads: Option<CwtParamGrads<'_>>,
        upstream: Option<&dyn DevicePtr<f32>>,
        options: GradOptions,
    ) -> Result<()> {
        let (s, t) = self.shapes.check_features(student_shape, &self.teacher_dims(student_shape))?;
        let CwtShapes { cs, ch, ct } = self.shapes;
        let stream = self.stream.clone();
        let mut guards: Guards<'_> = Vec::with_capacity(13);
        let mut buffers = CwtRawBuffers {
            student: cuda::input("student", student, s.numel(), &stream, &mut guards)?,
            teacher: cuda::input("teacher", teacher, t.numel(), &stream, &mut guards)?,
            w1: cuda::input("mlp.linear1.weight", params.w1, ch * cs, &stream, &mut guards)?,
            b1: cuda::input("mlp.linear1.bias", params.b1, ch, &stream, &mut guards)?,
            w2: cuda::input("mlp.linear2.weight", params.w2, ct * ch, &stream, &mut guards)?,
            b2: cuda::input("mlp.linear2.bias", params.b2, ct, &stream, &mut guards)?,
            loss: cuda::optional_output("loss", loss, 1, &stream, &mut guards)?,
            grad_student: cuda::optional_output("grad_student", grad_student, s.numel(), &stream, &mut guards)?,
            upstream: cuda::optional_input("upstream", upstream, 1, &stream, &mut guards)?,
            ..CwtRawBuffers::default()
        };
        if let Some(g) = grads {
            buffers.grad_w1 = cuda::optional_output("grad_w1", Some(g.w1), ch * cs, &stream, &mut guards)?;
            buffers.grad_b1 = cuda::optional_output("grad_b1", Some(g.b1), ch, &stream, &mut guards)?;
            buffers.grad_w2 = cuda::optional_output("grad_w2", Some(g.w2), ct * ch, &stream, &mut guards)?;
            buffers.grad_b2 = cuda::optional_output("grad_b2", Some(g.b2), ct, &stream, &mut guards)?;
        }
        // SAFETY: every buffer was checked to live in this stream's context and to hold what the shapes
        // need; the guards keep cudarc's ordering of the buffers across streams until the launches are queued.
        unsafe { self.launch_raw(stream.cu_stream(), student_shape, T::DTYPE, &buffers, options)? };
        drop(guards);
        Ok(())
    }
}
