//! The losses of [kd-kernels](kd_kernels) as [burn](https://burn.dev) operations: `loss.backward()` in a burn graph
//! reaches the student through the crate's fused forward-and-backward.
//!
//! ```
//! # #![allow(deprecated)] // burn 0.22's NdArray
//! use burn::tensor::{Device, Distribution, Tensor};
//! use kd_kernels_burn::{cwd_loss, pixel_kd_loss};
//! use kd_kernels::{cwd::CwdConfig, pixel_kd::PixelKdConfig};
//!
//! # fn main() -> Result<(), kd_kernels::KdError> {
//! let device = Device::ndarray().autodiff();
//! let student = Tensor::<4>::random([2, 19, 16, 32], Distribution::Default, &device).require_grad();
//! let teacher = Tensor::<4>::random([2, 19, 16, 32], Distribution::Default, &device);
//! let loss = cwd_loss(student.clone(), teacher.clone(), &CwdConfig::default())?
//!     + pixel_kd_loss(student.clone(), teacher, &PixelKdConfig::default())?;
//! let grads = loss.backward();
//! let d_student = student.grad(&grads).expect("the gradient reaches the student");
//! assert_eq!(d_student.dims(), [2, 19, 16, 32]);
//! # Ok(())
//! # }
//! ```
//!
//! # How it is built
//!
//! [`KdBackend`] is a burn backend extension: one pair of primitives per kind of loss, the loss alone and the
//! loss with its gradients in one pass (what [`kd_kernels::cwd::CwdCuda::forward_backward`] computes). The
//! (student, teacher) losses (CWD, pixel KD, ICSD, DIST, SKD, CIRKD) share one pair, whose [`PairConfig`]
//! names the family, implemented once per backend generic over [`PairLossFamily`]; the losses over more
//! tensors (CWT, PKD, IFVD, SemCKD) share another, whose [`PackedConfig`] names the family and whose
//! [`PackedInputs`] carry its tensors, implemented once per backend generic over [`PackedLossFamily`]. It is
//! implemented for
//!
//! * burn's `NdArray` backend, through the crate's CPU reference (f64 arithmetic, inputs `f32` or `f64`,
//!   the float types NdArray stores; CWT in `f32`, as its parameters);
//! * `Autodiff<B>` for any `B: KdBackend`: the forward runs `B`'s fused primitive when an input is
//!   tracked and keeps the gradients; the backward step multiplies it by the upstream gradient (burn's custom
//!   backward pattern, [`Backward`](::burn::backend::autodiff::ops::Backward)). When nothing is tracked
//!   it runs the loss alone;
//! * with feature `cuda`, burn's cubecl backend on CUDA devices (`Device::cuda(..)`), through the
//!   kernels' raw layer on cubecl's buffers (module `cuda`: f32, f16 and bf16; CWT in f32; two host
//!   synchronisations per call, because cubecl does not expose its stream), and burn's `Fusion<B>`
//!   wrapper, which queues each primitive as a fusion custom operation (module `fusion`).
//!
//! The functions of this module ([`cwd_loss`], [`pixel_kd_loss`], [`icsd_loss`], [`aicsd_loss`],
//! [`dist_loss`], [`skd_loss`], [`cirkd_loss`], [`cwt_loss`], [`semckd_loss`], [`pkd_loss`], [`ifvd_loss`]) check their inputs and return a typed [`kd_kernels::KdError`] (shapes, dtypes,
//! devices, configuration, a tracked teacher the loss has no gradient for) before anything runs; they are
//! what a training step calls. The trait's primitives take checked inputs.
//!
//! burn 0.22's `backend_extension` routes single tensors (or structs and enums of them), not `Vec`s, so the
//! families with many tensors pack them into a few 1-D tensors ([`SemckdPacking`]: `S + T + S*T` maps and
//! `4(S + T)` parameters in three; [`PkdPacking`]: a list of levels in one per side; [`CwtPacking`]: four
//! parameters in one) and burn's own autograd of the packing carries the gradients back to each. IFVD's
//! labels are an integer tensor (`Tensor<3, Int>`, `i64`, `i32` or `u8`), routed beside its float inputs.
//! Gradients are computed in the forward: first order only.
//!
//! Adding a (student, teacher) family is one row of the table in `src/pair.rs` (its [`PairConfig`] variant,
//! its CPU reference, its core contract: [`SameShapePair`] or [`StudentGradPair`]) and its checked function
//! there. A family of more tensors is one row of the table in `src/packed.rs` (its [`PackedConfig`] variant,
//! what its calls carry, its marker, its name, which inputs get gradients) and its own file: its packing, its checked function and its
//! [`PackedLossFamily`] implementation (its CPU reference call, its raw buffers on CUDA). Another kind of
//! primitive adds its pair to [`KdBackend`], one implementation in each backend (the helpers
//! [`ndarray::cpu_pair`], [`autodiff::fused`], `cuda::run` and `fusion::lazy` do the work) and a checked
//! function.

