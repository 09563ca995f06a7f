//! [`KdBackend`] for burn's cubecl backend on CUDA devices (feature `cuda`): the crate's kernels,
//! through each family's raw layer (`launch_raw`), on the device addresses of cubecl's buffers.
//!
//! # Ordering against cubecl, and what it costs
//!
//! cubecl (0.11) queues its work lazily on streams of its own, and exposes none of them: the `CUstream`
//! a cubecl kernel runs on is a private field (`cubecl_cuda::compute::stream::Stream::sys`, in a module
//! that is not public), and no client call enqueues foreign work on it (a kernel reaches cubecl's stream
//! only as a cubecl `CubeKernel`, compiled by cubecl's own NVRTC path, which our prebuilt, cooperative
//! kernels and their argument blocks are not). What is public is the device address of a buffer
//! (`Client::get_resource`, which also pins the allocation) and a barrier (`Client::sync`). So each call:
//!
//! 1. makes the inputs contiguous (cubecl's own kernel, queued), and allocates the outputs with cubecl
//!    (`Client::empty`: cubecl owns them and frees them when burn drops the tensors);
//! 2. takes every buffer's address with `get_resource`: this is answered in order after everything the
//!    thread queued before (so the outputs' allocation has happened), makes cubecl's current stream wait
//!    for any other cubecl stream that wrote an input, and pins each allocation until we drop the guard;
//! 3. waits on the host for cubecl's stream (`Client::sync`, a fence on the current stream, which after
//!    step 2 also covers the inputs' writers and the outputs' asynchronous allocation);
//! 4. launches the kernels on a stream of ours (one per device, in the device's primary context, which is
//!    the context cubecl uses) and waits on the host for it;
//! 5. drops the guards and returns the output tensors to cubecl, whose later work on them is then safe.
//!
//! That is two host synchronisations per call, where a launch on cubecl's stream would need none: the
//! GPU idles while the host round-trips, and the CPU cannot run ahead of the GPU across the loss (about
//! 10 to 50 µs per call on a discrete GPU, more when the queue before it is long, since the first wait
//! drains it). The kernels themselves are the same as on every other path.
//!
//! burn's `Cuda` backend with its `fusion` feature (burn's default) is `Fusion<CubeBackend>`; the feature
//! turns burn's fusion on, and [`super::fusion`] registers the losses as fusion custom operations that run
//! these implementations when fusion executes its queue.
//!
//! # Adding a family
//!
//! Its GPU object, the family's `LossCuda<F>`, is a [`GpuLoss`] through the family contract (created from
//! its configuration, which is the cache key). The pair and the packed primitives each have one body,
//! generic over the family (`PairOnGpu`, `PackedOnGpu`), which calls [`run`] (or [`run_dyn`], for a number of
//! inputs known at run time) with a closure that has the family fill its raw buffers from the addresses
//! ([`PairLossFamily::raw_buffers`], [`PackedLossFamily::raw_buffers`]).

use std::any::Any;
use std::sync::{Arc, Mutex};

use ::burn::backend::tensor::FloatTensor;
use ::burn::backend::{Backend, TensorMetadata};
use ::burn::tensor::{DType as BurnDType, FloatDType, Shape};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::future::block_on;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeDevice};
use cubecl_runtime::runtime::Runtime;
use cudarc::driver::sys::CUstream;
use cudarc::driver::{CudaContext, CudaStream};

use super::packed::{label_dtype, scatter};
use super::{KdBackend, PackedAddresses, PackedConfig, PackedInputs, PackedJob, PackedLossFamily};
use super::{PairConfig, PairJob, PairLossFamily};
use kd_kernels::cuda::LossCuda;
use kd_kernels::dtype::DType;
use kd_kernels::error::{KdError, Result};
use kd_kernels::family::{Family, PairRawBuffers};
use kd_kernels::grad::GradOptions;

/// The cubecl server of the CUDA runtime, whose storage hands out device addresses.
type CudaServer = <CudaRuntime as Runtime>::Server;

