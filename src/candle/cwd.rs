//! CWD as a candle op.

use ndarray::ArrayView4;

use super::{PairGrads, PairLoss, PairLossFn};
use crate::cwd::{CwdConfig, CwdCpu};
use crate::dtype::KdFloat;

/// Channel-wise distillation ([`crate::cwd`]) as a candle op: `loss(student, teacher)` is an f32 scalar
/// whose backward pass writes d loss / d student (and d loss / d teacher with `config.teacher_grad`).
#[derive(Clone)]
pub struct Cwd {
    inner: PairLossFn<CwdCpu>,
}

impl Cwd {
    /// Validates `config`.
    pub fn new(config: CwdConfig) -> candle_core::Result<Self> {
        Ok(Cwd { inner: PairLossFn::new(CwdCpu::new(config).map_err(super::candle_error)?) })
    }

    /// The configuration.
    pub fn config(&self) -> &CwdConfig {
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

impl PairLoss for CwdCpu {
    const NAME: &'static str = "kd-kernels-cwd";
    const GRAD_NAME: &'static str = "kd-kernels-cwd-grad";

    fn teacher_grad(&self) -> bool {
        self.config().teacher_grad
    }

    fn cpu_loss<T: KdFloat>(&self, student: ArrayView4<'_, T>, teacher: ArrayView4<'_, T>) -> crate::Result<f64> {
        self.forward(student, teacher)
    }

    fn cpu_grads<T: KdFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        upstream: f64,
    ) -> crate::Result<PairGrads> {
        let out = self.backward(student, teacher, upstream)?;
        Ok(PairGrads { student: out.grad_student, teacher: out.grad_teacher })
    }

    #[cfg(feature = "candle-cuda")]
    type Cuda = crate::cwd::CwdCuda;

    #[cfg(feature = "candle-cuda")]
    fn cuda_new(&self, stream: std::sync::Arc<cudarc::driver::CudaStream>) -> crate::Result<Self::Cuda> {
        crate::cwd::CwdCuda::new(stream, *self.config())
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_forward<T: KdFloat>(
        cuda: &mut Self::Cuda,
        shape: &[usize],
        student: &cudarc::driver::CudaView<'_, T>,
        teacher: &cudarc::driver::CudaView<'_, T>,
        loss: &mut cudarc::driver::CudaSlice<f32>,
    ) -> crate::Result<()> {
        cuda.forward(shape, student, teacher, loss)
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_backward<T: KdFloat>(
        cuda: &mut Self::Cuda,
        shape: &[usize],
        student: &cudarc::driver::CudaView<'_, T>,
        teacher: &cudarc::driver::CudaView<'_, T>,
        upstream: &cudarc::driver::CudaView<'_, f32>,
        grad_student: &mut cudarc::driver::CudaViewMut<'_, T>,
        grad_teacher: Option<&mut cudarc::driver::CudaViewMut<'_, T>>,
    ) -> crate::Result<()> {
        let grad_teacher = grad_teacher.map(|g| g as &mut dyn cudarc::driver::DevicePtrMut<T>);
        cuda.backward(shape, student, teacher, upstream, grad_student, grad_teacher)
    }
}
