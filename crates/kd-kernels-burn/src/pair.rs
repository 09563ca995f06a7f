//! The (student, teacher) losses as burn operations: CWD, pixel KD, ICSD, DIST, SKD and CIRKD share one pair of
//! primitives ([`KdBackend::pair_forward`] and [`KdBackend::pair_forward_backward`]) taking a [`PairConfig`],
//! and each backend implements them once, generic over the family ([`PairLossFamily`], through a
//! [`PairJob`]). A (student, teacher) family gets its burn operation from one row of [`pair_families!`]: its
//! [`PairConfig`] variant, its CPU reference on NdArray and which core contract gives its shapes and raw
//! buffers on CUDA ([`SameShapePair`] or [`StudentGradPair`]).

use ::burn::backend::Dispatch;
use ::burn::tensor::Tensor;

use super::ndarray::{CpuPairLoss, StudentGradCpu};
use super::{check_float_pair, refuse_tracked_teacher, teacher_is_tracked, KdBackend};
use kd_kernels::cirkd::{Cirkd, CirkdConfig};
use kd_kernels::cwd::{Cwd, CwdConfig, CwdCpu};
use kd_kernels::dist::{Dist, DistConfig};
use kd_kernels::error::{KdError, Result};
use kd_kernels::family::{Family, PairFamily, PairRawBuffers, StudentGradFamily};
use kd_kernels::icsd::{Icsd, IcsdConfig, IcsdCpu};
use kd_kernels::pixel_kd::{PixelKd, PixelKdConfig, PixelKdCpu};
use kd_kernels::shape::Nchw;
use kd_kernels::skd::{Skd, SkdConfig};

/// A (student, teacher) family as the burn primitives run it: its name in messages, its CPU reference (the
/// NdArray backend) and the core contract that checks its two shapes and makes its raw buffers from the
/// pair's device addresses (the CUDA backend).
pub trait PairLossFamily: Family {
    /// The loss's name in messages.
    const LABEL: &'static str;
    /// The CPU reference, as NdArray runs it.
    type Cpu: CpuPairLoss<Config = Self::Config>;
    /// The core contract the family's pair calls go through.
    type Contract: PairContract<Self>;

    /// Whether `config` asks for the teacher's gradient as well.
    fn teacher_grad(config: &Self::Config) -> bool {
        Self::Contract::teacher_grad(config)
    }

    /// Checks the student's and the teacher's dims and runs `f` on the call's shape.
    fn with_shape<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&Self::Shape) -> Result<R>) -> Result<R> {
        Self::Contract::with_shape(student, teacher, f)
    }

    /// The family's raw buffers for a pair call.
    fn raw_buffers(pair: PairRawBuffers) -> Result<Self::RawBuffers> {
        Self::Contract::raw_buffers(pair)
    }
}

/// How a core contract gives a (student, teacher) family's pair calls: written once per contract, so a family
/// names its contract instead of writing these.
pub trait PairContract<F: Family + ?Sized> {
    /// Whether `config` asks for the teacher's gradient as well.
    fn teacher_grad(config: &F::Config) -> bool;
    /// Checks the student's and the teacher's dims and runs `f` on the call's shape.
    fn with_shape<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&F::Shape) -> Result<R>) -> Result<R>;
    /// The family's raw buffers for a pair call.
    fn raw_buffers(pair: PairRawBuffers) -> Result<F::RawBuffers>;
}

/// A [`PairFamily`]: student and teacher of one `[N, C, H, W]` shape, a teacher gradient where the
/// configuration asks for it (CWD).
pub struct SameShapePair;

impl<F: PairFamily> PairContract<F> for SameShapePair {
    fn teacher_grad(config: &F::Config) -> bool {
        F::teacher_grad(config)
    }

    fn with_shape<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&[usize]) -> Result<R>) -> Result<R> {
        Nchw::from_dims("student", student)?.expect_same("teacher", teacher)?;
        f(student)
    }

    fn raw_buffers(pair: PairRawBuffers) -> Result<F::RawBuffers> {
        F::pair_raw(pair)
    }
}

