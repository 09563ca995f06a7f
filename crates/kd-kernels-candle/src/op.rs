//! candle's custom-op frame, written once for every op of the crate: candle's `CustomOp2` and `CustomOp3`
//! spell out each input as a storage and a layout and leave the element type to a run-time dtype, so an op
//! here implements [`KdOp`] (its inputs as an array, its bodies generic over the element type) and [`Op`]
//! supplies candle's signatures and the dispatch from the first input's dtype ([`dispatch_host`] on the CPU,
//! where `f64` is taken too; [`dispatch`](super::dispatch) on CUDA).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Shape, Tensor};

use super::{dispatch_host, HostElem, PerHostDtype};

/// One input on candle's CPU device.
pub(crate) type CpuArg<'a> = (&'a CpuStorage, &'a Layout);

/// One input on candle's CUDA device.
#[cfg(feature = "cuda")]
pub(crate) type CudaArg<'a> = (&'a candle_core::CudaStorage, &'a Layout);

/// An op of `N` tensors: its name in candle's graph, its bodies for an element type `T` (the first input's)
/// and, where it has one, its backward pass.
pub(crate) trait KdOp<const N: usize>: Send + Sync {
    /// The op's name in candle's graph (and in its errors).
    fn name(&self) -> &'static str;

    /// The op on candle's CPU device, `T` the first input's element type.
    fn cpu<T: HostElem>(&self, inputs: [CpuArg<'_>; N]) -> candle_core::Result<(CpuStorage, Shape)>;

    /// The op on candle's CUDA device, `T` the first input's element type.
    #[cfg(feature = "cuda")]
    fn cuda<T: super::Float>(&self, inputs: [CudaArg<'_>; N])
        -> candle_core::Result<(candle_core::CudaStorage, Shape)>;

    /// The gradients of the inputs from the op's output `res` and the upstream gradient `grad_res`; none by
    /// default (candle's default: an op applied without a backward pass).
    fn bwd(&self, inputs: [&Tensor; N], res: &Tensor, grad_res: &Tensor) -> candle_core::Result<[Option<Tensor>; N]> {
        let _ = (inputs, res, grad_res);
        Err(candle_core::Error::BackwardNotSupported { op: self.name() })
    }
}

/// The candle op of a [`KdOp`].
pub(crate) struct Op<K>(pub(crate) K);

/// The CPU body of `op` for the element type the dispatch picks.
struct OnCpu<'a, K, const N: usize> {
    op: &'a K,
    inputs: [CpuArg<'a>; N],
}

impl<K: KdOp<N>, const N: usize> PerHostDtype for OnCpu<'_, K, N> {
    type Out = (CpuStorage, Shape);
    fn run<T: HostElem>(self) -> candle_core::Result<Self::Out> {
        self.op.cpu::<T>(self.inputs)
    }
}

/// The CUDA body of `op` for the element type the dispatch picks.
#[cfg(feature = "cuda")]
struct OnCuda<'a, K, const N: usize> {
    op: &'a K,
    inputs: [CudaArg<'a>; N],
}

#[cfg(feature = "cuda")]
impl<K: KdOp<N>, const N: usize> super::PerDtype for OnCuda<'_, K, N> {
    type Out = (candle_core::CudaStorage, Shape);
    fn run<T: super::Float>(self) -> candle_core::Result<Self::Out> {
        self.op.cuda::<T>(self.inputs)
    }
}

/// `op` on the CPU, for the element type of its first input.
fn on_cpu<K: KdOp<N>, const N: usize>(op: &K, inputs: [CpuArg<'_>; N]) -> candle_core::Result<(CpuStorage, Shape)> {
    dispatch_host(inputs[0].0.dtype(), op.name(), OnCpu { op, inputs })
}

/// `op` on CUDA, for the element type of its first input.
#[cfg(feature = "cuda")]
fn on_cuda<K: KdOp<N>, const N: usize>(
    op: &K,
    inputs: [CudaArg<'_>; N],
) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
    super::dispatch(inputs[0].0.dtype(), op.name(), OnCuda { op, inputs })
}

/// candle's `CustomOp2` or `CustomOp3` for [`Op`], written once for both arities: each input's storage and
/// layout `(s, l)` and its tensor `a` in the backward pass.
macro_rules! custom_op {
    ($trait:ident<$n:literal>: $(($s:ident, $l:ident, $a:ident)),+) => {
        impl<K: KdOp<$n>> candle_core::$trait for Op<K> {
            fn name(&self) -> &'static str {
                self.0.name()
            }

            fn cpu_fwd(&self, $($s: &CpuStorage, $l: &Layout),+) -> candle_core::Result<(CpuStorage, Shape)> {
                on_cpu(&self.0, [$(($s, $l)),+])
            }

            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                $($s: &candle_core::CudaStorage, $l: &Layout),+
            ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
                on_cuda(&self.0, [$(($s, $l)),+])
            }

            fn bwd(
                &self,
                $($a: &Tensor,)+
                res: &Tensor,
                grad_res: &Tensor,
            ) -> candle_core::Result<($(custom_op!(@grad $a)),+)> {
                let [$($a),+] = self.0.bwd([$($a),+], res, grad_res)?;
                Ok(($($a),+))
            }
        }
    };
    (@grad $a:ident) => { Option<Tensor> };
}

custom_op!(CustomOp2<2>: (s1, l1, a1), (s2, l2, a2));
custom_op!(CustomOp3<3>: (s1, l1, a1), (s2, l2, a2), (s3, l3, a3));
