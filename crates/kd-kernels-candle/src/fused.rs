//! Losses whose candle op is one fused forward + backward call of the crate (SemCKD, PKD, IFVD): candle's
//! custom ops take at most three tensors, and these take more (a list of layers or levels, or labels beside
//! the features with the upstream gradient of the backward pass), so the crate computes the loss and every
//! gradient at once, on the tensors' own storage, and the loss enters candle's graph through [`attach`].
//!
//! [`attach`] chains small [`AttachGrad`] nodes, one per input that tracks a gradient: node `k` passes the
//! running loss scalar through unchanged and, in the backward pass, hands input `k` its precomputed gradient
//! times the upstream gradient. This is the surrogate `loss.detach() + sum_k <g_k, x_k - x_k.detach()>`
//! without its forward work: its value is the loss, and its gradient with respect to `x_k` is exactly
//! `upstream * g_k` (the product rounded once to `x_k`'s dtype), which is all a first-order training step
//! needs. The `g_k` are constants of the graph, so second-order gradients (a gradient of the gradient) are
//! not supported: they come out as if the loss were linear in its inputs.

use candle_core::{CpuStorage, Device, Shape, Storage, Tensor};

use std::marker::PhantomData;
use std::sync::Arc;

use kd_kernels::family::Family;

use super::op::{CpuArg, KdOp, Op};
use super::{candle_error, cpu_slice, HostElem};
use kd_kernels::error::KdError;

/// A fused op's engines, shared by its clones: the family's CPU reference `C` and, with `cuda`, the
/// family's GPU loss object for the last stream used (the core's [`LossCuda`](kd_kernels::cuda::LossCuda) of
/// `F`, kernels loaded and workspace kept between steps).
pub(crate) struct Engines<C, F: Family> {
    pub(crate) cpu: C,
    #[cfg(feature = "cuda")]
    pub(crate) cuda: super::cuda::CudaSlot<kd_kernels::cuda::LossCuda<F>>,
    family: PhantomData<fn() -> F>,
}

impl<C, F: Family> Engines<C, F> {
    /// The engines around a CPU reference that validated its configuration.
    pub(crate) fn new(cpu: kd_kernels::Result<C>) -> candle_core::Result<Arc<Self>> {
        Ok(Arc::new(Engines {
            cpu: cpu.map_err(candle_error)?,
            #[cfg(feature = "cuda")]
            cuda: super::cuda::CudaSlot::new(),
            family: PhantomData,
        }))
    }
}

/// What one fused call gives: the loss and, when asked for, the gradients of the inputs that have one.
pub(crate) struct Outputs<G> {
    pub(crate) loss: Tensor,
    pub(crate) grads: Option<G>,
}

/// `loss` (an f32 scalar computed without a graph) with each `(input, gradient)` attached where the input
/// tracks a gradient; `name` is the attaching nodes' name in candle's graph.
pub(crate) fn attach<'a>(
    loss: Tensor,
    name: &'static str,
    grads: impl IntoIterator<Item = (&'a Tensor, Tensor)>,
) -> candle_core::Result<Tensor> {
    let mut loss = loss;
    for (input, grad) in grads {
        if input.track_op() {
            loss = loss.apply_op2(input, Op(AttachGrad { name, grad }))?;
        }
    }
    Ok(loss)
}

/// The graph node that hands one input its gradient; see the module's documentation.
struct AttachGrad {
    name: &'static str,
    grad: Tensor,
}

impl KdOp<2> for AttachGrad {
    fn name(&self) -> &'static str {
        self.name
    }

    // The running loss is f32 whatever the input's element type `T`.
    fn cpu<T: HostElem>(&self, [(loss, layout), _]: [CpuArg<'_>; 2]) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(cpu_slice::<f32>(loss, layout, self.name)?.to_vec()), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda<T: super::Float>(
        &self,
        [(loss, layout), _]: [super::op::CudaArg<'_>; 2],
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        // The running loss is a fresh one-element f32 storage (the op's own output), so a clone is the scalar.
        Ok((loss.try_clone(layout)?, layout.shape().clone()))
    }

    fn bwd(&self, _: [&Tensor; 2], _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<[Option<Tensor>; 2]> {
        let upstream = grad_res.to_dtype(self.grad.dtype())?;
        Ok([Some(grad_res.clone()), Some(self.grad.broadcast_mul(&upstream)?)])
    }
}

/// The error for tensors on a device the fused ops do not run on.
pub(crate) fn unsupported_device(op: &'static str, device: &Device) -> candle_core::Error {
    candle_error(KdError::Unsupported {
        what: op,
        detail: format!(
            "tensors on {:?}: the op runs on candle's CPU device, and on its CUDA device with the `cuda` feature",
            device.location()
        ),
    })
}

/// The CPU storage of an input (all of a call's inputs are on the first one's device, checked before).
pub(crate) fn cpu_storage<'a>(storage: &'a Storage, op: &'static str) -> candle_core::Result<&'a CpuStorage> {
    match storage {
        Storage::Cpu(s) => Ok(s),
        other => Err(candle_core::Error::DeviceMismatchBinaryOp {
            lhs: candle_core::DeviceLocation::Cpu,
            rhs: other.device().location(),
            op,
        }),
    }
}

/// The CUDA storage of an input.
#[cfg(feature = "cuda")]
pub(crate) fn cuda_storage<'a>(
    storage: &'a Storage,
    op: &'static str,
) -> candle_core::Result<&'a candle_core::CudaStorage> {
    match storage {
        Storage::Cuda(s) => Ok(s),
        other => Err(candle_core::Error::DeviceMismatchBinaryOp {
            lhs: candle_core::DeviceLocation::Cuda { gpu_id: 0 },
            rhs: other.device().location(),
            op,
        }),
    }
}

/// A gradient or loss the kernels wrote, as a candle tensor without a graph.
#[cfg(feature = "cuda")]
pub(crate) fn tensor<T: candle_core::cuda::CudaDType>(
    slice: cudarc::driver::CudaSlice<T>,
    device: &candle_core::CudaDevice,
    dims: Vec<usize>,
) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(candle_core::CudaStorage::wrap_cuda_slice(slice, device.clone())),
        dims,
        candle_core::op::BackpropOp::none(),
        false,
    )
}

/// Every input of a fused op on the first one's device, in candle's words.
pub(crate) fn same_device(first: &Tensor, other: &Tensor, op: &'static str) -> candle_core::Result<()> {
    if other.device().same_device(first.device()) {
        Ok(())
    } else {
        Err(candle_core::Error::DeviceMismatchBinaryOp {
            lhs: first.device().location(),
            rhs: other.device().location(),
            op,
        })
    }
}

/// `dtype` as one the op reads on `device` (f64 on the CPU only), in the crate's words where it is not.
pub(crate) fn check_float(device: &Device, dtype: candle_core::DType, op: &'static str) -> candle_core::Result<()> {
    if device.is_cpu() {
        super::dispatch_host(dtype, op, super::NoJob)
    } else {
        super::dispatch(dtype, op, super::NoJob)
    }
}