/// A configuration enum with a variant per family of a table (each row's doc comment documents its variant), and
/// its `run`, which runs a job generic over the family the configuration belongs to: the common part of the
/// tables in `src/pair.rs` and `src/packed.rs`.
macro_rules! family_config_enum {
    ($(#[$attr:meta])* $name:ident: $job:ident; $($(#[$doc:meta])* $variant:ident($config:ty) => $family:ty;)*) => {
        $(#[$attr])*
        pub enum $name {
            $($(#[$doc])* $variant($config),)*
        }

        impl $name {
            /// Runs `job` for the family this configuration belongs to.
            pub fn run<J: $job>(self, job: J) -> J::Out {
                match self {
                    $($name::$variant(c) => job.run::<$family>(c),)*
                }
            }
        }
    };
}

pub mod autodiff;
mod backend;
#[cfg(feature = "cuda")]
pub mod cuda;
mod cwt;
#[cfg(feature = "cuda")]
pub mod fusion;
// burn 0.22 deprecates NdArray in favour of its Flex backend; NdArray is the CPU backend this crate covers.
mod ifvd;
#[allow(deprecated)]
pub mod ndarray;
mod packed;
mod pair;
mod pkd;
pub mod reference;
mod semckd;

pub use backend::KdBackend;
pub use cwt::{cwt_loss, CwtMlp, CwtPacking};
pub use ifvd::ifvd_loss;
pub use packed::{
    CpuCall, PackedAddresses, PackedCall, PackedConfig, PackedCpuOutput, PackedFamilyRow, PackedInputs, PackedJob,
    PackedLossFamily,
};
pub use pair::{
    cirkd_loss, cwd_loss, dist_loss, icsd_loss, pair_loss, pixel_kd_loss, skd_loss, PairConfig, PairContract, PairJob,
    PairLossFamily, SameShapePair, StudentGradPair,
};
pub use pkd::{pkd_loss, PkdPacked, PkdPacking};
pub use semckd::{semckd_loss, SemckdMlp, SemckdPacked, SemckdPacking};

use ::burn::backend::DispatchDevice;
use ::burn::tensor::{DType, Device, Tensor};

use kd_kernels::error::{KdError, Result};
use kd_kernels::icsd::AicsdConfig;

/// AICSD's distillation terms at `epoch` (`docs/losses.md` §3.10): `alpha * L_ICS + (1 - alpha) * L_KD`,
/// `alpha = config.alpha(epoch)`, composed of [`icsd_loss`] and [`pixel_kd_loss`] in the burn graph. The
/// task loss is the caller's: officially `alpha * L_CE` is added to this.
pub fn aicsd_loss(student: Tensor<4>, teacher: Tensor<4>, epoch: f64, config: &AicsdConfig) -> Result<Tensor<1>> {
    config.validate()?;
    let alpha = config.alpha(epoch)?;
    let ics = icsd_loss(student.clone(), teacher.clone(), &config.icsd)?;
    let kd = pixel_kd_loss(student, teacher, &config.kd)?;
    Ok(ics * alpha + kd * (1.0 - alpha))
}

/// The backends [`KdBackend`] is implemented for: burn routes the others to a panic, so they are refused
/// here first.
fn covered_backend(device: &Device) -> Result<()> {
    #[allow(deprecated)] // burn 0.22's NdArray
    match device.clone().inner().as_dispatch() {
        DispatchDevice::NdArray(_) => Ok(()),
        #[cfg(feature = "cuda")]
        DispatchDevice::Cube(burn_cubecl::CubeDevice::Cuda(_)) => Ok(()),
        #[allow(unreachable_patterns)]
        other => Err(KdError::Unsupported {
            what: "this burn backend",
            detail: format!(
                "kd_kernels_burn runs on burn's NdArray backend and, with feature cuda, on its CUDA devices \
                 (with or without autodiff), not on {other:?}; kd_kernels_burn::reference has the same losses \
                 in burn's tensor operations"
            ),
        }),
    }
}

/// Whether `device` is a CUDA device of burn's cubecl backend (where the kernels have no f64).
fn is_cuda(device: &Device) -> bool {
    #[cfg(feature = "cuda")]
    {
        matches!(device.clone().inner().as_dispatch(), DispatchDevice::Cube(burn_cubecl::CubeDevice::Cuda(_)))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        false
    }
}

fn other_device(what: &'static str, expected: &Device, got: &Device) -> KdError {
    KdError::Unsupported {
        what,
        detail: format!(
            "it is on {got:?} but the student is on {expected:?}; move it with .to_device(&student.device())"
        ),
    }
}

/// A loss without a teacher gradient refuses a tracked teacher, which would silently get none.
fn refuse_tracked_teacher(teacher: &Tensor<4>, loss: &str) -> Result<()> {
    if teacher_is_tracked(teacher) {
        return Err(KdError::Unsupported {
            what: "a teacher tracked by autodiff",
            detail: format!(
                "{loss} has no teacher gradient, so the teacher would get none; pass teacher.detach() (a leaf \
                 marked require_grad: set_require_grad(false))"
            ),
        });
    }
    Ok(())
}

fn teacher_is_tracked(teacher: &Tensor<4>) -> bool {
    teacher.is_autodiff() && teacher.is_tracked()
}

/// The float dtypes the losses read: NdArray stores `f32` and `f64`; GPU backends add `f16` and `bf16`.
fn supported_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F64 | DType::F32 | DType::Flex32 | DType::F16 | DType::BF16)
}

/// One supported float dtype and one covered device for `student` and `teacher`, whatever their shapes.
pub(crate) fn check_float_pair(student: &Tensor<4>, teacher: &Tensor<4>) -> Result<()> {
    let (ds, dt) = (student.dtype(), teacher.dtype());
    if !supported_dtype(ds) {
        return Err(KdError::DTypeMismatch {
            what: "student".into(),
            expected: "a float dtype (f64, f32, f16, bf16)".into(),
            got: format!("{ds:?}"),
        });
    }
    if dt != ds {
        return Err(KdError::DTypeMismatch {
            what: "teacher".into(),
            expected: format!("{ds:?} (the student's dtype)"),
            got: format!("{dt:?}"),
        });
    }
    let (device, other) = (student.device(), teacher.device());
    if other != device {
        return Err(other_device("teacher", &device, &other));
    }
    covered_backend(&device)?;
    if ds == DType::F64 && is_cuda(&device) {
        return Err(KdError::DTypeMismatch {
            what: "student".into(),
            expected: "f32, f16 or bf16 (the kernels' dtypes on a CUDA device)".into(),
            got: "F64".into(),
        });
    }
    Ok(())
}
