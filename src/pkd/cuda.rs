//! PKD's typed buffers and the short calls of its loss object on the GPU ([`crate::cuda::LossCuda`] gives the
//! rest: `new`, `reserve`, `call`, `launch_raw`).

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::{Pkd, PkdLevels};
use crate::cuda::LossCuda;
use crate::dtype::KdFloat;
use crate::error::Result;
use crate::grad::GradOptions;

/// The typed buffers of one PKD call: one student and one teacher per level, the outputs wanted and how the
/// gradients are written.
pub struct PkdBuffers<'a, T> {
    /// Level `l`'s student `[N, C, H, W]`.
    pub student: &'a [&'a dyn DevicePtr<T>],
    /// Level `l`'s teacher, the student's shape.
    pub teacher: &'a [&'a dyn DevicePtr<T>],
    /// One f32: the loss.
    pub loss: Option<&'a mut dyn DevicePtrMut<f32>>,
    /// d loss / d student, one buffer per level in the input dtype; empty for no gradient.
    pub grad_student: Vec<&'a mut dyn DevicePtrMut<T>>,
    /// One f32 the kernels read, d total / d loss, scaling the gradients (a backward pass).
    pub upstream: Option<&'a dyn DevicePtr<f32>>,
    /// How the gradients are scaled and whether they are added into their buffers.
    pub options: GradOptions,
}

impl<'a, T> PkdBuffers<'a, T> {
    /// The inputs, with no output yet and [`GradOptions::OVERWRITE`].
    pub fn new(student: &'a [&'a dyn DevicePtr<T>], teacher: &'a [&'a dyn DevicePtr<T>]) -> Self {
        PkdBuffers {
            student,
            teacher,
            loss: None,
            grad_student: Vec::new(),
            upstream: None,
            options: GradOptions::OVERWRITE,
        }
    }
}

impl LossCuda<Pkd> {
    /// Writes the loss into `loss[0]` (f32).
    pub fn forward<'a, T: KdFloat>(
        &mut self,
        levels: &PkdLevels,
        student: &'a [&'a dyn DevicePtr<T>],
        teacher: &'a [&'a dyn DevicePtr<T>],
        loss: &'a mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        self.call(levels, PkdBuffers { loss: Some(loss), ..PkdBuffers::new(student, teacher) })
    }

    /// The training-step call: the loss into `loss[0]` and every level's d loss / d student into
    /// `grad_student[l]`.
    pub fn forward_backward<'a, T: KdFloat>(
        &mut self,
        levels: &PkdLevels,
        student: &'a [&'a dyn DevicePtr<T>],
        teacher: &'a [&'a dyn DevicePtr<T>],
        loss: &'a mut dyn DevicePtrMut<f32>,
        grad_student: Vec<&'a mut dyn DevicePtrMut<T>>,
    ) -> Result<()> {
        self.call(levels, PkdBuffers { loss: Some(loss), grad_student, ..PkdBuffers::new(student, teacher) })
    }

    /// Every level's d loss / d student times the upstream gradient `upstream[0]` (a device f32, d total /
    /// d loss), without the loss.
    pub fn backward<'a, T: KdFloat>(
        &mut self,
        levels: &PkdLevels,
        student: &'a [&'a dyn DevicePtr<T>],
        teacher: &'a [&'a dyn DevicePtr<T>],
        upstream: &'a dyn DevicePtr<f32>,
        grad_student: Vec<&'a mut dyn DevicePtrMut<T>>,
    ) -> Result<()> {
        self.call(levels, PkdBuffers { upstream: Some(upstream), grad_student, ..PkdBuffers::new(student, teacher) })
    }
}