/// A [`StudentGradFamily`]: the student's gradient alone, the teacher's shape checked by the family (SKD's and
/// CIRKD's channel counts may differ).
pub struct StudentGradPair;

impl<F: StudentGradFamily> PairContract<F> for StudentGradPair {
    fn teacher_grad(_config: &F::Config) -> bool {
        false
    }

    fn with_shape<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&F::Shape) -> Result<R>) -> Result<R> {
        F::with_shape(student, teacher, f)
    }

    fn raw_buffers(pair: PairRawBuffers) -> Result<F::RawBuffers> {
        F::raw_buffers(pair)
    }
}

/// Code generic over the family, run for the family a [`PairConfig`] names.
pub trait PairJob {
    /// What the job returns.
    type Out;
    /// Runs the job for family `F` and its configuration.
    fn run<F: PairLossFamily>(self, config: F::Config) -> Self::Out;
}

/// The (student, teacher) families' table: each row is a family's [`PairConfig`] variant (documented by the
/// row's doc comment), its marker, its name in messages, its CPU reference and its [`PairContract`].
macro_rules! pair_families {
    ($($(#[$doc:meta])* $variant:ident($config:ty) => $family:ty, $label:literal, $cpu:ty, $contract:ty;)*) => {
        family_config_enum! {
            /// Which (student, teacher) loss a pair primitive computes, with its configuration.
            #[derive(Debug, Clone, Copy, PartialEq)]
            PairConfig: PairJob;
            $($(#[$doc])* $variant($config) => $family;)*
        }

        $(impl PairLossFamily for $family {
            const LABEL: &'static str = $label;
            type Cpu = $cpu;
            type Contract = $contract;
        })*
    };
}

pair_families! {
    /// CWD (`docs/losses.md` §1.3): student and teacher of one shape; the teacher's gradient with `teacher_grad`.
    Cwd(CwdConfig) => Cwd, "CWD", CwdCpu, SameShapePair;
    /// Pixel KD (`docs/losses.md` §2): student and teacher of one shape.
    PixelKd(PixelKdConfig) => PixelKd, "pixel KD", PixelKdCpu, SameShapePair;
    /// ICSD's `L_ICS` (`docs/losses.md` §3.4, §3.7): student and teacher of one shape.
    Icsd(IcsdConfig) => Icsd, "ICSD", IcsdCpu, SameShapePair;
    /// DIST (`docs/losses.md` §8): student and teacher of one shape.
    Dist(DistConfig) => Dist, "DIST", StudentGradCpu<Dist>, StudentGradPair;
    /// SKD (`docs/losses.md` §9): the teacher's channel count may differ.
    Skd(SkdConfig) => Skd, "SKD", StudentGradCpu<Skd>, StudentGradPair;
    /// CIRKD (`docs/losses.md` §10): the teacher's channel count may differ.
    Cirkd(CirkdConfig) => Cirkd, "CIRKD", StudentGradCpu<Cirkd>, StudentGradPair;
}

impl PairConfig {
    /// Whether the configuration asks for the teacher's gradient as well (CWD with `teacher_grad`).
    pub fn teacher_grad(self) -> bool {
        struct TeacherGrad;
        impl PairJob for TeacherGrad {
            type Out = bool;
            fn run<F: PairLossFamily>(self, config: F::Config) -> bool {
                F::teacher_grad(&config)
            }
        }
        self.run(TeacherGrad)
    }
}

/// CWD between `student` and `teacher` logits (NCHW), as a differentiable one-element tensor.
///
/// On an autodiff device the gradient reaches `student` (and `teacher`, with `config.teacher_grad`).
/// A tracked teacher without `teacher_grad` is refused: detach it (`teacher.detach()`) or ask for its
/// gradient.
pub fn cwd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &CwdConfig) -> Result<Tensor<1>> {
    pair_loss(student, teacher, PairConfig::Cwd(*config))
}

/// Pixel-wise KD between `student` and `teacher` logits (NCHW), as a differentiable one-element tensor.
///
/// On an autodiff device the gradient reaches `student`. Pixel KD has no teacher gradient: a tracked
/// teacher is refused (pass `teacher.detach()`).
pub fn pixel_kd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &PixelKdConfig) -> Result<Tensor<1>> {
    pair_loss(student, teacher, PairConfig::PixelKd(*config))
}

/// ICSD's inter-class similarity loss `L_ICS` (`docs/losses.md` §3) between `student` and `teacher` logits
/// (NCHW), as a differentiable one-element tensor.
///
/// On an autodiff device the gradient reaches `student`. ICSD has no teacher gradient: a tracked teacher
/// is refused (pass `teacher.detach()`).
pub fn icsd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &IcsdConfig) -> Result<Tensor<1>> {
    pair_loss(student, teacher, PairConfig::Icsd(*config))
}

/// DIST (`docs/losses.md` §8) between `student` and `teacher` logits (NCHW), as a differentiable one-element
/// tensor.
///
/// On an autodiff device the gradient reaches `student`. DIST has no teacher gradient: a tracked teacher is
/// refused (pass `teacher.detach()`).
pub fn dist_loss(student: Tensor<4>, teacher: Tensor<4>, config: &DistConfig) -> Result<Tensor<1>> {
    pair_loss(student, teacher, PairConfig::Dist(*config))
}

/// SKD's pair-wise similarity loss (`docs/losses.md` §9) between student features `[N, Cs, H, W]` and teacher
/// features `[N, Ct, H, W]` (one float dtype; the channel counts may differ), as a differentiable one-element
/// tensor.
///
/// On an autodiff device the gradient reaches `student`. SKD has no teacher gradient: a tracked teacher is
/// refused (pass `teacher.detach()`).
pub fn skd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &SkdConfig) -> Result<Tensor<1>> {
    pair_loss(student, teacher, PairConfig::Skd(*config))
}

