//! CWT as a burn operation: [`cwt_loss`], its MLP ([`CwtMlp`]), and how the MLP's four parameters travel to
//! the backend packed in one tensor ([`CwtPacking`]).

use std::ops::Range;

use ::burn::backend::Dispatch;
use ::burn::tensor::{DType, Tensor};

use super::semckd::lay_out;
use super::{covered_backend, other_device, refuse_tracked_teacher, KdBackend};
use kd_kernels::cwt::{CwtConfig, CwtSetup, CwtShapes};
use kd_kernels::error::{KdError, Result};

/// Where each of the MLP's parameters lies in the packed 1-D `params` tensor of [`KdBackend::cwt_forward`]:
/// `w1` `[Ch, Cs]`, `b1` `[Ch]`, `w2` `[Ct, Ch]`, `b2` `[Ct]`, each flattened row-major, end to end. The
/// gradient of the parameters is packed alike. Packed as SemCKD's parameters are (one tensor where there were
/// four), and as the candle op packs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CwtPacking {
    /// Per parameter, in the order above: its shape and its elements' range.
    pub params: Vec<(Vec<usize>, Range<usize>)>,
}

impl CwtPacking {
    /// The packing of an MLP of the channel counts `shapes`.
    pub fn new(shapes: &CwtShapes) -> Self {
        let CwtShapes { cs, ch, ct } = *shapes;
        CwtPacking { params: lay_out([vec![ch, cs], vec![ch], vec![ct, ch], vec![ct]].into_iter()) }
    }
}

/// CWT's MLP (`docs/losses.md` §5), the two 1x1 convolutions as matrices: `w1` `[Ch, Cs]`, `b1` `[Ch]`,
/// `w2` `[Ct, Ch]`, `b2` `[Ct]`, in f32 (the crate keeps learnable parameters in f32). Mark them
/// `require_grad` (or take them from a module) and their gradients come out of `loss.backward()`.
#[derive(Debug, Clone)]
pub struct CwtMlp {
    /// `mlp.linear1.weight`, `[Ch, Cs]`.
    pub w1: Tensor<2>,
    /// `mlp.linear1.bias`, `[Ch]`.
    pub b1: Tensor<1>,
    /// `mlp.linear2.weight`, `[Ct, Ch]`.
    pub w2: Tensor<2>,
    /// `mlp.linear2.bias`, `[Ct]`.
    pub b2: Tensor<1>,
}

/// Channel-wise transformation (CWT) between student features `[N, Cs, H, W]` and teacher features
/// `[N, Ct, H, W]` through `mlp`, as a differentiable one-element tensor.
///
/// On an autodiff device the gradient reaches the student and the four parameters. The features are f32
/// (NdArray has no f16 or bf16 storage; on CUDA the burn adapter keeps CWT in f32 too, one dtype for the
/// loss, the features and the parameters), and so are the parameters. CWT has no teacher gradient: a
/// tracked teacher is refused (pass `teacher.detach()`).
pub fn cwt_loss(student: Tensor<4>, teacher: Tensor<4>, mlp: &CwtMlp, config: &CwtConfig) -> Result<Tensor<1>> {
    config.validate()?;
    let [ch, cs] = mlp.w1.dims();
    let [ct, ch2] = mlp.w2.dims();
    let shapes = CwtShapes { cs, ch, ct };
    shapes.validate()?;
    for (what, got, expected) in [
        ("mlp.linear1.bias", mlp.b1.dims().to_vec(), vec![ch]),
        ("mlp.linear2.weight", vec![ct, ch2], vec![ct, ch]),
        ("mlp.linear2.bias", mlp.b2.dims().to_vec(), vec![ct]),
    ] {
        if got != expected {
            return Err(KdError::ShapeMismatch { what, expected, got });
        }
    }
    shapes.check_features(student.shape().as_slice(), teacher.shape().as_slice())?;
    for (what, dtype) in [
        ("student", student.dtype()),
        ("teacher", teacher.dtype()),
        ("mlp.linear1.weight", mlp.w1.dtype()),
        ("mlp.linear1.bias", mlp.b1.dtype()),
        ("mlp.linear2.weight", mlp.w2.dtype()),
        ("mlp.linear2.bias", mlp.b2.dtype()),
    ] {
        if !matches!(dtype, DType::F32 | DType::Flex32) {
            return Err(KdError::DTypeMismatch {
                what: what.into(),
                expected: "f32 (CWT's parameters are f32, and so are its features on NdArray)".into(),
                got: format!("{dtype:?}"),
            });
        }
    }
    let device = student.device();
    covered_backend(&device)?;
    for (what, other) in [
        ("teacher", teacher.device()),
        ("mlp.linear1.weight", mlp.w1.device()),
        ("mlp.linear1.bias", mlp.b1.device()),
        ("mlp.linear2.weight", mlp.w2.device()),
        ("mlp.linear2.bias", mlp.b2.device()),
    ] {
        if other != device {
            return Err(other_device(what, &device, &other));
        }
    }
    refuse_tracked_teacher(&teacher, "CWT")?;
    let flat2 = |t: &Tensor<2>| t.clone().reshape([t.shape().num_elements()]);
    let params = Tensor::cat(vec![flat2(&mlp.w1), mlp.b1.clone(), flat2(&mlp.w2), mlp.b2.clone()], 0);
    let setup = CwtSetup { config: *config, shapes };
    Ok(Tensor::from_dispatch(Dispatch::cwt_forward(
        student.into_dispatch(),
        teacher.into_dispatch(),
        params.into_dispatch(),
        setup,
    )))
}
