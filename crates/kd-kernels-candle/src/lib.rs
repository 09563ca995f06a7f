//! The losses of [kd-kernels](kd_kernels) as [candle](https://crates.io/crates/candle-core) ops with forward
//! and backward, so that `loss.backward()` in a candle graph reaches the student's logits (and, for CWT, the
//! MLP's parameters; for SemCKD, the regressor outputs and the embeddings: [`Semckd`]). The ops: [`Cwd`],
//! [`PixelKd`], [`Icsd`], [`Aicsd`], [`Dist`], [`Skd`] and [`Cirkd`] (whose teacher may have other channels), [`Cwt`], [`Semckd`], [`Pkd`] (a list of levels) and [`Ifvd`]
//! (features and integer labels).
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use kd_kernels_candle::Cwd;
//! use kd_kernels::cwd::CwdConfig;
//!
//! let student = Var::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu)?;
//! let teacher = Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu)?;
//! let cwd = Cwd::new(CwdConfig::default())?;              // once
//! let loss = cwd.loss(student.as_tensor(), &teacher)?;    // every step: a candle scalar (f32)
//! let grads = loss.backward()?;                           // reaches the student
//! assert!(grads.get(student.as_tensor()).is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! On candle's CPU device an op runs the crate's f64 CPU reference; on its CUDA device (feature
//! `cuda`) it runs the kernels on candle's own stream, on candle's `CudaSlice`s, with no host
//! synchronisation. Inputs are `f32`, `f16` or `bf16`, and on the CPU also `f64` (the reference reads it
//! without a rounding; the kernels refuse it); the loss is an `f32` scalar whatever the input dtype (the
//! crate's convention: the loss is summed in fp32; the upstream gradient is read as f32 too), and the
//! gradients have the input's dtype. Strided inputs (a transpose, a
//! permutation) are made contiguous by candle first (a differentiable copy); inputs that start at an offset
//! in their storage (a `narrow` along the batch) are read in place.
//!
//! Errors are candle errors: a wrong dtype is `candle_core::Error::UnsupportedDTypeForOp`, every check of
//! the crate (shapes, configuration, device) is a wrapped [`KdError`] whose message says what to fix.
//!
//! Each op is the forward (the loss) plus a gradient op that the backward pass applies to
//! `(student, teacher, d total / d loss)`: the kernels' `backward` with the upstream gradient read on the
//! device, so a training step queues two launches that each read the logits once (as the unfused
//! forward + backward of the typed API) and nothing waits for the host.

