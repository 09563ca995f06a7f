//! ICSD and AICSD as candle ops.

use candle_core::Tensor;

use super::PixelKd;
use kd_kernels::icsd::{AicsdConfig, IcsdConfig, IcsdCpu};

super::pair_loss_adapter! {
    /// ICSD's inter-class similarity loss ([`kd_kernels::icsd`]) as a candle op: `loss(student, teacher)` is an f32
    /// scalar whose backward pass writes d loss / d student.
    Icsd { cpu: IcsdCpu, config: IcsdConfig, cuda: kd_kernels::icsd::IcsdCuda, op: "kd-kernels-icsd" }
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