/// A family's GPU loss object, created once per device and key and kept (kernels loaded, workspace sized)
/// for the calls after: every family's [`LossCuda`], keyed by its configuration.
pub trait GpuLoss: Sized + Send + 'static {
    /// What an object is created from (the family's configuration, with the channel counts where the kernels
    /// are sized by them).
    type Key: Clone + PartialEq + Send + 'static;

    /// Loads the kernels into `stream`'s context.
    fn create(stream: Arc<CudaStream>, key: Self::Key) -> Result<Self>;
}

impl<F: Family> GpuLoss for LossCuda<F>
where
    LossCuda<F>: Send,
{
    type Key = F::Config;
    fn create(stream: Arc<CudaStream>, key: F::Config) -> Result<Self> {
        LossCuda::new(stream, key)
    }
}

/// One output of a call: its shape and burn dtype (allocated by cubecl, written by the kernels).
pub struct OutputSpec {
    /// The output's dims.
    pub shape: Vec<usize>,
    /// Its element type.
    pub dtype: BurnDType,
}

impl OutputSpec {
    /// The loss: one f32.
    pub fn loss() -> Self {
        OutputSpec { shape: vec![1], dtype: BurnDType::F32 }
    }

    /// A tensor shaped and typed like `like`.
    pub fn like(like: &CubeTensor) -> Self {
        OutputSpec { shape: like.shape().as_slice().to_vec(), dtype: like.dtype }
    }
}

/// What a family's closure gets for one call: its loss object, the stream to launch on, and the device
/// addresses of the inputs (in order, contiguous) and the outputs (in order).
pub struct RawCall<'a, L, const N: usize> {
    /// The family's loss object for this device and key.
    pub loss: &'a mut L,
    /// The stream to pass to `launch_raw`.
    pub stream: CUstream,
    /// The inputs' device addresses.
    pub inputs: [u64; N],
    /// The outputs' device addresses, in the order of the specs.
    pub outputs: &'a [u64],
}

/// [`RawCall`] for a call whose number of inputs is known only at run time (a list of layers).
pub struct RawCallDyn<'a, L> {
    /// The family's loss object for this device and key.
    pub loss: &'a mut L,
    /// The stream to pass to `launch_raw`.
    pub stream: CUstream,
    /// The inputs' device addresses, in order.
    pub inputs: &'a [u64],
    /// The outputs' device addresses, in the order of the specs.
    pub outputs: &'a [u64],
}