/// A `(student, teacher)` family's whole candle adapter: the public op type (`new`, `config`, `loss`) and
/// its [`PairLoss`] impl, for a CPU reference whose `forward` gives the loss (an `f64`, or an output with a
/// `loss`; see [`ForwardLoss`]) and whose `backward` gives its gradients (see [`PairGrads`]'s `From` impls),
/// and a GPU type with `new(stream, config)`, `forward(shape, s, t, loss)` and `backward(shape, s, t,
/// upstream, grad_student)`, plus `grad_teacher` last when `teacher_grad_if` names the configuration's flag.
macro_rules! pair_loss_adapter {
    (
        $(#[$doc:meta])*
        $name:ident {
            cpu: $cpu:ty,
            config: $config:ty,
            cuda: $cuda:ty,
            op: $op:literal
            $(, teacher_grad_if: $flag:ident)? $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            inner: $crate::PairLossFn<$cpu>,
        }

        impl $name {
            /// Validates `config`.
            pub fn new(config: $config) -> candle_core::Result<Self> {
                let cpu = <$cpu>::new(config).map_err($crate::candle_error)?;
                Ok($name { inner: $crate::PairLossFn::new(cpu) })
            }

            /// The configuration.
            pub fn config(&self) -> &$config {
                self.inner.family().config()
            }

            /// The loss of `student` against `teacher` (`[N, C, H, W]`, one dtype, one device).
            pub fn loss(
                &self,
                student: &candle_core::Tensor,
                teacher: &candle_core::Tensor,
            ) -> candle_core::Result<candle_core::Tensor> {
                self.inner.loss(student, teacher)
            }
        }

        impl $crate::PairLoss for $cpu {
            const NAME: &'static str = $op;
            const GRAD_NAME: &'static str = concat!($op, "-grad");

            fn teacher_grad(&self) -> bool {
                false $(|| self.config().$flag)?
            }

            fn cpu_loss<T: kd_kernels::dtype::HostFloat>(
                &self,
                student: ndarray::ArrayView4<'_, T>,
                teacher: ndarray::ArrayView4<'_, T>,
            ) -> kd_kernels::Result<f64> {
                self.forward(student, teacher).map($crate::ForwardLoss::loss_value)
            }

            fn cpu_grads<T: kd_kernels::dtype::HostFloat>(
                &self,
                student: ndarray::ArrayView4<'_, T>,
                teacher: ndarray::ArrayView4<'_, T>,
                upstream: f64,
            ) -> kd_kernels::Result<$crate::PairGrads> {
                self.backward(student, teacher, upstream).map($crate::PairGrads::from)
            }

            #[cfg(feature = "cuda")]
            type Cuda = $cuda;

            #[cfg(feature = "cuda")]
            fn cuda_new(&self, stream: std::sync::Arc<cudarc::driver::CudaStream>) -> kd_kernels::Result<$cuda> {
                <$cuda>::new(stream, *self.config())
            }

            #[cfg(feature = "cuda")]
            fn cuda_forward<T: kd_kernels::dtype::KdFloat>(
                cuda: &mut $cuda,
                [shape, _]: [&[usize]; 2],
                student: &cudarc::driver::CudaView<'_, T>,
                teacher: &cudarc::driver::CudaView<'_, T>,
                loss: &mut cudarc::driver::CudaSlice<f32>,
            ) -> kd_kernels::Result<()> {
                cuda.forward(shape, student, teacher, loss)
            }

            #[cfg(feature = "cuda")]
            fn cuda_backward<T: kd_kernels::dtype::KdFloat>(
                cuda: &mut $cuda,
                [shape, _]: [&[usize]; 2],
                student: &cudarc::driver::CudaView<'_, T>,
                teacher: &cudarc::driver::CudaView<'_, T>,
                upstream: &cudarc::driver::CudaView<'_, f32>,
                grad_student: &mut cudarc::driver::CudaViewMut<'_, T>,
                grad_teacher: Option<&mut cudarc::driver::CudaViewMut<'_, T>>,
            ) -> kd_kernels::Result<()> {
                $crate::pair_loss_adapter!(
                    @backward [$($flag)?] cuda, shape, student, teacher, upstream, grad_student, grad_teacher
                )
            }
        }
    };
    // The family's GPU backward writes the student's gradient only (the op never asks it for the teacher's).
    (@backward [] $cuda:ident, $shape:ident, $s:ident, $t:ident, $up:ident, $gs:ident, $gt:ident) => {{
        let _ = $gt;
        $cuda.backward($shape, $s, $t, $up, $gs)
    }};
    // It also writes the teacher's when the configuration asks for it.
    (@backward [$flag:ident] $cuda:ident, $shape:ident, $s:ident, $t:ident, $up:ident, $gs:ident, $gt:ident) => {{
        let buffers = kd_kernels::family::PairBuffers {
            upstream: Some($up),
            grad_student: Some($gs),
            grad_teacher: $gt.map(|g| g as &mut dyn cudarc::driver::DevicePtrMut<T>),
            ..kd_kernels::family::PairBuffers::new($s, $t)
        };
        $cuda.call($shape, buffers).map(drop)
    }};
}
pub(crate) use pair_loss_adapter;

mod cwd;
mod cwt;
mod fused;
mod icsd;
mod ifvd;
mod op;
mod pixel_kd;
mod pkd;
mod semckd;
mod student_grad;

pub use cwd::Cwd;
pub use cwt::Cwt;
pub use icsd::{Aicsd, Icsd};
pub use ifvd::Ifvd;
pub use pixel_kd::PixelKd;
pub use pkd::Pkd;
pub use semckd::{Semckd, SemckdTensors};
pub use student_grad::{CandleOp, StudentGradLoss};

/// DIST, segmentation form ([`kd_kernels::dist`]), as a candle op: `loss(student, teacher)` is an f32 scalar
/// whose backward pass writes d loss / d student.
pub type Dist = StudentGradLoss<kd_kernels::dist::Dist>;
/// SKD's pair-wise similarity loss ([`kd_kernels::skd`]) as a candle op: `loss(student, teacher)` (the teacher
/// may have another channel count) is an f32 scalar whose backward pass writes d loss / d student.
pub type Skd = StudentGradLoss<kd_kernels::skd::Skd>;
/// CIRKD's mini-batch pixel-relation loss ([`kd_kernels::cirkd`]) as a candle op: `loss(student, teacher)` (the
/// teacher may have another channel count) is an f32 scalar whose backward pass writes d loss / d student.
pub type Cirkd = StudentGradLoss<kd_kernels::cirkd::Cirkd>;

use std::sync::Arc;

use candle_core::{CpuStorage, DType as CandleDType, Layout, Shape, Tensor};
use ndarray::{Array4, ArrayView4};

use kd_kernels::dtype::{HostFloat, KdFloat};
use kd_kernels::error::KdError;
use op::{CpuArg, KdOp, Op};

/// A crate error as a candle error (its message is the crate's, which says what to fix).
pub(crate) fn candle_error(e: KdError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// Element types the ops take: the crate's input types, as candle knows them.
#[cfg(not(feature = "cuda"))]
pub(crate) trait Float: KdFloat + candle_core::WithDType {}
/// Element types the ops take: the crate's input types, as candle knows them.
#[cfg(feature = "cuda")]
pub(crate) trait Float: KdFloat + candle_core::WithDType + candle_core::cuda::CudaDType {}
impl Float for f32 {}
impl Float for half::f16 {}
impl Float for half::bf16 {}

/// Code generic over the element type, run for a candle dtype known only at run time.
pub(crate) trait PerDtype {
    type Out;
    fn run<T: Float>(self) -> candle_core::Result<Self::Out>;
}

/// Runs `job` for the element type of `dtype` (the kernels' types); `f64` and the integer types are refused.
pub(crate) fn dispatch<P: PerDtype>(dtype: CandleDType, op: &'static str, job: P) -> candle_core::Result<P::Out> {
    match dtype {
        CandleDType::F32 => job.run::<f32>(),
        CandleDType::F16 => job.run::<half::f16>(),
        CandleDType::BF16 => job.run::<half::bf16>(),
        other => Err(candle_core::Error::UnsupportedDTypeForOp(other, op)),
    }
}

/// Element types candle's CPU device runs through the crate's f64 CPU reference: the kernels' types and
/// `f64` (the reference reads any [`HostFloat`]).
pub(crate) trait HostElem: HostFloat + candle_core::WithDType {}
impl HostElem for f64 {}
impl HostElem for f32 {}
impl HostElem for half::f16 {}
impl HostElem for half::bf16 {}

/// [`PerDtype`] for candle's CPU device, where `f64` is taken too.
pub(crate) trait PerHostDtype {
    type Out;
    fn run<T: HostElem>(self) -> candle_core::Result<Self::Out>;
}

/// Runs `job` for the element type of `dtype` on the CPU; the integer types are refused.
pub(crate) fn dispatch_host<P: PerHostDtype>(
    dtype: CandleDType,
    op: &'static str,
    job: P,
) -> candle_core::Result<P::Out> {
    match dtype {
        CandleDType::F64 => job.run::<f64>(),
        CandleDType::F32 => job.run::<f32>(),
        CandleDType::F16 => job.run::<half::f16>(),
        CandleDType::BF16 => job.run::<half::bf16>(),
        other => Err(candle_core::Error::UnsupportedDTypeForOp(other, op)),
    }
}

/// The `(start, end)` of a layout's elements in its storage; a strided layout is refused (the public entry
/// points make their inputs contiguous first, so this only fires on an op applied by hand).
pub(crate) fn contiguous_range(layout: &Layout, op: &'static str) -> candle_core::Result<(usize, usize)> {
    layout.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op })
}

