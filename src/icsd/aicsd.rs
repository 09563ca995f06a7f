//! The AICSD objective without the task loss, `alpha * L_ICS + (1 - alpha) * L_KD` (`docs/losses.md §3.10`),
//! on the CPU ([`AicsdCpu`]) and on the GPU in one call ([`AicsdCuda`]).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use ndarray::ArrayView4;

use super::{alw_alpha, driver, IcsdConfig, IcsdCpu, IcsdCuda, IcsdRawBuffers, ALW_TOTAL_EPOCHS};
use crate::cpu::CpuOutput;
use crate::cuda::{Binder, CudaLauncher};
use crate::dtype::{DType, KdFloat};
use crate::error::{KdError, Result};
use crate::family::{PairBuffers, PairRawBuffers};
use crate::grad::GradOptions;
use crate::pixel_kd::{PixelKdConfig, PixelKdCpu, PixelKdCuda};
use crate::shape::Nchw;

/// AICSD's parameters: the ICS term, the pixel-KD term (§3.9: `PixelKdConfig::default()`, weight 10, `mean`)
/// and the ALW schedule's length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AicsdConfig {
    /// `L_ICS` (default: official variant, tau 1, weight 9500).
    pub icsd: IcsdConfig,
    /// `L_KD` (default: tau 1, weight 10, reduction `mean`, no tau^2).
    pub kd: PixelKdConfig,
    /// ALW's `total_epochs`; default 120.
    pub total_epochs: f64,
}

impl Default for AicsdConfig {
    fn default() -> Self {
        AicsdConfig { icsd: IcsdConfig::default(), kd: PixelKdConfig::default(), total_epochs: ALW_TOTAL_EPOCHS }
    }
}

impl AicsdConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        self.icsd.validate()?;
        self.kd.validate()?;
        alw_alpha(0.0, self.total_epochs).map(|_| ())
    }

    /// `alpha(epoch)` of this schedule.
    pub fn alpha(&self, epoch: f64) -> Result<f64> {
        alw_alpha(epoch, self.total_epochs)
    }

    /// The options of the two gradient writes: ICS with `alpha` (overwriting or accumulating as `options`
    /// says), then KD adding `1 - alpha` times its own.
    pub(crate) fn grad_options(&self, alpha: f64, options: GradOptions) -> (GradOptions, GradOptions) {
        (
            GradOptions { scale: options.scale * alpha, accumulate: options.accumulate },
            GradOptions { scale: options.scale * (1.0 - alpha), accumulate: true },
        )
    }
}

/// AICSD on the CPU (f64).
#[derive(Debug, Clone)]
pub struct AicsdCpu {
    config: AicsdConfig,
    icsd: IcsdCpu,
    kd: PixelKdCpu,
}

impl AicsdCpu {
    /// Validates `config`.
    pub fn new(config: AicsdConfig) -> Result<Self> {
        config.validate()?;
        Ok(AicsdCpu { config, icsd: IcsdCpu::new(config.icsd)?, kd: PixelKdCpu::new(config.kd)? })
    }

    /// `alpha * L_ICS + (1 - alpha) * L_KD` at `epoch` and its student gradient.
    pub fn forward_backward<T: KdFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        epoch: f64,
    ) -> Result<CpuOutput> {
        let alpha = self.config.alpha(epoch)?;
        let ics = self.icsd.forward_backward(student, teacher)?;
        let kd = self.kd.forward_backward(student, teacher)?;
        let grad = &ics.grad_student * alpha + &kd.grad_student * (1.0 - alpha);
        Ok(CpuOutput { loss: alpha * ics.loss + (1.0 - alpha) * kd.loss, grad_student: grad, grad_teacher: None })
    }
}

/// AICSD on the GPU: one call writes `alpha * L_ICS + (1 - alpha) * L_KD` (a device f32) and the summed
/// student gradient. ICSD writes its gradient scaled by `alpha`, pixel KD adds `1 - alpha` times its own
/// (`GradOptions { accumulate: true }`), and a one-thread kernel mixes the two device loss scalars: no host
/// synchronisation.
#[derive(Debug)]
pub struct AicsdCuda {
    config: AicsdConfig,
    icsd: IcsdCuda,
    kd: PixelKdCuda,
    /// The two weighted terms, `L_ICS` then `L_KD`.
    terms: CudaSlice<f32>,
}

