//! The (student, teacher) losses whose only gradient is the student's (DIST, SKD, CIRKD) as burn operations:
//! one pair of primitives for all of them ([`KdBackend::student_grad_forward`] and
//! [`KdBackend::student_grad_forward_backward`]) taking a [`StudentGradConfig`], and each backend's
//! implementation written once over the family contract ([`StudentGradFamily`]) through a [`StudentGradJob`].

use ::burn::backend::Dispatch;
use ::burn::tensor::Tensor;

use super::{check_float_pair, refuse_tracked_teacher, KdBackend};
use kd_kernels::cirkd::{Cirkd, CirkdConfig};
use kd_kernels::cpu::PairReference;
use kd_kernels::dist::{Dist, DistConfig};
use kd_kernels::error::Result;
use kd_kernels::family::StudentGradFamily;
use kd_kernels::skd::{Skd, SkdConfig};

/// Which loss a student-gradient primitive computes, with its configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StudentGradConfig {
    /// DIST (`docs/losses.md` §8): student and teacher of one shape.
    Dist(DistConfig),
    /// SKD (`docs/losses.md` §9): the teacher's channel count may differ.
    Skd(SkdConfig),
    /// CIRKD (`docs/losses.md` §10): the teacher's channel count may differ.
    Cirkd(CirkdConfig),
}

/// Code generic over the family, run for the family a [`StudentGradConfig`] names.
pub trait StudentGradJob {
    /// What the job returns.
    type Out;
    /// Runs the job for family `F` and its configuration.
    fn run<F: StudentGradFamily>(self, config: F::Config) -> Self::Out;
}

impl StudentGradConfig {
    /// Runs `job` for the family this configuration belongs to.
    pub fn run<J: StudentGradJob>(self, job: J) -> J::Out {
        match self {
            StudentGradConfig::Dist(c) => job.run::<Dist>(c),
            StudentGradConfig::Skd(c) => job.run::<Skd>(c),
            StudentGradConfig::Cirkd(c) => job.run::<Cirkd>(c),
        }
    }

    /// The loss's name in messages.
    fn name(self) -> &'static str {
        match self {
            StudentGradConfig::Dist(_) => "DIST",
            StudentGradConfig::Skd(_) => "SKD",
            StudentGradConfig::Cirkd(_) => "CIRKD",
        }
    }
}

/// DIST (`docs/losses.md` §8) between `student` and `teacher` logits (NCHW), as a differentiable one-element
/// tensor.
///
/// On an autodiff device the gradient reaches `student`. DIST has no teacher gradient: a tracked teacher is
/// refused (pass `teacher.detach()`).
pub fn dist_loss(student: Tensor<4>, teacher: Tensor<4>, config: &DistConfig) -> Result<Tensor<1>> {
    student_grad_loss(student, teacher, StudentGradConfig::Dist(*config))
}

/// SKD's pair-wise similarity loss (`docs/losses.md` §9) between student features `[N, Cs, H, W]` and teacher
/// features `[N, Ct, H, W]` (one float dtype; the channel counts may differ), as a differentiable one-element
/// tensor.
///
/// On an autodiff device the gradient reaches `student`. SKD has no teacher gradient: a tracked teacher is
/// refused (pass `teacher.detach()`).
pub fn skd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &SkdConfig) -> Result<Tensor<1>> {
    student_grad_loss(student, teacher, StudentGradConfig::Skd(*config))
}

/// CIRKD's mini-batch pixel-relation loss (`docs/losses.md` §10) between student features `[N, Cs, H, W]` and
/// teacher features `[N, Ct, H, W]` (one float dtype; the channel counts may differ), as a differentiable
/// one-element tensor.
///
/// On an autodiff device the gradient reaches `student`. CIRKD has no teacher gradient: a tracked teacher is
/// refused (pass `teacher.detach()`).
pub fn cirkd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &CirkdConfig) -> Result<Tensor<1>> {
    student_grad_loss(student, teacher, StudentGradConfig::Cirkd(*config))
}

/// Any of them, checked: the configuration and the shapes by the family, dtypes, devices, a tracked teacher.
pub fn student_grad_loss(student: Tensor<4>, teacher: Tensor<4>, config: StudentGradConfig) -> Result<Tensor<1>> {
    struct Check<'a>(&'a [usize], &'a [usize]);
    impl StudentGradJob for Check<'_> {
        type Out = Result<()>;
        fn run<F: StudentGradFamily>(self, config: F::Config) -> Result<()> {
            F::Reference::new(config)?;
            F::with_shape(self.0, self.1, |_| Ok(()))
        }
    }
    config.run(Check(student.shape().as_slice(), teacher.shape().as_slice()))?;
    check_float_pair(&student, &teacher)?;
    refuse_tracked_teacher(&teacher, config.name())?;
    Ok(Tensor::from_dispatch(Dispatch::student_grad_forward(student.into_dispatch(), teacher.into_dispatch(), config)))
}
