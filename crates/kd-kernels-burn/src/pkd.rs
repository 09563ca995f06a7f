//! PKD as a burn operation: [`pkd_loss`] over a list of levels, and how the levels travel to the backend
//! packed in one tensor per side ([`PkdPacking`]).

use std::ops::Range;

use ::burn::tensor::Tensor;
use ::ndarray::Ix4;

use super::ndarray::{contiguous, unpack, NdArrayFloat};
use super::packed::{
    addresses, check_same_device, lay_out, packed_loss, CpuCall, PackedAddresses, PackedCall, PackedCpuOutput,
    PackedInputs,
};
use super::{check_float_pair, is_cuda, refuse_tracked_teacher, PackedConfig, PackedFamilyRow, PackedLossFamily};
use kd_kernels::error::{KdError, Result};
use kd_kernels::pkd::{Pkd, PkdConfig, PkdCpu, PkdLevels, PkdRawBuffers, MAX_LEVELS};

/// What PKD's packed call carries: the levels' shapes and the configuration.
pub type PkdPacked = PackedCall<PkdLevels, PkdConfig>;

/// Where each level of a PKD call lies in the packed 1-D tensors of its packed call: per level
/// its shape `[N, C_l, H_l, W_l]` and its range of elements, each level flattened row-major, in level order.
/// The student, the teacher and the student's gradient are packed alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkdPacking {
    /// Per level: its shape and its elements' range.
    pub levels: Vec<(Vec<usize>, Range<usize>)>,
}

impl PkdPacking {
    /// The packing of a call on `levels`.
    pub fn new(levels: &PkdLevels) -> Self {
        PkdPacking { levels: lay_out(levels.shapes().iter().map(|s| s.dims().to_vec())) }
    }
}

/// PKD (`docs/losses.md` §7) over the levels `student[l]` / `teacher[l]` (one `[N, C_l, H_l, W_l]` shape
/// per level, the teacher's equal to the student's: resize the student first where they differ, as
/// mmrazor's `PKDLoss` does, and at least two values `N*H_l*W_l` per channel), as a differentiable
/// one-element tensor: `loss_weight * sum_l 0.5 * mean (S_hat_l - T_hat_l)^2`.
///
/// Every level has one float dtype and one device; the teacher is a constant (a tracked teacher level is
/// refused: pass `.detach()`). On an autodiff device the gradient reaches every student level. burn 0.22's
/// `backend_extension` routes single tensors only, so the levels are packed into one 1-D tensor per side
/// ([`PkdPacking`], a `cat` of reshapes, one copy of the features) and burn's autograd of the packing
/// carries each level's gradient back; on a CUDA device every level then runs in the same launches (at
/// most [`MAX_LEVELS`] levels). First-order gradients only.
pub fn pkd_loss(student: &[Tensor<4>], teacher: &[Tensor<4>], config: &PkdConfig) -> Result<Tensor<1>> {
    config.validate()?;
    let levels = check_pkd(student, teacher)?;
    let flat = |t: &Tensor<4>| t.clone().reshape([t.shape().num_elements()]);
    let pack = |side: &[Tensor<4>]| Tensor::cat(side.iter().map(flat).collect(), 0).into_dispatch();
    let call = PkdPacked { geometry: levels, config: *config };
    Ok(packed_loss(PackedInputs::Two(pack(student), pack(teacher)), PackedConfig::Pkd(call)))
}

/// Every check [`pkd_loss`] makes before anything runs.
fn check_pkd(student: &[Tensor<4>], teacher: &[Tensor<4>]) -> Result<PkdLevels> {
    let dims = |side: &[Tensor<4>]| side.iter().map(|t| t.dims().to_vec()).collect::<Vec<_>>();
    let (student_dims, teacher_dims) = (dims(student), dims(teacher));
    fn slices(dims: &[Vec<usize>]) -> Vec<&[usize]> {
        dims.iter().map(Vec::as_slice).collect()
    }
    let levels = PkdLevels::new(&slices(&student_dims), &slices(&teacher_dims))?;
    let first = &student[0];
    let device = first.device();
    for (level, (s, t)) in student.iter().zip(teacher).enumerate() {
        check_float_pair(s, t)?;
        if s.dtype() != first.dtype() {
            return Err(KdError::DTypeMismatch {
                what: format!("student level {level}"),
                expected: format!("{:?} (level 0's dtype: every level has one)", first.dtype()),
                got: format!("{:?}", s.dtype()),
            });
        }
        check_same_device(&format!("student level {level}"), &s.device(), &device)?;
        refuse_tracked_teacher(t, Pkd::LABEL)?;
    }
    if is_cuda(&device) && levels.len() > MAX_LEVELS {
        return Err(KdError::TooLarge {
            what: "PKD levels",
            detail: format!(
                "{} levels, but one CUDA call takes at most {MAX_LEVELS}; split them into several pkd_loss calls \
                 and add the losses",
                levels.len()
            ),
        });
    }
    Ok(levels)
}

/// PKD's packed call: the student's and the teacher's levels, each side packed into one tensor ([`PkdPacking`]);
/// the student's gradient, packed alike.
impl PackedLossFamily for Pkd {
    fn config(call: &PkdPacked) -> PkdConfig {
        call.config
    }

    fn cpu<T: NdArrayFloat>(call: &PkdPacked, tensors: CpuCall<'_>) -> Result<PackedCpuOutput> {
        let CpuCall { floats, want_grad, .. } = tensors;
        let packing = PkdPacking::new(&call.geometry);
        let (s, t) = (contiguous(T::storage("student", &floats[0])), contiguous(T::storage("teacher", &floats[1])));
        let (s, t) = (unpack::<T, Ix4>(&s, &packing.levels), unpack::<T, Ix4>(&t, &packing.levels));
        let pkd = PkdCpu::new(call.config)?;
        if !want_grad {
            return Ok(PackedCpuOutput { loss: pkd.forward(&s, &t)?, grads: Vec::new() });
        }
        let out = pkd.forward_backward(&s, &t)?;
        let packed: Vec<f64> = out.grad_student.iter().flat_map(|g| g.iter().copied()).collect();
        Ok(PackedCpuOutput { loss: out.loss, grads: vec![::ndarray::Array1::from_vec(packed).into_dyn()] })
    }

    fn with_shape<R>(call: &PkdPacked, _dims: &[Vec<usize>], f: impl FnOnce(&PkdLevels) -> Result<R>) -> Result<R> {
        f(&call.geometry)
    }

    /// Each level's address is the packed buffer's plus its offset ([`PkdPacking`]); the PKD kernels read
    /// element by element, so the offsets need no alignment beyond the element's.
    fn raw_buffers(call: &PkdPacked, at: &PackedAddresses<'_>) -> PkdRawBuffers {
        let packing = PkdPacking::new(&call.geometry);
        let levels = |base: u64| addresses(base, &packing.levels, at.dtype.size());
        PkdRawBuffers {
            student: levels(at.floats[0]),
            teacher: levels(at.floats[1]),
            loss: at.loss,
            grad_student: levels(at.grads[0]),
            upstream: 0,
        }
    }
}
