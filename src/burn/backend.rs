//! The backend extension trait, [`KdBackend`].
// burn 0.22 deprecates NdArray in favour of its Flex backend; the generated routing names NdArray.
#![allow(deprecated)]

use ::burn::backend::{backend_extension, tensor::FloatTensor, Backend};

use crate::cwd::CwdConfig;
use crate::cwt::CwtConfig;
use crate::pixel_kd::PixelKdConfig;

/// The losses as backend primitives. Each takes contiguous or strided NCHW float tensors of one shape and
/// dtype, and returns the loss as a one-element tensor (shape `[1]`) in the input dtype; gradients have
/// the input's shape and dtype.
///
/// Call them through the checked functions of this module ([`cwd_loss`], [`pixel_kd_loss`]): the
/// primitives assume inputs those functions accepted, and a backend may panic on others (e.g. a rank-3
/// tensor).
#[backend_extension(NdArray, Autodiff)]
pub trait KdBackend: Backend {
    /// CWD's loss (`docs/losses.md` §1.3).
    fn cwd_forward(student: FloatTensor<Self>, teacher: FloatTensor<Self>, config: CwdConfig) -> FloatTensor<Self>;

    /// CWD's loss, d loss / d student, and d loss / d teacher when `config.teacher_grad`.
    fn cwd_forward_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        config: CwdConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Option<FloatTensor<Self>>);

    /// Pixel KD's loss (`docs/losses.md` §2).
    fn pixel_kd_forward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        config: PixelKdConfig,
    ) -> FloatTensor<Self>;

    /// Pixel KD's loss and d loss / d student.
    fn pixel_kd_forward_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        config: PixelKdConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// CWT's loss (`docs/losses.md` §5): student `[N, Cs, H, W]`, teacher `[N, Ct, H, W]`, the MLP's `w1`
    /// `[Ch, Cs]`, `b1` `[Ch]`, `w2` `[Ct, Ch]`, `b2` `[Ct]`.
    fn cwt_forward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        b2: FloatTensor<Self>,
        config: CwtConfig,
    ) -> FloatTensor<Self>;

    /// CWT's loss and the gradients of the student, `w1`, `b1`, `w2` and `b2`, in that order.
    #[allow(clippy::type_complexity)]
    fn cwt_forward_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        b1: FloatTensor<Self>,
        w2: FloatTensor<Self>,
        b2: FloatTensor<Self>,
        config: CwtConfig,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}
