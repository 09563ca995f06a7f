//! The loss object on the GPU, written once for every family: the family's kernels loaded into a stream's
//! context, its reusable workspace, the raw-pointer layer and the typed calls.

use std::sync::Arc;

use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::{Binder, CudaLauncher, KernelModule, Workspace};
use crate::dtype::{DType, KdFloat};
use crate::error::Result;
use crate::family::{Family, PairBuffers, RawCall, Sizing, StudentTeacherFamily, TypedFamily};
use crate::launch::Machine;

/// A loss family `F` on the GPU: its kernels loaded into one context and a workspace that grows to the
/// largest call seen, then is reused, so steady-state calls allocate nothing. Calls are queued on a stream
/// and never synchronise with the host. Each family names it: [`crate::cwd::CwdCuda`] is `LossCuda<Cwd>`.
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
/// cwd.forward_backward(&shape, &student, &teacher, &mut loss, &mut grad)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LossCuda<F: Family> {
    config: F::Config,
    path: F::Path,
    stream: Arc<CudaStream>,
    module: KernelModule,
    workspace: Workspace,
}

impl<F: Family> LossCuda<F> {
    /// Validates `config`, probes for a driver, and loads the family's kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, config: F::Config) -> Result<Self> {
        F::validate(&config)?;
        let module = KernelModule::load(&stream, F::NAME, F::KERNELS, F::LARGE_SMEM_KERNELS)?;
        let workspace = Workspace::new(&stream)?;
        Ok(LossCuda { config, path: F::Path::default(), stream, module, workspace })
    }

    /// The same loss, computed by the kernels `path` selects (the default picks by shape).
    pub fn with_path(mut self, path: F::Path) -> Self {
        self.path = path;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &F::Config {
        &self.config
    }

    /// Which kernels the calls run.
    pub fn path(&self) -> F::Path {
        self.path
    }

    /// The stream the typed calls launch on (and the workspace is allocated on).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn module(&self) -> &KernelModule {
        &self.module
    }

    /// Sizes the workspace for calls on `shape` in `dtype` (any path, any alignment), so that later calls
    /// allocate nothing. Call it before capturing the stream into a CUDA graph: a call that would have to grow
    /// the workspace during a capture returns [`crate::KdError::WorkspaceTooSmall`] instead.
    pub fn reserve(&mut self, shape: &F::Shape, dtype: DType) -> Result<()> {
        let (floats, counters) =
            F::workspace_bound(Sizing { config: &self.config, shape, dtype, device: &self.module })?;
        self.workspace.reserve(floats, counters.max(1))
    }

    /// The raw layer under the typed calls, for stacks whose buffers are not cudarc slices (burn's raw device
    /// pointers, the C ABI): one call on device addresses, launched on `stream`. What it writes follows from
    /// which addresses are non-zero (see the family's raw buffers). Checks the shape and the configuration as
    /// the typed calls do; it cannot check the buffers. Returns what the call reports (the kernels it ran).
    ///
    /// # Safety
    /// `stream` is a live stream of the context this loss was created in. Every non-zero address points to
    /// device memory of that context holding what the family's raw buffers document for `shape` and
    /// `dtype` (contiguous NCHW). Inputs are not written; outputs are written (or read and written, with
    /// `options.accumulate`) by kernels queued on `stream` and must not be used by other streams until those
    /// finish. Calls of one loss object share its workspace: order calls on different streams (as with a
    /// cuBLAS handle's workspace).
    pub unsafe fn launch_raw(
        &mut self,
        stream: CUstream,
        shape: &F::Shape,
        dtype: DType,
        buffers: &F::RawBuffers,
        options: crate::GradOptions,
    ) -> Result<F::Path> {
        self.workspace.launch_on(stream);
        let mut launcher = CudaLauncher { module: &self.module, stream };
        let call = RawCall { config: &self.config, path: self.path, shape, dtype, buffers, options };
        let on = Machine { device: &self.module, scratch: &mut self.workspace, launcher: &mut launcher };
        // SAFETY: forwarded from the caller.
        unsafe { F::run(call, on) }
    }
}

impl<F: TypedFamily> LossCuda<F> {
    /// One call on cudarc buffers: each is checked (length, context) and the call is queued on this loss's
    /// stream. What it writes follows from which outputs `buffers` holds.
    pub fn call<T: KdFloat>(&mut self, shape: &F::Shape, buffers: F::Buffers<'_, T>) -> Result<F::Path> {
        let stream = self.stream.clone();
        let mut binder = Binder::new(&stream);
        let (raw, options) = F::bind(&self.config, shape, buffers, &mut binder)?;
        // SAFETY: every buffer was checked to live in this stream's context and to hold what the shape needs;
        // the binder keeps cudarc's ordering of the buffers across streams until the launches are queued.
        let report = unsafe { self.launch_raw(stream.cu_stream(), shape, T::DTYPE, &raw, options)? };
        drop(binder);
        Ok(report)
    }
}

/// The short calls of a (student, teacher) loss; [`LossCuda::call`] with [`PairBuffers`] does the rest (the
/// teacher's gradient, scaled or accumulated gradients).
impl<F: StudentTeacherFamily> LossCuda<F> {
    /// Writes the loss into `loss[0]` (f32).
    pub fn forward<T: KdFloat>(
        &mut self,
        shape: &F::Shape,
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        let buffers = PairBuffers { loss: Some(loss), ..PairBuffers::new(student, teacher) };
        self.call(shape, F::pair_buffers(buffers)).map(drop)
    }

    /// The training-step call: the loss into `loss[0]` and d loss / d student into `grad_student`.
    pub fn forward_backward<T: KdFloat>(
        &mut self,
        shape: &F::Shape,
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        let buffers =
            PairBuffers { loss: Some(loss), grad_student: Some(grad_student), ..PairBuffers::new(student, teacher) };
        self.call(shape, F::pair_buffers(buffers)).map(drop)
    }

    /// d loss / d student times the upstream gradient `upstream[0]` (a device f32, d total / d loss), without
    /// the loss.
    pub fn backward<T: KdFloat>(
        &mut self,
        shape: &F::Shape,
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        upstream: &dyn DevicePtr<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        let buffers = PairBuffers {
            upstream: Some(upstream),
            grad_student: Some(grad_student),
            ..PairBuffers::new(student, teacher)
        };
        self.call(shape, F::pair_buffers(buffers)).map(drop)
    }
}
