//! The candle op of every (student, teacher) family whose only gradient is the student's (DIST, SKD, CIRKD),
//! written once over the family contract ([`StudentGradFamily`]): the CPU reference on candle's CPU device,
//! the family's `LossCuda` on its CUDA device. The teacher may have another channel count than the student
//! where the family allows it (SKD, CIRKD); the family checks the shapes.

use ndarray::ArrayView4;

use kd_kernels::cpu::PairReference;
use kd_kernels::dtype::HostFloat;
use kd_kernels::family::StudentGradFamily;

use super::{candle_error, PairGrads, PairLoss, PairLossFn};

/// A [`StudentGradFamily`] with its op names in candle's graph (candle wants `&'static str`s).
pub trait CandleOp: StudentGradFamily {
    /// The forward op's name.
    const OP: &'static str;
    /// The gradient op's name.
    const GRAD_OP: &'static str;
}

macro_rules! candle_ops {
    ($($family:ty => $op:literal),* $(,)?) => {$(
        impl CandleOp for $family {
            const OP: &'static str = $op;
            const GRAD_OP: &'static str = concat!($op, "-grad");
        }
    )*};
}

candle_ops! {
    kd_kernels::dist::Dist => "kd-kernels-dist",
    kd_kernels::skd::Skd => "kd-kernels-skd",
    kd_kernels::cirkd::Cirkd => "kd-kernels-cirkd",
}

/// A (student, teacher) loss of family `F` as a candle op: `loss(student, teacher)` is an f32 scalar whose
/// backward pass writes d loss / d student (in the student's dtype). Cheap to clone; clones share the GPU
/// loss object.
pub struct StudentGradLoss<F: CandleOp> {
    inner: PairLossFn<FamilyLoss<F>>,
}

impl<F: CandleOp> Clone for StudentGradLoss<F> {
    fn clone(&self) -> Self {
        StudentGradLoss { inner: self.inner.clone() }
    }
}

impl<F: CandleOp> StudentGradLoss<F> {
    /// Validates `config`.
    pub fn new(config: F::Config) -> candle_core::Result<Self> {
        let cpu = F::Reference::new(config.clone()).map_err(candle_error)?;
        Ok(StudentGradLoss { inner: PairLossFn::new(FamilyLoss { config, cpu }) })
    }

    /// The configuration.
    pub fn config(&self) -> &F::Config {
        &self.inner.family().config
    }

    /// The loss of `student` `[N, Cs, H, W]` against `teacher` `[N, Ct, H, W]` (one dtype, one device; `Ct =
    /// Cs` for DIST).
    pub fn loss(
        &self,
        student: &candle_core::Tensor,
        teacher: &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor> {
        self.inner.loss(student, teacher)
    }
}

/// The family's configuration and CPU reference.
pub(crate) struct FamilyLoss<F: CandleOp> {
    config: F::Config,
    cpu: F::Reference,
}

impl<F: CandleOp> PairLoss for FamilyLoss<F> {
    const NAME: &'static str = F::OP;
    const GRAD_NAME: &'static str = F::GRAD_OP;

    fn cpu_loss<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
    ) -> kd_kernels::Result<f64> {
        self.cpu.loss(student, teacher)
    }

    fn cpu_grads<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        upstream: f64,
    ) -> kd_kernels::Result<PairGrads> {
        let out = self.cpu.gradients(student, teacher, upstream)?;
        Ok(PairGrads { student: out.grad_student, teacher: None })
    }

    #[cfg(feature = "cuda")]
    type Cuda = kd_kernels::cuda::LossCuda<F>;

    #[cfg(feature = "cuda")]
    fn cuda_new(&self, stream: std::sync::Arc<cudarc::driver::CudaStream>) -> kd_kernels::Result<Self::Cuda> {
        kd_kernels::cuda::LossCuda::new(stream, self.config.clone())
    }

    #[cfg(feature = "cuda")]
    fn cuda_forward<T: kd_kernels::dtype::KdFloat>(
        cuda: &mut Self::Cuda,
        dims: [&[usize]; 2],
        student: &cudarc::driver::CudaView<'_, T>,
        teacher: &cudarc::driver::CudaView<'_, T>,
        loss: &mut cudarc::driver::CudaSlice<f32>,
    ) -> kd_kernels::Result<()> {
        F::with_shape(dims[0], dims[1], |shape| cuda.forward(shape, student, teacher, loss))
    }

    #[cfg(feature = "cuda")]
    fn cuda_backward<T: kd_kernels::dtype::KdFloat>(
        cuda: &mut Self::Cuda,
        dims: [&[usize]; 2],
        student: &cudarc::driver::CudaView<'_, T>,
        teacher: &cudarc::driver::CudaView<'_, T>,
        upstream: &cudarc::driver::CudaView<'_, f32>,
        grad_student: &mut cudarc::driver::CudaViewMut<'_, T>,
        _grad_teacher: Option<&mut cudarc::driver::CudaViewMut<'_, T>>,
    ) -> kd_kernels::Result<()> {
        F::with_shape(dims[0], dims[1], |shape| cuda.backward(shape, student, teacher, upstream, grad_student))
    }
}
