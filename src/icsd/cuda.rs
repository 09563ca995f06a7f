//! What ICSD's loss object on the GPU has beyond every pair family's ([`crate::cuda::LossCuda`]): the two
//! row-normalised class-similarity matrices as outputs.

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::driver::IcsdBuffers;
use super::Icsd;
use crate::cuda::LossCuda;
use crate::dtype::KdFloat;
use crate::error::Result;
use crate::family::PairBuffers;

impl LossCuda<Icsd> {
    /// The two row-normalised `C x C` matrices (f32, row-major): `Mh_S` into `sim_student`, `Mh_T` into
    /// `sim_teacher`, and the loss into `loss[0]`.
    pub fn forward_matrices<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        sim_student: &mut dyn DevicePtrMut<f32>,
        sim_teacher: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        let pair = PairBuffers { loss: Some(loss), ..PairBuffers::new(student, teacher) };
        self.call(shape, IcsdBuffers { pair, sim_student: Some(sim_student), sim_teacher: Some(sim_teacher) })
    }
}
