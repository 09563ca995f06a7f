//! IFVD as a burn operation: [`ifvd_loss`], features and an integer label tensor.

use ::burn::backend::Dispatch;
use ::burn::tensor::{DType, Int, Tensor};

use super::semckd::check_same_device;
use super::{check_float_pair, refuse_tracked_teacher, KdBackend};
use kd_kernels::dtype::LabelDType;
use kd_kernels::error::{KdError, Result};
use kd_kernels::ifvd::{check_shapes, IfvdConfig};

/// IFVD (`docs/losses.md` §11) between student features `[N, Cs, H, W]` and teacher features
/// `[N, Ct, H, W]` (one float dtype; the channel counts may differ) with the labels `[N, Hl, Wl]` (`i64`,
/// burn's default int, `i32` or `u8`; any resolution, resized to `H x W` by PyTorch's `nearest`; values
/// outside `[0, num_classes)`, such as 255, are ignored), as a differentiable one-element tensor.
///
/// On an autodiff device the gradient reaches the student (directly and through its class prototypes).
/// IFVD has no teacher gradient: a tracked teacher is refused (pass `teacher.detach()`).
pub fn ifvd_loss(
    student: Tensor<4>,
    teacher: Tensor<4>,
    labels: Tensor<3, Int>,
    config: &IfvdConfig,
) -> Result<Tensor<1>> {
    config.validate()?;
    check_shapes(student.shape().as_slice(), teacher.shape().as_slice(), labels.shape().as_slice())?;
    check_float_pair(&student, &teacher)?;
    label_dtype(labels.dtype())?;
    check_same_device("labels", &labels.device(), &student.device())?;
    refuse_tracked_teacher(&teacher, "IFVD")?;
    Ok(Tensor::from_dispatch(Dispatch::ifvd_forward(
        student.into_dispatch(),
        teacher.into_dispatch(),
        labels.into_dispatch(),
        *config,
    )))
}

/// The kernels' label type for a burn int dtype; the others are refused.
pub(crate) fn label_dtype(dtype: DType) -> Result<LabelDType> {
    match dtype {
        DType::I64 => Ok(LabelDType::I64),
        DType::I32 => Ok(LabelDType::I32),
        DType::U8 => Ok(LabelDType::U8),
        other => Err(KdError::DTypeMismatch {
            what: "labels".into(),
            expected: "I64, I32 or U8 (convert them to I64 first)".into(),
            got: format!("{other:?}"),
        }),
    }
}
