//! CWT's typed buffers on the GPU and what its loss object has beyond every family's
//! ([`crate::cuda::LossCuda`]): its channel counts and its training-step calls with the MLP's parameters.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::{Cwt, CwtConfig, CwtSetup, CwtShapes};
use crate::cuda::LossCuda;
use crate::dtype::KdFloat;
use crate::error::Result;
use crate::grad::GradOptions;

/// The MLP's parameters on the device (f32): `W1` `[Ch, Cs]`, `b1` `[Ch]`, `W2` `[Ct, Ch]`, `b2` `[Ct]`.
#[derive(Clone, Copy)]
pub struct CwtParamBuffers<'a> {
    /// `mlp.linear1.weight`.
    pub w1: &'a dyn DevicePtr<f32>,
    /// `mlp.linear1.bias`.
    pub b1: &'a dyn DevicePtr<f32>,
    /// `mlp.linear2.weight`.
    pub w2: &'a dyn DevicePtr<f32>,
    /// `mlp.linear2.bias`.
    pub b2: &'a dyn DevicePtr<f32>,
}

/// Where the parameters' gradients go (f32, the parameters' shapes).
pub struct CwtParamGrads<'a> {
    /// d loss / d `W1`.
    pub w1: &'a mut dyn DevicePtrMut<f32>,
    /// d loss / d `b1`.
    pub b1: &'a mut dyn DevicePtrMut<f32>,
    /// d loss / d `W2`.
    pub w2: &'a mut dyn DevicePtrMut<f32>,
    /// d loss / d `b2`.
    pub b2: &'a mut dyn DevicePtrMut<f32>,
}

/// The typed buffers of one CWT call. The loss is written where `loss` is given; the gradients where
/// `grad_student` and `grads` are (the five come from one backward pass: both or neither).
pub struct CwtBuffers<'a, T> {
    /// `[N, Cs, H, W]` student features.
    pub student: &'a dyn DevicePtr<T>,
    /// `[N, Ct, H, W]` teacher features.
    pub teacher: &'a dyn DevicePtr<T>,
    /// The MLP's parameters (f32).
    pub params: CwtParamBuffers<'a>,
    /// One f32: the loss.
    pub loss: Option<&'a mut dyn DevicePtrMut<f32>>,
    /// d loss / d student, in the input dtype.
    pub grad_student: Option<&'a mut dyn DevicePtrMut<T>>,
    /// The parameters' gradients (f32).
    pub grads: Option<CwtParamGrads<'a>>,
    /// One f32 the kernels read, d total / d loss, scaling every gradient (a backward pass).
    pub upstream: Option<&'a dyn DevicePtr<f32>>,
    /// How the gradients are scaled and whether they are added into their buffers.
    pub options: GradOptions,
}

impl<'a, T> CwtBuffers<'a, T> {
    /// The inputs, with no output yet and [`GradOptions::OVERWRITE`].
    pub fn new(student: &'a dyn DevicePtr<T>, teacher: &'a dyn DevicePtr<T>, params: CwtParamBuffers<'a>) -> Self {
        CwtBuffers {
            student,
            teacher,
            params,
            loss: None,
            grad_student: None,
            grads: None,
            upstream: None,
            options: GradOptions::OVERWRITE,
        }
    }
}

impl LossCuda<Cwt> {
    /// Validates `config` and `shapes`, probes for a driver, and loads the kernels into `stream`'s context.
    pub fn with_shapes(stream: Arc<CudaStream>, config: CwtConfig, shapes: CwtShapes) -> Result<Self> {
        Self::new(stream, CwtSetup { config, shapes })
    }

    /// The channel counts.
    pub fn shapes(&self) -> &CwtShapes {
        &self.config().shapes
    }

    /// Writes the loss into `loss[0]` (f32). `student_shape` is the student's `[N, Cs, H, W]`; the teacher
    /// is `[N, Ct, H, W]`.
    pub fn forward<T: KdFloat>(
        &mut self,
        student_shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        params: &CwtParamBuffers<'_>,
        loss: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        self.call(student_shape, CwtBuffers { loss: Some(loss), ..CwtBuffers::new(student, teacher, *params) })
    }

    /// The training-step call: the loss and every gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward<'a, T: KdFloat>(
        &mut self,
        student_shape: &[usize],
        student: &'a dyn DevicePtr<T>,
        teacher: &'a dyn DevicePtr<T>,
        params: &CwtParamBuffers<'a>,
        loss: &'a mut dyn DevicePtrMut<f32>,
        grad_student: &'a mut dyn DevicePtrMut<T>,
        grads: CwtParamGrads<'a>,
    ) -> Result<()> {
        let buffers = CwtBuffers {
            loss: Some(loss),
            grad_student: Some(grad_student),
            grads: Some(grads),
            ..CwtBuffers::new(student, teacher, *params)
        };
        self.call(student_shape, buffers)
    }

    /// Every gradient times the device scalar `upstream[0]` (d total / d loss), without the loss.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<'a, T: KdFloat>(
        &mut self,
        student_shape: &[usize],
        student: &'a dyn DevicePtr<T>,
        teacher: &'a dyn DevicePtr<T>,
        params: &CwtParamBuffers<'a>,
        upstream: &'a dyn DevicePtr<f32>,
        grad_student: &'a mut dyn DevicePtrMut<T>,
        grads: CwtParamGrads<'a>,
    ) -> Result<()> {
        let buffers = CwtBuffers {
            upstream: Some(upstream),
            grad_student: Some(grad_student),
            grads: Some(grads),
            ..CwtBuffers::new(student, teacher, *params)
        };
        self.call(student_shape, buffers)
    }
}
