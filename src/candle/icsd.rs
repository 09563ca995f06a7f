//! ICSD and AICSD as candle ops.

use candle_core::Tensor;
use ndarray::ArrayView4;

use super::{PairGrads, PairLoss, PairLossFn, PixelKd};
use crate::dtype::KdFloat;
use crate::icsd::{AicsdConfig, IcsdConfig, IcsdCpu};

/// ICSD's inter-class similarity loss ([`crate::icsd`]) as a candle op: `loss(student, teacher)` is an f32
/// scalar whose backward pass writes d loss / d student.
#[derive(Clone)]
pub struct Icsd {
    inner: PairLossFn<IcsdCpu>,
}

impl Icsd {
    /// Validates `config`.
    pub fn new(config: IcsdConfig) -> candle_core::Result<Self> {
        Ok(Icsd { inner: PairLossFn::new(IcsdCpu::new(config).map_err(super::candle_error)?) })
    }

    /// The configuration.
    pub fn config(&self) -> &IcsdConfig {
        self.inner.family().config()
    }

    /// The loss of `student` against `teacher` (`[N, C, H, W]`, one dtype, one device).
    pub fn loss(&self, student: &Tensor, teacher: &Tensor) -> candle_core::Result<Tensor> {
        self.inner.loss(student, teacher)
    }
}

/// AICSD without the task loss, `alpha * L_ICS + (1 - alpha) * L_KD` with ALW's `alpha(epoch)`
/// (`docs/losses.md` §3.10): the [`Icsd`] and [`PixelKd`] ops mixed in the candle graph. Scale your own
/// cross-entropy by [`Aicsd::alpha`].
#[derive(Clone)]
pub struct Aicsd {
    config: AicsdConfig,
    icsd: Icsd,
    kd: PixelKd,
}

impl Aicsd {
    /// Validates `config`.
    pub fn new(config: AicsdConfig) -> candle_core::Result<Self> {
        config.validate().map_err(super::candle_error)?;
        Ok(Aicsd { config, icsd: Icsd::new(config.icsd)?, kd: PixelKd::new(config.kd)? })
    }

    /// The configuration.
    pub fn config(&self) -> &AicsdConfig {
        &self.config
    }

    /// ALW's `alpha` at `epoch` (the weight of the task loss and of `L_ICS`).
    pub fn alpha(&self, epoch: f64) -> candle_core::Result<f64> {
        self.config.alpha(epoch).map_err(super::candle_error)
    }

    /// `alpha(epoch) * L_ICS + (1 - alpha(epoch)) * L_KD` of `student` against `teacher`.
    pub fn loss(&self, student: &Tensor, teacher: &Tensor, epoch: f64) -> candle_core::Result<Tensor> {
        let alpha = self.alpha(epoch)?;
        let ics = self.icsd.loss(student, teacher)?;
        let kd = self.kd.loss(student, teacher)?;
        (ics * alpha)? + (kd * (1.0 - alpha))?
    }
}

impl PairLoss for IcsdCpu {
    const NAME: &'static str = "kd-kernels-icsd";
    const GRAD_NAME: &'static str = "kd-kernels-icsd-grad";

    fn cpu_loss<T: KdFloat>(&self, student: ArrayView4<'_, T>, teacher: ArrayView4<'_, T>) -> crate::Result<f64> {
        Ok(self.forward(student, teacher)?.loss)
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
    type Cuda = crate::icsd::IcsdCuda;

    #[cfg(feature = "candle-cuda")]
    fn cuda_new(&self, stream: std::sync::Arc<cudarc::driver::CudaStream>) -> crate::Result<Self::Cuda> {
        crate::icsd::IcsdCuda::new(stream, *self.config())
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
