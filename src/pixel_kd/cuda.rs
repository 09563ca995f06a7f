//! What pixel KD's loss object on the GPU has beyond every family's ([`crate::cuda::LossCuda`]): the choice
//! between `pixel_kd_tiled` and `pixel_kd` of `kernels/pixel_kd.cu` (see [`PixelKdPath`]).

use super::{driver, PixelKd, PixelKdPath};
use crate::cuda::LossCuda;
use crate::dtype::DType;
use crate::error::Result;
use crate::launch::OutputSet;
use crate::shape::Nchw;

impl LossCuda<PixelKd> {
    /// The kernel a call on `shape` in `dtype` runs: [`PixelKdPath::Tiled`] or [`PixelKdPath::PerPixel`]
    /// (never `Auto`), or the error such a call would return.
    pub fn resolved_path(&self, shape: &[usize], dtype: DType) -> Result<PixelKdPath> {
        let shape = Nchw::from_dims("student", shape)?;
        Ok(driver::plan_on(self.config(), self.path(), &shape, dtype, OutputSet::TRAINING, 1.0, self.module())?.path)
    }
}
