//! Pixel-wise KD as a candle op.

use ndarray::ArrayView4;

use super::{PairGrads, PairLoss, PairLossFn};
use crate::dtype::KdFloat;
use crate::pixel_kd::{PixelKdConfig, PixelKdCpu};

/// Pixel-wise KD ([`crate::pixel_kd`]) as a candle op: `loss(student, teacher)` is an f32 scalar whose
/// backward pass writes d loss / d student.
#[derive(Clone)]
pub struct PixelKd {
    inner: PairLossFn<PixelKdCpu>,
}

impl PixelKd {
    /// Validates `config`.
    pub fn new(config: PixelKdConfig) -> candle_core::Result<Self> {
        Ok(PixelKd { inner: PairLossFn::new(PixelKdCpu::new(config).map_err(super::candle_error)?) })
    }

    /// The configuration.
    pub fn config(&self) -> &PixelKdConfig {
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

impl PairLoss for PixelKdCpu {
    const NAME: &'static str = "kd-kernels-pixel-kd";
    const GRAD_NAME: &'static str = "kd-kernels-pixel-kd-grad";

    fn cpu_loss<T: KdFloat>(&self, student: ArrayView4<'_, T>, teacher: ArrayView4<'_, T>) -> crate::Result<f64> {
        self.forward(student, teacher)
    }

    fn cpu_grads<T: KdFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        upstream: f64,
    ) -> crate::Result<PairGrads> {
        Ok(PairGrads { student: self.backward(student, teacher, upstream)?.grad_student, teacher: None })
    }

    #[cfg(feature = "candle-cuda")]
    type Cuda = crate::pixel_kd::PixelKdCuda;

    #[cfg(feature = "candle-cuda")]
    fn cuda_new(&self, stream: std::sync::Arc<cudarc::driver::CudaStream>) -> crate::Result<Self::Cuda> {
        crate::pixel_kd::PixelKdCuda::new(stream, *self.config())
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
        _grad_teacher: Option<&mut cudarc::driver::CudaViewMut<'_, T>>,
    ) -> crate::Result<()> {
        cuda.backward(shape, student, teacher, upstream, grad_student)
    }
}