/// A CPU tensor as an ndarray view of rank 4 (the layout's offset honoured).
pub(crate) fn cpu_view4<'a, T: HostElem>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &'static str,
    op: &'static str,
) -> candle_core::Result<ArrayView4<'a, T>> {
    let dims = nchw(layout.dims(), what)?;
    let (start, end) = contiguous_range(layout, op)?;
    let data = &storage.as_slice::<T>()?[start..end];
    ArrayView4::from_shape(dims, data).map_err(|e| candle_error(KdError::TooLarge { what, detail: e.to_string() }))
}

/// A CPU tensor as a flat slice (the layout's offset honoured).
pub(crate) fn cpu_slice<'a, T: candle_core::WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [T]> {
    let (start, end) = contiguous_range(layout, op)?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// The upstream gradient d total / d loss, the one element of `values`.
pub(crate) fn upstream_scalar(values: &[f32], op: &'static str) -> candle_core::Result<f64> {
    match values {
        [v] => Ok(f64::from(*v)),
        _ => Err(candle_error(KdError::ShapeMismatch { what: op, expected: vec![1], got: vec![values.len()] })),
    }
}

/// `dims` as `[N, C, H, W]`, or the crate's rank error.
pub(crate) fn nchw(dims: &[usize], what: &'static str) -> candle_core::Result<[usize; 4]> {
    <[usize; 4]>::try_from(dims).map_err(|_| candle_error(KdError::WrongRank { what, expected: 4, got: dims.len() }))
}

