//! Which outputs one launch writes: the flags of `kernels/params.h`, shared by every loss family.

use crate::ffi;

/// The outputs a launch produces. Building the flags in one place keeps the CUDA wrappers and the host
/// emulation of the kernels in agreement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OutputSet {
    pub loss: bool,
    pub grad_student: bool,
    pub grad_teacher: bool,
    /// Gradients are multiplied by a device scalar (the `backward` entry points).
    pub upstream: bool,
}

impl OutputSet {
    pub(crate) fn any_grad(&self) -> bool {
        self.grad_student || self.grad_teacher
    }

    pub(crate) fn flags(&self) -> i32 {
        let mut flags = 0;
        if self.loss {
            flags |= ffi::KdOutputFlags_KD_WANT_LOSS;
        }
        if self.grad_student {
            flags |= ffi::KdOutputFlags_KD_WANT_GRAD_STUDENT;
        }
        if self.grad_teacher {
            flags |= ffi::KdOutputFlags_KD_WANT_GRAD_TEACHER;
        }
        if self.upstream {
            flags |= ffi::KdOutputFlags_KD_SCALE_BY_UPSTREAM;
        }
        flags as i32
    }
}
