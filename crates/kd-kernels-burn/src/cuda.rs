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
//! its configuration, which is the cache key), and each primitive is one call of [`run`] (or [`run_dyn`], for a list of layers) with a closure that fills
//! the family's raw buffers from the addresses.

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

use super::{loss_and_grad, KdBackend, PairConfig, PairJob, PairLossFamily};
use super::{CwtPacking, PkdPacking, SemckdPacking};
use kd_kernels::cuda::LossCuda;
use kd_kernels::cwt::{CwtCuda, CwtRawBuffers, CwtSetup};
use kd_kernels::dtype::DType;
use kd_kernels::error::{KdError, Result};
use kd_kernels::family::{Family, PairRawBuffers};
use kd_kernels::grad::GradOptions;
use kd_kernels::ifvd::{check_shapes, IfvdConfig, IfvdCuda, IfvdRawBuffers};
use kd_kernels::pkd::{PkdConfig, PkdCuda, PkdLevels, PkdRawBuffers};
use kd_kernels::semckd::{SemckdConfig, SemckdCuda, SemckdLayers, SemckdRawBuffers};

/// The cubecl server of the CUDA runtime, whose storage hands out device addresses.
type CudaServer = <CudaRuntime as Runtime>::Server;

/// A family's GPU loss object, created once per device and key and kept (kernels loaded, workspace sized)
/// for the calls after: every family's [`LossCuda`], keyed by its configuration.
pub trait GpuLoss: Sized + Send + 'static {
    /// What an object is created from (the family's configuration; CWT's adds its channel counts).
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

/// The outputs of a call: the loss, then, with `want_grad`, one gradient shaped and typed like each of `like`.
fn loss_then_grads(want_grad: bool, like: &[&CubeTensor]) -> Vec<OutputSpec> {
    let grads = like.iter().filter(|_| want_grad).map(|t| OutputSpec::like(t));
    std::iter::once(OutputSpec::loss()).chain(grads).collect()
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

    fn pkd_forward(student: CubeTensor, teacher: CubeTensor, levels: PkdLevels, config: PkdConfig) -> CubeTensor {
        pkd(student, teacher, &levels, config, false).remove(0)
    }

    fn pkd_forward_backward(
        student: CubeTensor,
        teacher: CubeTensor,
        levels: PkdLevels,
        config: PkdConfig,
    ) -> (CubeTensor, CubeTensor) {
        loss_and_grad(pkd(student, teacher, &levels, config, true))
    }

    fn ifvd_forward(student: CubeTensor, teacher: CubeTensor, labels: CubeTensor, config: IfvdConfig) -> CubeTensor {
        ifvd(student, teacher, labels, config, false).remove(0)
    }

    fn ifvd_forward_backward(
        student: CubeTensor,
        teacher: CubeTensor,
        labels: CubeTensor,
        config: IfvdConfig,
    ) -> (CubeTensor, CubeTensor) {
        loss_and_grad(ifvd(student, teacher, labels, config, true))
    }

    fn cwt_forward(student: CubeTensor, teacher: CubeTensor, params: CubeTensor, setup: CwtSetup) -> CubeTensor {
        cwt(student, teacher, params, setup, false).remove(0)
    }

    fn cwt_forward_backward(
        student: CubeTensor,
        teacher: CubeTensor,
        params: CubeTensor,
        setup: CwtSetup,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let mut out = cwt(student, teacher, params, setup, true).into_iter();
        let mut next = || out.next().expect("CWT returns the loss and two gradients");
        (next(), next(), next())
    }

    fn semckd_forward(
        maps: CubeTensor,
        teacher: CubeTensor,
        params: CubeTensor,
        layers: SemckdLayers,
        config: SemckdConfig,
    ) -> CubeTensor {
        semckd(maps, teacher, params, &layers, config, false).remove(0)
    }

    fn semckd_forward_backward(
        maps: CubeTensor,
        teacher: CubeTensor,
        params: CubeTensor,
        layers: SemckdLayers,
        config: SemckdConfig,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let mut out = semckd(maps, teacher, params, &layers, config, true).into_iter();
        let mut next = || out.next().expect("SemCKD returns the loss and two packed gradients");
        (next(), next(), next())
    }
}

