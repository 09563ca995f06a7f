//! SKD's short calls on the GPU ([`crate::cuda::LossCuda::call`] with [`super::SkdBuffers`] does the rest:
//! scaled or accumulated gradients).

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::{RelationShapes, Skd, SkdBuffers};
use crate::cuda::LossCuda;
use crate::dtype::KdFloat;
use crate::error::Result;

impl LossCuda<Skd> {
    /// Writes the loss into `loss[0]` (f32). `shapes` from [`super::check_shapes`]: the student
    /// `[N, Cs, H, W]`, the teacher `[N, Ct, H, W]`.
    pub fn forward<T: KdFloat>(
        &mut self,
        shapes: &RelationShapes,
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        self.call(shapes, SkdBuffers { loss: Some(loss), ..SkdBuffers::new(student, teacher) })
    }

    /// The training-step call: the loss into `loss[0]` and d loss / d student into `grad_student`.
    pub fn forward_backward<T: KdFloat>(
        &mut self,
        shapes: &RelationShapes,
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        let buffers =
            SkdBuffers { loss: Some(loss), grad_student: Some(grad_student), ..SkdBuffers::new(student, teacher) };
        self.call(shapes, buffers)
    }

    /// d loss / d student times `upstream[0]` (a device f32, d total / d loss), without the loss.
    pub fn backward<T: KdFloat>(
        &mut self,
        shapes: &RelationShapes,
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        upstream: &dyn DevicePtr<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        let buffers = SkdBuffers {
            upstream: Some(upstream),
            grad_student: Some(grad_student),
            ..SkdBuffers::new(student, teacher)
        };
        self.call(shapes, buffers)
    }
}