/// Runs one call of a family on cubecl's buffers, ordered against cubecl's queue by the two host waits of
/// the module docs. `call` fills the family's raw buffers and calls `launch_raw`.
///
/// # Panics
///
/// On a tensor that is not on a CUDA device, and on any error of the driver or the kernels (the
/// primitives of [`KdBackend`] return tensors; the checked functions of [this crate](crate) refuse bad inputs
/// before anything runs, so what is left is a failing device).
pub fn run<L: GpuLoss, const N: usize>(
    key: L::Key,
    inputs: [CubeTensor; N],
    outputs: Vec<OutputSpec>,
    call: impl FnOnce(RawCall<'_, L, N>) -> Result<()>,
) -> Vec<CubeTensor> {
    run_dyn::<L>(key, inputs.into(), outputs, |c| {
        let inputs: [u64; N] = c.inputs.try_into().expect("one address per input");
        call(RawCall { loss: c.loss, stream: c.stream, inputs, outputs: c.outputs })
    })
}

/// [`run`] for a number of inputs known only at run time (at least one).
///
/// # Panics
///
/// As [`run`], and without inputs.
pub fn run_dyn<L: GpuLoss>(
    key: L::Key,
    inputs: Vec<CubeTensor>,
    outputs: Vec<OutputSpec>,
    call: impl FnOnce(RawCallDyn<'_, L>) -> Result<()>,
) -> Vec<CubeTensor> {
    try_run(key, inputs, outputs, call).unwrap_or_else(|e| panic!("kd_kernels_burn on CUDA: {e}"))
}

fn try_run<L: GpuLoss>(
    key: L::Key,
    inputs: Vec<CubeTensor>,
    outputs: Vec<OutputSpec>,
    call: impl FnOnce(RawCallDyn<'_, L>) -> Result<()>,
) -> Result<Vec<CubeTensor>> {
    let first = inputs.first().expect("a call has inputs");
    let device = first.device.clone();
    let ordinal = cuda_ordinal(&device)?;
    let client = first.client.clone();
    let inputs: Vec<CubeTensor> = inputs.into_iter().map(into_contiguous).collect();
    let outputs: Vec<CubeTensor> = outputs
        .into_iter()
        .map(|spec| {
            let bytes = spec.shape.iter().product::<usize>() * spec.dtype.size();
            let handle = client.empty(bytes);
            CubeTensor::new_contiguous(client.clone(), device.clone(), Shape::from(spec.shape), handle, spec.dtype)
        })
        .collect();
    let resource = |t: &CubeTensor| {
        client.get_resource::<CudaServer>(t.handle.clone()).map_err(|e| KdError::Unsupported {
            what: "a burn CUDA tensor",
            detail: format!("cubecl could not hand out its device address: {e}"),
        })
    };
    // The guards pin every allocation (no reuse, no move) until the kernels are done.
    let input_guards = inputs.iter().map(resource).collect::<Result<Vec<_>>>()?;
    let output_guards = outputs.iter().map(resource).collect::<Result<Vec<_>>>()?;
    block_on(client.sync()).map_err(|e| KdError::Unsupported {
        what: "burn's CUDA device",
        detail: format!("waiting for cubecl's queue before the loss failed: {e}"),
    })?;
    let inputs_addr: Vec<u64> = input_guards.iter().map(|g| g.resource().ptr).collect();
    let outputs_addr: Vec<u64> = output_guards.iter().map(|g| g.resource().ptr).collect();
    let stream = kd_stream(ordinal)?;
    let launched = with_loss::<L, _>(ordinal, &stream, key, |loss| {
        call(RawCallDyn { loss, stream: stream.cu_stream(), inputs: &inputs_addr, outputs: &outputs_addr })
    });
    // Waited for even when a launch failed: kernels queued before it must not outlive the guards.
    let finished = stream.synchronize().map_err(|e| KdError::cuda("cuStreamSynchronize", e));
    drop((input_guards, output_guards));
    launched?;
    finished?;
    Ok(outputs)
}

/// The CUDA ordinal of a cubecl device; other cubecl runtimes are refused (the checked functions refuse
/// them first).
fn cuda_ordinal(device: &CubeDevice) -> Result<usize> {
    match device {
        CubeDevice::Cuda(cuda) => Ok(cuda.index),
        #[allow(unreachable_patterns)]
        other => Err(KdError::Unsupported {
            what: "this cubecl runtime",
            detail: format!("the kernels run on CUDA devices, not on {other:?}"),
        }),
    }
}

/// Our stream on device `ordinal`, in its primary context (cubecl's context too); one per device.
fn kd_stream(ordinal: usize) -> Result<Arc<CudaStream>> {
    static STREAMS: Mutex<Vec<(usize, Arc<CudaStream>)>> = Mutex::new(Vec::new());
    let mut streams = STREAMS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, stream)) = streams.iter().find(|(o, _)| *o == ordinal) {
        return Ok(stream.clone());
    }
    kd_kernels::cuda::probe()?;
    let ctx = CudaContext::new(ordinal).map_err(|e| KdError::cuda("cuDevicePrimaryCtxRetain", e))?;
    let stream = ctx.new_stream().map_err(|e| KdError::cuda("cuStreamCreate", e))?;
    streams.push((ordinal, stream.clone()));
    Ok(stream)
}

/// A loss object of family `L` kept for a device and key.
struct Cached<L: GpuLoss> {
    ordinal: usize,
    key: L::Key,
    loss: L,
}

/// Runs `f` on the object of family `L` for `ordinal` and `key`, creating it on first use. Calls are
/// serialised by the lock: the objects' workspaces are shared by their calls.
fn with_loss<L: GpuLoss, R>(
    ordinal: usize,
    stream: &Arc<CudaStream>,
    key: L::Key,
    f: impl FnOnce(&mut L) -> Result<R>,
) -> Result<R> {
    static LOSSES: Mutex<Vec<Box<dyn Any + Send>>> = Mutex::new(Vec::new());
    let mut losses = LOSSES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let found = losses
        .iter()
        .position(|entry| entry.downcast_ref::<Cached<L>>().is_some_and(|c| c.ordinal == ordinal && c.key == key));
    let index = match found {
        Some(index) => index,
        None => {
            losses.push(Box::new(Cached::<L> { ordinal, key: key.clone(), loss: L::create(stream.clone(), key)? }));
            losses.len() - 1
        }
    };
    let cached = losses[index].downcast_mut::<Cached<L>>().expect("found by its type");
    f(&mut cached.loss)
}

/// The kernels' dtype for a burn float dtype (f64 has no kernels; the checked functions refuse it).
fn kernel_dtype(dtype: BurnDType) -> DType {
    match dtype {
        BurnDType::F32 | BurnDType::Flex32 => DType::F32,
        BurnDType::F16 => DType::F16,
        BurnDType::BF16 => DType::BF16,
        other => panic!("kd_kernels_burn on CUDA: the kernels read f32, f16 or bf16, not {other:?}"),
    }
}

/// The dtype a call's loss is returned in (its first input's) and the kernels' dtype of that input.
fn dtypes(first: &CubeTensor) -> (BurnDType, DType) {
    (first.dtype, kernel_dtype(first.dtype))
}

/// The outputs of [`run`], the kernels' f32 loss first, with the loss cast to `dtype` (the inputs' dtype, as
/// the primitives return it).
fn loss_in(mut out: Vec<CubeTensor>, dtype: BurnDType) -> Vec<CubeTensor> {
    out[0] = loss_as::<CubeBackend>(out[0].clone(), dtype);
    out
}

/// The kernels' f32 loss in the inputs' dtype, as the primitives return it.
fn loss_as<B: Backend>(loss: FloatTensor<B>, dtype: BurnDType) -> FloatTensor<B> {
    if loss.dtype() == dtype {
        loss
    } else {
        B::float_cast(loss, FloatDType::from(dtype))
    }
}

fn dims(t: &CubeTensor) -> Vec<usize> {
    t.shape().as_slice().to_vec()
}

/// A [`PairConfig`]'s loss and, with `grads`, its gradients (the student's, then the teacher's where the
/// configuration asks for it), each of the student's shape and dtype, through the family's raw layer: the pair
/// primitives' one body.
struct PairOnGpu {
    student: CubeTensor,
    teacher: CubeTensor,
    grads: usize,
}

impl PairJob for PairOnGpu {
    type Out = Vec<CubeTensor>;
    fn run<F: PairLossFamily>(self, config: F::Config) -> Vec<CubeTensor> {
        let (shape, teacher_dims, dtype) = (dims(&self.student), dims(&self.teacher), self.student.dtype);
        let mut outputs = vec![OutputSpec::loss()];
        outputs.extend((0..self.grads).map(|_| OutputSpec::like(&self.student)));
        let out = run::<LossCuda<F>, 2>(config, [self.student, self.teacher], outputs, |c| {
            let [student, teacher] = c.inputs;
            let (loss, grad_student, grad_teacher) = (c.outputs[0], out(c.outputs, 1), out(c.outputs, 2));
            let pair = PairRawBuffers { student, teacher, loss, grad_student, grad_teacher, upstream: 0 };
            let buffers = F::raw_buffers(pair)?;
            F::with_shape(&shape, &teacher_dims, |shape| {
                // SAFETY: addresses of live, pinned cubecl buffers of the primary context, sized for the
                // student's and the teacher's dims, which the family checked.
                unsafe { c.loss.launch_raw(c.stream, shape, kernel_dtype(dtype), &buffers, GradOptions::OVERWRITE) }
                    .map(drop)
            })
        });
        loss_in(out, dtype)
    }
}

/// The address of output `i`, 0 (absent) past the end.
fn out(outputs: &[u64], i: usize) -> u64 {
    outputs.get(i).copied().unwrap_or(0)
}

impl KdBackend for CubeBackend {
    fn pair_forward(student: CubeTensor, teacher: CubeTensor, config: PairConfig) -> CubeTensor {
        config.run(PairOnGpu { student, teacher, grads: 0 }).remove(0)
    }

    fn pair_forward_backward(
        student: CubeTensor,
        teacher: CubeTensor,
        config: PairConfig,
    ) -> (CubeTensor, CubeTensor, Option<CubeTensor>) {
        let grads = 1 + usize::from(config.teacher_grad());
        let mut out = config.run(PairOnGpu { student, teacher, grads }).into_iter();
        let (loss, gs) = (out.next().expect("loss"), out.next().expect("student gradient"));
        (loss, gs, out.next())
    }

    fn packed_forward(inputs: PackedInputs<Self>, config: PackedConfig) -> CubeTensor {
        config.run(PackedOnGpu { inputs, want_grad: false }).0
    }

    fn packed_forward_backward(
        inputs: PackedInputs<Self>,
        config: PackedConfig,
    ) -> (CubeTensor, Vec<Option<CubeTensor>>) {
        config.run(PackedOnGpu { inputs, want_grad: true })
    }
}

/// A [`PackedConfig`]'s loss and, with `want_grad`, the gradients its family has, through the family's raw
/// layer: the packed primitives' one body. The loss is returned in the first input's dtype, each gradient
/// shaped and typed as its input; the family makes its raw buffers from the addresses
/// ([`PackedLossFamily::raw_buffers`], the packed tensors' offsets where it packs several in one).
struct PackedOnGpu {
    inputs: PackedInputs<CubeBackend>,
    want_grad: bool,
}

impl PackedJob for PackedOnGpu {
    type Out = (CubeTensor, Vec<Option<CubeTensor>>);
    fn run<F: PackedLossFamily>(self, call: F::Call) -> Self::Out {
        let (floats, labels) = self.inputs.into_parts();
        let refused = format!("kd_kernels_burn: {} input the checked functions refuse", F::LABEL);
        let label_dtype = labels.as_ref().map(|l| label_dtype(l.dtype).unwrap_or_else(|e| panic!("{refused}: {e}")));
        let all_dims: Vec<Vec<usize>> = floats.iter().chain(&labels).map(dims).collect();
        let (loss_dtype, dtype) = dtypes(&floats[0]);
        let want: Vec<bool> = F::GRADS.iter().map(|&g| g && self.want_grad).collect();
        let grads = floats.iter().zip(&want).filter(|(_, &w)| w).map(|(input, _)| OutputSpec::like(input));
        let outputs = std::iter::once(OutputSpec::loss()).chain(grads).collect();
        let arity = floats.len();
        let inputs = floats.into_iter().chain(labels).collect();
        let out = run_dyn::<LossCuda<F>>(F::config(&call), inputs, outputs, |c| {
            let mut written = c.outputs[1..].iter();
            let grads: Vec<u64> = want.iter().map(|&w| if w { *written.next().expect("counted") } else { 0 }).collect();
            let at = PackedAddresses {
                floats: &c.inputs[..arity],
                labels: label_dtype.map(|d| (c.inputs[arity], d)),
                dtype,
                loss: c.outputs[0],
                grads: &grads,
            };
            let buffers = F::raw_buffers(&call, &at);
            F::with_shape(&call, &all_dims, |shape| {
                // SAFETY: addresses of live, pinned cubecl buffers of the primary context, each input's (or, in a
                // packed buffer, each packed tensor's, at its offset) holding what the shape `call` and the dims
                // give it needs (the checked function packed them so); the labels are integers of their dtype.
                unsafe { c.loss.launch_raw(c.stream, shape, dtype, &buffers, GradOptions::OVERWRITE) }.map(drop)
            })
        });
        let mut out = loss_in(out, loss_dtype).into_iter();
        let loss = out.next().expect("the loss");
        (loss, scatter(want, out))
    }
}
