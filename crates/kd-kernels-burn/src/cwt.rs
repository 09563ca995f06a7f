//! CWT as a burn operation: [`cwt_loss`], its MLP ([`CwtMlp`]), and how the MLP's four parameters travel to
//! the backend packed in one tensor ([`CwtPacking`]).

use std::ops::Range;

use ::burn::tensor::{DType, Tensor};
use ::ndarray::IxDyn;

use super::ndarray::{contiguous, unpack, view4, view_as, NdArrayFloat};
use super::packed::{addresses, fixed, lay_out, packed_loss, CpuCall, PackedAddresses, PackedCpuOutput, PackedInputs};
use super::{covered_backend, other_device, refuse_tracked_teacher, PackedConfig, PackedFamilyRow, PackedLossFamily};
use kd_kernels::cwt::{Cwt, CwtConfig, CwtCpu, CwtRawBuffers, CwtSetup, CwtShapes, MlpParams};
use kd_kernels::error::{KdError, Result};

/// Where each of the MLP's parameters lies in the packed 1-D `params` tensor of CWT's packed call:
/// `w1` `[Ch, Cs]`, `b1` `[Ch]`, `w2` `[Ct, Ch]`, `b2` `[Ct]`, each flattened row-major, end to end. The
/// gradient of the parameters is packed alike: one tensor where there were four, as the candle op packs them.
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
    refuse_tracked_teacher(&teacher, Cwt::LABEL)?;
    let flat2 = |t: &Tensor<2>| t.clone().reshape([t.shape().num_elements()]);
    let params = Tensor::cat(vec![flat2(&mlp.w1), mlp.b1.clone(), flat2(&mlp.w2), mlp.b2.clone()], 0);
    let setup = CwtSetup { config: *config, shapes };
    let inputs = PackedInputs::Three(student.into_dispatch(), teacher.into_dispatch(), params.into_dispatch());
    Ok(packed_loss(inputs, PackedConfig::Cwt(setup)))
}

/// CWT's packed call: student `[N, Cs, H, W]`, teacher `[N, Ct, H, W]` and `params` ([`CwtPacking`]), f32
/// every one (the checked function refuses others); gradients for the student and `params`.
impl PackedLossFamily for Cwt {
    fn config(setup: &CwtSetup) -> CwtSetup {
        *setup
    }

    fn cpu<T: NdArrayFloat>(setup: &CwtSetup, tensors: CpuCall<'_>) -> Result<PackedCpuOutput> {
        let CpuCall { floats, want_grad, .. } = tensors;
        let packing = CwtPacking::new(&setup.shapes);
        let params = contiguous(f32::storage("params", &floats[2]));
        let [w1, b1, w2, b2] = <[_; 4]>::try_from(unpack::<f32, IxDyn>(&params, &packing.params))
            .unwrap_or_else(|_| unreachable!("CWT packs four parameters"));
        let params = MlpParams { w1: view_as(w1), b1: view_as(b1), w2: view_as(w2), b2: view_as(b2) };
        let (s, t) = (view4(T::storage("student", &floats[0])), view4(T::storage("teacher", &floats[1])));
        let cwt = CwtCpu::new(setup.config)?;
        if !want_grad {
            return Ok(PackedCpuOutput { loss: cwt.forward(s, t, &params)?, grads: Vec::new() });
        }
        let out = cwt.forward_backward(s, t, &params)?;
        let grad_params = out.grad_w1.iter().chain(&out.grad_b1).chain(&out.grad_w2).chain(&out.grad_b2).copied();
        let grad_params = ::ndarray::Array1::from_iter(grad_params).into_dyn();
        Ok(PackedCpuOutput { loss: out.loss, grads: vec![out.grad_student.into_dyn(), grad_params] })
    }

    fn with_shape<R>(_setup: &CwtSetup, dims: &[Vec<usize>], f: impl FnOnce(&[usize]) -> Result<R>) -> Result<R> {
        f(&dims[0])
    }

    /// Each parameter's address is the packed buffer's plus its offset ([`CwtPacking`]), as the candle op
    /// passes its views of one flat vector: the CWT kernels read the parameters element by element.
    fn raw_buffers(setup: &CwtSetup, at: &PackedAddresses<'_>) -> CwtRawBuffers {
        let packing = CwtPacking::new(&setup.shapes);
        let params = |base: u64| -> [u64; 4] {
            let mut parts = addresses(base, &packing.params, 4).into_iter();
            [(); 4].map(|()| parts.next().unwrap_or(0))
        };
        let ([student, teacher, packed], [grad_student, _, grad_packed]) = (fixed(at.floats), fixed(at.grads));
        let ([w1, b1, w2, b2], [grad_w1, grad_b1, grad_w2, grad_b2]) = (params(packed), params(grad_packed));
        CwtRawBuffers {
            student,
            teacher,
            w1,
            b1,
            w2,
            b2,
            loss: at.loss,
            grad_student,
            grad_w1,
            grad_b1,
            grad_w2,
            grad_b2,
            upstream: 0,
        }
    }
}