/// SemCKD on the packed tensors of [`KdBackend::semckd_forward`]: the loss (the maps' dtype) and, with
/// `want_grad`, d loss / d `maps` and d loss / d `params` packed as the inputs. Each layer's address is
/// the packed buffer's plus its offset ([`SemckdPacking`]); the SemCKD kernels read element by element, so
/// the offsets need no alignment beyond the element's.
fn semckd(
    maps: CubeTensor,
    teacher: CubeTensor,
    params: CubeTensor,
    layers: &SemckdLayers,
    config: SemckdConfig,
    want_grad: bool,
) -> Vec<CubeTensor> {
    let (loss_dtype, dtype) = dtypes(&maps);
    let outputs = loss_then_grads(want_grad, &[&maps, &params]);
    let out = run::<SemckdCuda, 3>(config, [maps, teacher, params], outputs, |c| {
        let packing = SemckdPacking::new(layers);
        let [maps, teacher, params] = c.inputs;
        let s = layers.students();
        let at = |base: u64, parts: &[(Vec<usize>, std::ops::Range<usize>)], size: usize| -> Vec<u64> {
            parts.iter().map(|(_, range)| base + (range.start * size) as u64).collect()
        };
        let mlps =
            |addresses: &[u64]| -> Vec<[u64; 4]> { addresses.chunks(4).map(|p| [p[0], p[1], p[2], p[3]]).collect() };
        let (map_at, param_at) = (at(maps, &packing.maps, dtype.size()), at(params, &packing.params, 4));
        let mut buffers = SemckdRawBuffers {
            student: map_at[..s].to_vec(),
            teacher: at(teacher, &packing.teacher, dtype.size()),
            proj: map_at[s..].to_vec(),
            query: mlps(&param_at[..4 * s]),
            key: mlps(&param_at[4 * s..]),
            loss: c.outputs[0],
            ..Default::default()
        };
        if want_grad {
            let grad_maps = at(c.outputs[1], &packing.maps, dtype.size());
            let grad_params = at(c.outputs[2], &packing.params, 4);
            buffers.grad_student = grad_maps[..s].to_vec();
            buffers.grad_proj = grad_maps[s..].to_vec();
            buffers.grad_query = mlps(&grad_params[..4 * s]);
            buffers.grad_key = mlps(&grad_params[4 * s..]);
        }
        // SAFETY: as in `PairOnGpu`; each address is a packed buffer's plus the offset of a tensor of the
        // shape `layers` gives it (the checked function packed them so), the parameters f32.
        unsafe { c.loss.launch_raw(c.stream, layers, dtype, &buffers, GradOptions::OVERWRITE) }
    });
    loss_in(out, loss_dtype)
}

/// PKD on the packed tensors of [`KdBackend::pkd_forward`]: the loss (the student's dtype) and, with
/// `want_grad`, d loss / d student packed as the student. Each level's address is the packed buffer's plus
/// its offset ([`PkdPacking`]); the PKD kernels read element by element, so the offsets need no alignment
/// beyond the element's.
fn pkd(
    student: CubeTensor,
    teacher: CubeTensor,
    levels: &PkdLevels,
    config: PkdConfig,
    want_grad: bool,
) -> Vec<CubeTensor> {
    let (loss_dtype, dtype) = dtypes(&student);
    let outputs = loss_then_grads(want_grad, &[&student]);
    let out = run::<PkdCuda, 2>(config, [student, teacher], outputs, |c| {
        let packing = PkdPacking::new(levels);
        let at = |base: u64| -> Vec<u64> {
            packing.levels.iter().map(|(_, range)| base + (range.start * dtype.size()) as u64).collect()
        };
        let [s, t] = c.inputs;
        let buffers = PkdRawBuffers {
            student: at(s),
            teacher: at(t),
            loss: c.outputs[0],
            grad_student: if want_grad { at(c.outputs[1]) } else { Vec::new() },
            upstream: 0,
        };
        // SAFETY: as in `PairOnGpu`; each address is a packed buffer's plus the offset of a level of the
        // shape `levels` gives it (the checked function packed them so).
        unsafe { c.loss.launch_raw(c.stream, levels, dtype, &buffers, GradOptions::OVERWRITE) }
    });
    loss_in(out, loss_dtype)
}