/// The loss as a candle CPU scalar: `f32`, shape `[]`.
pub(crate) fn cpu_scalar(loss: f64) -> (CpuStorage, Shape) {
    (CpuStorage::F32(vec![loss as f32]), Shape::from(()))
}

/// An f64 gradient rounded to `T`, as candle CPU storage.
pub(crate) fn cpu_grad<T: HostElem>(grad: &Array4<f64>) -> CpuStorage {
    T::to_cpu_storage_owned(grad.iter().map(|&g| T::from_f64(g)).collect())
}

/// The gradients of a `(student, teacher)` loss; the teacher's only when the configuration asks for it.
pub(crate) struct PairGrads {
    pub(crate) student: Array4<f64>,
    pub(crate) teacher: Option<Array4<f64>>,
}

impl From<kd_kernels::cpu::CpuOutput> for PairGrads {
    fn from(out: kd_kernels::cpu::CpuOutput) -> Self {
        PairGrads { student: out.grad_student, teacher: out.grad_teacher }
    }
}

impl From<kd_kernels::icsd::IcsdCpuOutput> for PairGrads {
    fn from(out: kd_kernels::icsd::IcsdCpuOutput) -> Self {
        PairGrads { student: out.grad_student, teacher: None }
    }
}

/// What a CPU reference's `forward` returns, reduced to the loss.
pub(crate) trait ForwardLoss {
    fn loss_value(self) -> f64;
}

impl ForwardLoss for f64 {
    fn loss_value(self) -> f64 {
        self
    }
}

impl ForwardLoss for kd_kernels::icsd::IcsdCpuOutput {
    fn loss_value(self) -> f64 {
        self.loss
    }
}