impl AicsdCuda {
    /// Validates `config` and loads both families' kernels into `stream`'s context.
    pub fn new(stream: std::sync::Arc<cudarc::driver::CudaStream>, config: AicsdConfig) -> Result<Self> {
        config.validate()?;
        let icsd = IcsdCuda::new(stream.clone(), config.icsd)?;
        let kd = PixelKdCuda::new(stream.clone(), config.kd)?;
        let terms = stream.alloc_zeros::<f32>(2).map_err(|e| KdError::cuda("cuMemAlloc", e))?;
        Ok(AicsdCuda { config, icsd, kd, terms })
    }

    /// The configuration.
    pub fn config(&self) -> &AicsdConfig {
        &self.config
    }

    /// Sizes both workspaces (before a graph capture).
    pub fn reserve(&mut self, shape: &[usize], dtype: DType) -> Result<()> {
        self.icsd.reserve(shape, dtype)?;
        self.kd.reserve(shape, dtype)
    }

    /// Loss and gradient at `epoch`, overwriting `grad_student`.
    pub fn forward_backward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        epoch: f64,
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        let buffers =
            PairBuffers { loss: Some(loss), grad_student: Some(grad_student), ..PairBuffers::new(student, teacher) };
        self.call(shape, epoch, buffers)
    }

    /// Loss and gradient at `epoch` on `buffers`, which must hold the loss and the student gradient (no teacher
    /// gradient, no upstream scalar). Its `options` say how the gradient is written: `accumulate` adds the
    /// whole AICSD gradient into `grad_student`, for instance on top of the caller's `alpha`-scaled
    /// cross-entropy gradient.
    pub fn call<T: KdFloat>(&mut self, shape: &[usize], epoch: f64, buffers: PairBuffers<'_, T>) -> Result<()> {
        let PairBuffers { student, teacher, loss, grad_student, grad_teacher, upstream, options } = buffers;
        let (Some(loss), Some(grad_student), None, None) = (loss, grad_student, grad_teacher, upstream) else {
            return Err(KdError::OutputMismatch {
                what: "loss/grad_student/grad_teacher/upstream",
                fix: "AICSD writes the loss and the student gradient: give both a buffer, and no teacher gradient or \
                      upstream scalar",
            });
        };
        options.validate()?;
        let alpha = self.config.alpha(epoch)?;
        let nchw = Nchw::from_dims("student", shape)?;
        let numel = nchw.numel();
        let stream = self.icsd.stream().clone();
        let (ics_options, kd_options) = self.config.grad_options(alpha, options);
        let (terms, terms_guard) = self.terms.device_ptr_mut(&stream);
        let mut binder = Binder::new(&stream);
        let s = binder.input("student", student, numel)?;
        let t = binder.input("teacher", teacher, numel)?;
        let out = binder.output("loss", Some(loss), 1)?;
        let g = binder.output("grad_student", Some(grad_student), numel)?;
        let ics = IcsdRawBuffers { student: s, teacher: t, loss: terms, grad_student: g, ..IcsdRawBuffers::default() };
        let kd =
            PairRawBuffers { student: s, teacher: t, loss: terms + 4, grad_student: g, ..PairRawBuffers::default() };
        // SAFETY: every address was checked against this stream's context and the shape; the terms buffer is
        // this object's own.
        unsafe {
            self.icsd.launch_raw(stream.cu_stream(), shape, T::DTYPE, &ics, ics_options)?;
            self.kd.launch_raw(stream.cu_stream(), shape, T::DTYPE, &kd, kd_options)?;
            let mut launcher = CudaLauncher { module: self.icsd.module(), stream: stream.cu_stream() };
            driver::mix(&mut launcher, T::DTYPE, terms, terms + 4, out, alpha, 1.0 - alpha)?;
        }
        drop(binder);
        drop(terms_guard);
        Ok(())
    }
}