/// CIRKD's mini-batch pixel-relation loss (`docs/losses.md` §10) between student features `[N, Cs, H, W]` and
/// teacher features `[N, Ct, H, W]` (one float dtype; the channel counts may differ), as a differentiable
/// one-element tensor.
///
/// On an autodiff device the gradient reaches `student`. CIRKD has no teacher gradient: a tracked teacher is
/// refused (pass `teacher.detach()`).
pub fn cirkd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &CirkdConfig) -> Result<Tensor<1>> {
    pair_loss(student, teacher, PairConfig::Cirkd(*config))
}

/// Any of them, checked: the configuration and the shapes by the family, dtypes, devices, a tracked teacher
/// the loss has no gradient for.
pub fn pair_loss(student: Tensor<4>, teacher: Tensor<4>, config: PairConfig) -> Result<Tensor<1>> {
    struct Check<'a>(&'a [usize], &'a [usize]);
    impl PairJob for Check<'_> {
        type Out = Result<&'static str>;
        fn run<F: PairLossFamily>(self, config: F::Config) -> Result<&'static str> {
            F::Cpu::new(config)?;
            F::with_shape(self.0, self.1, |_| Ok(()))?;
            Ok(F::LABEL)
        }
    }
    let label = config.run(Check(student.shape().as_slice(), teacher.shape().as_slice()))?;
    check_float_pair(&student, &teacher)?;
    match config {
        // CWD has a teacher gradient to ask for: the message says so.
        PairConfig::Cwd(_) if teacher_is_tracked(&teacher) && !config.teacher_grad() => {
            return Err(KdError::OutputMismatch {
                what: "teacher",
                fix: "the teacher is tracked by autodiff but CwdConfig::teacher_grad is off, so it would get no \
                      gradient; pass teacher.detach() (a leaf marked require_grad: set_require_grad(false)), or \
                      set teacher_grad",
            })
        }
        _ if !config.teacher_grad() => refuse_tracked_teacher(&teacher, label)?,
        _ => {}
    }
    Ok(Tensor::from_dispatch(Dispatch::pair_forward(student.into_dispatch(), teacher.into_dispatch(), config)))
}