/// One loss family of the form `loss(student, teacher)`, both `[N, C, H, W]` of one dtype: what its
/// candle ops need. A family's adapter is one [`pair_loss_adapter!`] call, which writes this impl and the
/// public newtype over [`PairLossFn`].
pub(crate) trait PairLoss: Send + Sync + 'static {
    /// The forward op's name in candle's graph.
    const NAME: &'static str;
    /// The gradient op's name.
    const GRAD_NAME: &'static str;
    /// Whether the configuration asks for the teacher's gradient too.
    fn teacher_grad(&self) -> bool {
        false
    }
    /// The loss on the CPU reference.
    fn cpu_loss<T: HostFloat>(&self, student: ArrayView4<'_, T>, teacher: ArrayView4<'_, T>)
        -> kd_kernels::Result<f64>;
    /// The gradients times `upstream` on the CPU reference.
    fn cpu_grads<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        upstream: f64,
    ) -> kd_kernels::Result<PairGrads>;

    /// The family's GPU loss object, created once per candle stream.
    #[cfg(feature = "cuda")]
    type Cuda: Send + 'static;
    /// Creates the GPU loss object on `stream`.
    #[cfg(feature = "cuda")]
    fn cuda_new(&self, stream: Arc<cudarc::driver::CudaStream>) -> kd_kernels::Result<Self::Cuda>;
    /// The loss into `loss[0]`.
    #[cfg(feature = "cuda")]
    fn cuda_forward<T: KdFloat>(
        cuda: &mut Self::Cuda,
        dims: [&[usize]; 2],
        student: &cudarc::driver::CudaView<'_, T>,
        teacher: &cudarc::driver::CudaView<'_, T>,
        loss: &mut cudarc::driver::CudaSlice<f32>,
    ) -> kd_kernels::Result<()>;
    /// The gradients times the device scalar `upstream[0]`.
    #[cfg(feature = "cuda")]
    fn cuda_backward<T: KdFloat>(
        cuda: &mut Self::Cuda,
        dims: [&[usize]; 2],
        student: &cudarc::driver::CudaView<'_, T>,
        teacher: &cudarc::driver::CudaView<'_, T>,
        upstream: &cudarc::driver::CudaView<'_, f32>,
        grad_student: &mut cudarc::driver::CudaViewMut<'_, T>,
        grad_teacher: Option<&mut cudarc::driver::CudaViewMut<'_, T>>,
    ) -> kd_kernels::Result<()>;
}

/// A `(student, teacher)` loss with its candle ops: the configuration plus, with `cuda`, the GPU loss
/// object of the last stream used (kernels loaded and workspace kept between steps). Cheap to clone; clones
/// share the GPU object.
pub(crate) struct PairLossFn<L: PairLoss> {
    shared: Arc<Shared<L>>,
}

impl<L: PairLoss> Clone for PairLossFn<L> {
    fn clone(&self) -> Self {
        PairLossFn { shared: self.shared.clone() }
    }
}

pub(crate) struct Shared<L: PairLoss> {
    loss: L,
    #[cfg(feature = "cuda")]
    cuda: cuda::CudaSlot<L::Cuda>,
}

impl<L: PairLoss> PairLossFn<L> {
    pub(crate) fn new(loss: L) -> Self {
        PairLossFn {
            shared: Arc::new(Shared {
                loss,
                #[cfg(feature = "cuda")]
                cuda: cuda::CudaSlot::new(),
            }),
        }
    }

    pub(crate) fn family(&self) -> &L {
        &self.shared.loss
    }

    /// The loss of `student` against `teacher` as a candle scalar (f32) with a backward pass.
    pub(crate) fn loss(&self, student: &Tensor, teacher: &Tensor) -> candle_core::Result<Tensor> {
        check_pair_tensors(student, teacher, L::NAME)?;
        let student = student.contiguous()?;
        let teacher = teacher.contiguous()?;
        student.apply_op2(&teacher, Op(ForwardOp { shared: self.shared.clone() }))
    }
}

/// Checks what candle's op machinery would not say in the crate's words: dtypes and devices.
pub(crate) fn check_pair_tensors(student: &Tensor, teacher: &Tensor, op: &'static str) -> candle_core::Result<()> {
    if student.device().is_cpu() {
        dispatch_host(student.dtype(), op, NoJob)?;
    } else {
        dispatch(student.dtype(), op, NoJob)?;
    }
    if teacher.dtype() != student.dtype() {
        return Err(candle_error(KdError::DTypeMismatch {
            what: "teacher".into(),
            expected: format!("{:?} (the student's)", student.dtype()),
            got: format!("{:?}", teacher.dtype()),
        }));
    }
    if !student.device().same_device(teacher.device()) {
        return Err(candle_core::Error::DeviceMismatchBinaryOp {
            lhs: student.device().location(),
            rhs: teacher.device().location(),
            op,
        });
    }
    Ok(())
}

