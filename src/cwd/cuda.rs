//! What CWD's loss object on the GPU has beyond every family's ([`crate::cuda::LossCuda`]): the choice
//! between the single pass (`cwd_fused`, one cooperative launch) and the two passes (`cwd_stats` then
//! `cwd_finish`) of `kernels/cwd.cu` (see [`CwdPath`]).

use super::plan::{self, Device};
use super::{Cwd, CwdPath};
use crate::cuda::LossCuda;
use crate::dtype::DType;
use crate::error::Result;
use crate::launch::OutputSet;
use crate::shape::Nchw;

impl LossCuda<Cwd> {
    /// The longest row (H*W) the single-pass kernel takes on this device for `dtype`; 0 where it cannot run.
    pub fn single_pass_max_row_len(&self, dtype: DType) -> usize {
        let resident = Device::of(self.module(), dtype).map_or(0, |d| d.single_pass_resident);
        plan::single_pass_max_row_len(dtype, resident)
    }

    /// The kernels a call on `shape` with 16-byte aligned `dtype` buffers runs: [`CwdPath::SinglePass`] or
    /// [`CwdPath::TwoPass`] (never `Auto`), or the error such a call would return for its configuration.
    pub fn resolved_path(&self, shape: &[usize], dtype: DType) -> Result<CwdPath> {
        let shape = Nchw::from_dims("student", shape)?;
        let outputs = OutputSet {
            loss: true,
            grad_student: true,
            grad_teacher: self.config().teacher_grad,
            ..OutputSet::default()
        };
        let device = Device::of(self.module(), dtype)?;
        Ok(plan::plan(self.config(), &shape, dtype, device, self.path(), outputs, 1.0, 0)?.path)
    }
}
