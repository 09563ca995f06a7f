//! IFVD's short calls on the GPU ([`crate::cuda::LossCuda::call`] with [`IfvdBuffers`] does the rest: scaled or
//! accumulated gradients).

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::driver::{IfvdBuffers, IfvdLabels};
use super::{Ifvd, IfvdShapes};
use crate::cuda::LossCuda;
use crate::dtype::KdFloat;
use crate::error::Result;

impl LossCuda<Ifvd> {
    /// Writes the loss into `loss[0]` (f32).
    pub fn forward<T: KdFloat>(
        &mut self,
        shapes: &IfvdShapes,
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        labels: IfvdLabels<'_>,
        loss: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        self.call(shapes, IfvdBuffers { loss: Some(loss), ..IfvdBuffers::new(student, teacher, labels) })
    }

    /// The training-step call: the loss into `loss[0]` and d loss / d student into `grad_student`.
    pub fn forward_backward<T: KdFloat>(
        &mut self,
        shapes: &IfvdShapes,
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        labels: IfvdLabels<'_>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        let buffers = IfvdBuffers {
            loss: Some(loss),
            grad_student: Some(grad_student),
            ..IfvdBuffers::new(student, teacher, labels)
        };
        self.call(shapes, buffers)
    }

    /// d loss / d student times `upstream[0]` (a device f32, d total / d loss), without the loss.
    pub fn backward<T: KdFloat>(
        &mut self,
        shapes: &IfvdShapes,
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        labels: IfvdLabels<'_>,
        upstream: &dyn DevicePtr<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        let buffers = IfvdBuffers {
            upstream: Some(upstream),
            grad_student: Some(grad_student),
            ..IfvdBuffers::new(student, teacher, labels)
        };
        self.call(shapes, buffers)
    }
}