struct NoJob;
impl PerDtype for NoJob {
    type Out = ();
    fn run<T: Float>(self) -> candle_core::Result<()> {
        Ok(())
    }
}
impl PerHostDtype for NoJob {
    type Out = ();
    fn run<T: HostElem>(self) -> candle_core::Result<()> {
        Ok(())
    }
}

struct ForwardOp<L: PairLoss> {
    shared: Arc<Shared<L>>,
}

/// The gradient op: `(student, teacher, [d total / d loss])` to the student's gradient stacked with the
/// teacher's when the configuration asks for it (`[1 or 2, N, C, H, W]`, the input dtype).
struct GradOp<L: PairLoss> {
    shared: Arc<Shared<L>>,
}

impl<L: PairLoss> KdOp<2> for ForwardOp<L> {
    fn name(&self) -> &'static str {
        L::NAME
    }

    fn cpu<T: HostElem>(&self, [s, t]: [CpuArg<'_>; 2]) -> candle_core::Result<(CpuStorage, Shape)> {
        let student = cpu_view4::<T>(s.0, s.1, "student", L::NAME)?;
        let teacher = cpu_view4::<T>(t.0, t.1, "teacher", L::NAME)?;
        let loss = self.shared.loss.cpu_loss(student, teacher).map_err(candle_error)?;
        Ok(cpu_scalar(loss))
    }

    #[cfg(feature = "cuda")]
    fn cuda<T: Float>(&self, [s, t]: [op::CudaArg<'_>; 2]) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward::<L, T>(&self.shared, s, t)
    }

    fn bwd(
        &self,
        [student, teacher]: [&Tensor; 2],
        _loss: &Tensor,
        grad_loss: &Tensor,
    ) -> candle_core::Result<[Option<Tensor>; 2]> {
        let upstream = grad_loss.to_dtype(CandleDType::F32)?.reshape(1)?;
        let grads = student.apply_op3_no_bwd(teacher, &upstream, &Op(GradOp { shared: self.shared.clone() }))?;
        let grad_student = grads.get(0)?;
        let grad_teacher = if self.shared.loss.teacher_grad() { Some(grads.get(1)?) } else { None };
        Ok([Some(grad_student), grad_teacher])
    }
}

impl<L: PairLoss> KdOp<3> for GradOp<L> {
    fn name(&self) -> &'static str {
        L::GRAD_NAME
    }

    fn cpu<T: HostElem>(&self, [s, t, u]: [CpuArg<'_>; 3]) -> candle_core::Result<(CpuStorage, Shape)> {
        let upstream = upstream_scalar(cpu_slice::<f32>(u.0, u.1, L::GRAD_NAME)?, L::GRAD_NAME)?;
        let student = cpu_view4::<T>(s.0, s.1, "student", L::GRAD_NAME)?;
        let teacher = cpu_view4::<T>(t.0, t.1, "teacher", L::GRAD_NAME)?;
        let dims = student.dim();
        let grads = self.shared.loss.cpu_grads(student, teacher, upstream).map_err(candle_error)?;
        let mut out: Vec<T> = grads.student.iter().map(|&g| T::from_f64(g)).collect();
        let mut k = 1;
        if let Some(teacher) = grads.teacher {
            out.extend(teacher.iter().map(|&g| T::from_f64(g)));
            k = 2;
        }
        Ok((T::to_cpu_storage_owned(out), Shape::from((k, dims.0, dims.1, dims.2, dims.3))))
    }

    #[cfg(feature = "cuda")]
    fn cuda<T: Float>(
        &self,
        [s, t, u]: [op::CudaArg<'_>; 3],
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::backward::<L, T>(&self.shared, s, t, u)
    }
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    //! The CUDA side: candle's `CudaSlice`s and stream handed to the typed API.

    use std::sync::Arc;

    use std::sync::Mutex;

    use candle_core::backend::BackendStorage;
    use candle_core::{CudaStorage, Layout, Shape};
    use cudarc::driver::{CudaSlice, CudaStream, CudaView};

    use super::{candle_error, contiguous_range, nchw, Float, PairLoss, Shared};
    use kd_kernels::error::KdError;

    /// A family's GPU loss object for the candle stream it was last used on (kernels loaded, workspace
    /// kept between steps); replaced when the tensors come from another stream.
    pub(crate) struct CudaSlot<C> {
        slot: Mutex<Option<(Arc<CudaStream>, C)>>,
    }

    impl<C> CudaSlot<C> {
        pub(crate) fn new() -> Self {
            CudaSlot { slot: Mutex::new(None) }
        }

        /// Runs `f` on the object for `stream`, creating it with `create` on first use.
        pub(crate) fn with<R>(
            &self,
            stream: &Arc<CudaStream>,
            create: impl FnOnce(Arc<CudaStream>) -> kd_kernels::Result<C>,
            f: impl FnOnce(&mut C) -> kd_kernels::Result<R>,
        ) -> candle_core::Result<R> {
            let mut slot = self.slot.lock().map_err(|_| {
                candle_error(KdError::Unsupported {
                    what: "candle op",
                    detail: "a previous call panicked while holding this loss's GPU state; create the loss again"
                        .into(),
                })
            })?;
            match &mut *slot {
                Some((s, cuda)) if Arc::ptr_eq(s, stream) => f(cuda).map_err(candle_error),
                _ => {
                    let (_, cuda) = slot.insert((stream.clone(), create(stream.clone()).map_err(candle_error)?));
                    f(cuda).map_err(candle_error)
                }
            }
        }
    }

    /// A candle CUDA tensor as a view of its elements (the layout's offset honoured).
    pub(crate) fn view<'a, T: candle_core::cuda::CudaDType>(
        storage: &'a CudaStorage,
        layout: &Layout,
        op: &'static str,
    ) -> candle_core::Result<CudaView<'a, T>> {
        let (start, end) = contiguous_range(layout, op)?;
        Ok(storage.as_cuda_slice::<T>()?.slice(start..end))
    }

    pub(crate) fn forward<L: PairLoss, T: Float>(
        shared: &Shared<L>,
        s: (&CudaStorage, &Layout),
        t: (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dims = nchw(s.1.dims(), "student")?;
        let device = s.0.device().clone();
        let stream = device.cuda_stream();
        let student = view::<T>(s.0, s.1, L::NAME)?;
        let teacher = view::<T>(t.0, t.1, L::NAME)?;
        let mut loss: CudaSlice<f32> = device.alloc_zeros(1)?;
        shared.cuda.with(
            &stream,
            |s| shared.loss.cuda_new(s),
            |cuda| L::cuda_forward(cuda, [&dims, t.1.dims()], &student, &teacher, &mut loss),
        )?;
        Ok((CudaStorage::wrap_cuda_slice(loss, device), Shape::from(())))
    }

    pub(crate) fn backward<L: PairLoss, T: Float>(
        shared: &Shared<L>,
        s: (&CudaStorage, &Layout),
        t: (&CudaStorage, &Layout),
        u: (&CudaStorage, &Layout),
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dims = nchw(s.1.dims(), "student")?;
        let numel: usize = dims.iter().product();
        let device = s.0.device().clone();
        let stream = device.cuda_stream();
        let student = view::<T>(s.0, s.1, L::GRAD_NAME)?;
        let teacher = view::<T>(t.0, t.1, L::GRAD_NAME)?;
        let upstream = view::<f32>(u.0, u.1, L::GRAD_NAME)?;
        let k = if shared.loss.teacher_grad() { 2 } else { 1 };
        // SAFETY: every element is written by the kernels before the tensor is read (the gradients are
        // written in full, not accumulated).
        let mut grads: CudaSlice<T> = unsafe { device.alloc::<T>(k * numel)? };
        {
            let (mut gs, mut rest) = grads.split_at_mut(numel);
            let gt = (k == 2).then_some(&mut rest);
            shared.cuda.with(
                &stream,
                |s| shared.loss.cuda_new(s),
                |cuda| L::cuda_backward(cuda, [&dims, t.1.dims()], &student, &teacher, &upstream, &mut gs, gt),
            )?;
        }
        Ok((CudaStorage::wrap_cuda_slice(grads, device), Shape::from((k, dims[0], dims[1], dims[2], dims[3]))))
    }
}