/// IFVD: the loss (the student's dtype) and, with `want_grad`, d loss / d student.
fn ifvd(
    student: CubeTensor,
    teacher: CubeTensor,
    labels: CubeTensor,
    config: IfvdConfig,
    want_grad: bool,
) -> Vec<CubeTensor> {
    let shapes = check_shapes(&dims(&student), &dims(&teacher), &dims(&labels))
        .unwrap_or_else(|e| panic!("kd_kernels_burn: input the checked functions refuse: {e}"));
    let label_dtype = super::ifvd::label_dtype(labels.dtype)
        .unwrap_or_else(|e| panic!("kd_kernels_burn: input the checked functions refuse: {e}"));
    let (loss_dtype, dtype) = dtypes(&student);
    let outputs = loss_then_grads(want_grad, &[&student]);
    let out = run::<IfvdCuda, 3>(config, [student, teacher, labels], outputs, |c| {
        let [student, teacher, labels] = c.inputs;
        let buffers = IfvdRawBuffers {
            student,
            teacher,
            labels,
            label_dtype,
            loss: c.outputs[0],
            grad_student: out(c.outputs, 1),
            upstream: 0,
        };
        // SAFETY: as in `PairOnGpu`; the labels are integers of `label_dtype`, `[N, Hl, Wl]`.
        unsafe { c.loss.launch_raw(c.stream, &shapes, dtype, &buffers, GradOptions::OVERWRITE) }
    });
    loss_in(out, loss_dtype)
}

/// CWT on the packed parameters of [`KdBackend::cwt_forward`]: the loss (f32, as its parameters), and with
/// `want_grad` the gradients of the student (its dtype) and of `params` (f32, packed alike). Each parameter's
/// address is the packed buffer's plus its offset ([`CwtPacking`]), as the candle op passes its views of one
/// flat vector: the CWT kernels read the parameters element by element.
fn cwt(
    student: CubeTensor,
    teacher: CubeTensor,
    params: CubeTensor,
    setup: CwtSetup,
    want_grad: bool,
) -> Vec<CubeTensor> {
    let shape = dims(&student);
    let (loss_dtype, dtype) = dtypes(&student);
    let packing = CwtPacking::new(&setup.shapes);
    let outputs = loss_then_grads(want_grad, &[&student, &params]);
    let out = run::<CwtCuda, 3>(setup, [student, teacher, params], outputs, |c| {
        let [student, teacher, params] = c.inputs;
        let at = |base: u64| -> [u64; 4] {
            let mut at = packing.params.iter().map(|(_, range)| base + (range.start * 4) as u64);
            [(); 4].map(|()| at.next().expect("CWT packs four parameters"))
        };
        let [w1, b1, w2, b2] = at(params);
        let [grad_w1, grad_b1, grad_w2, grad_b2] = if want_grad { at(c.outputs[2]) } else { [0; 4] };
        let buffers = CwtRawBuffers {
            student,
            teacher,
            w1,
            b1,
            w2,
            b2,
            loss: c.outputs[0],
            grad_student: out(c.outputs, 1),
            grad_w1,
            grad_b1,
            grad_w2,
            grad_b2,
            upstream: 0,
        };
        // SAFETY: as in `PairOnGpu`; the parameters are f32 of the shapes `setup` says, at their offsets in the
        // packed buffer (the checked function packed them so).
        unsafe { c.loss.launch_raw(c.stream, &shape, dtype, &buffers, GradOptions::OVERWRITE) }
    });
    loss_in(out, loss_dtype)
}
