//! Pieces the CPU references share: the output type, the calls of a same-shape pair loss, input checks, and a
//! stable log-softmax.

use ndarray::{Array4, ArrayView4};

/// Re-exported here because every CPU reference is generic over it.
pub use crate::dtype::HostFloat;
use crate::error::Result;
use crate::shape::Nchw;

/// What a CPU reference returns: the loss and the gradients, in f64.
#[derive(Debug, Clone)]
pub struct CpuOutput {
    /// The scalar loss.
    pub loss: f64,
    /// d loss / d student (times the upstream gradient for `backward`). Empty (all dimensions 0) for
    /// `forward`.
    pub grad_student: Array4<f64>,
    /// d loss / d teacher, when the configuration asks for it.
    pub grad_teacher: Option<Array4<f64>>,
}

/// Checks that the pair has one non-empty NCHW shape, and returns it.
pub(crate) fn check_pair<T: HostFloat>(student: ArrayView4<'_, T>, teacher: ArrayView4<'_, T>) -> Result<Nchw> {
    check_pair_dims(student.shape(), teacher.shape())
}

/// [`check_pair`] on the dims.
pub(crate) fn check_pair_dims(student: &[usize], teacher: &[usize]) -> Result<Nchw> {
    let shape = Nchw::from_dims("student", student)?;
    shape.expect_same("teacher", teacher)?;
    Ok(shape)
}

/// One call of a (student, teacher) reference: the inputs, their checked shape (`Nchw` for a same-shape pair,
/// the relation losses' `RelationShapes`), the upstream gradient (d total / d loss) and whether gradients are
/// wanted. The references take it whole, so that their entry points share one signature and one input check.
#[derive(Clone, Copy)]
pub(crate) struct PairCall<'a, T, S = Nchw> {
    pub student: ArrayView4<'a, T>,
    pub teacher: ArrayView4<'a, T>,
    pub shape: S,
    pub upstream: f64,
    pub want_grad: bool,
}

impl<'a, T: HostFloat> PairCall<'a, T> {
    /// Checks the pair (see [`check_pair`]).
    pub(crate) fn new(
        student: ArrayView4<'a, T>,
        teacher: ArrayView4<'a, T>,
        upstream: f64,
        want_grad: bool,
    ) -> Result<Self> {
        Ok(PairCall { student, teacher, shape: check_pair(student, teacher)?, upstream, want_grad })
    }
}

/// `z - LSE(z)`, with the max subtracted first; finite for any finite input.
pub(crate) fn log_softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + z.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
    z.iter().map(|&v| v - lse).collect()
}

/// Declares a CPU reference, written as its struct `pub struct XCpu { config: XConfig }` (with its doc): the
/// struct and the constructor and accessor every reference has. The config has `validate()`, checked on
/// construction so that a reference never computes with an invalid configuration.
macro_rules! reference_config {
    ($(#[$attr:meta])* pub struct $cpu:ident { config: $config:ty }) => {
        $(#[$attr])*
        #[derive(Debug, Clone)]
        pub struct $cpu {
            config: $config,
        }

        impl $cpu {
            /// Validates `config`.
            pub fn new(config: $config) -> $crate::error::Result<Self> {
                config.validate()?;
                Ok($cpu { config })
            }

            /// The configuration.
            pub fn config(&self) -> &$config {
                &self.config
            }
        }
    };
}
pub(crate) use reference_config;

/// Declares the CPU reference of a (student, teacher) loss as [`reference_config!`] does, with its calls, which
/// all come to its `compute(student, teacher, upstream, want_grad)`. The literal after the struct is the doc
/// of `forward_backward` (which gradients it returns). With `same_shape` (CWD, pixel KD, DIST) or `relation`
/// (SKD, CIRKD: the teacher may have other channels; the literal is implied), `compute` is written here: it
/// checks the pair's shapes and hands the reference's `compute_pair` a [`PairCall`].
macro_rules! pair_reference_calls {
    ($(#[$attr:meta])* pub struct $cpu:ident { config: $config:ty } relation) => {
        $crate::cpu::pair_reference_calls!(@checked $cpu, $crate::relation::check_shapes);
        $crate::cpu::pair_reference_calls! {
            $(#[$attr])* pub struct $cpu { config: $config }
            "Loss and d loss / d student (`grad_teacher` is `None`). The teacher `[N, Ct, H, W]` may have another \
             channel count than the student `[N, Cs, H, W]`."
        }
    };
    ($(#[$attr:meta])* pub struct $cpu:ident { config: $config:ty } $forward_backward_doc:literal, same_shape) => {
        $crate::cpu::pair_reference_calls!(@checked $cpu, $crate::cpu::check_pair_dims);
        $crate::cpu::pair_reference_calls! { $(#[$attr])* pub struct $cpu { config: $config } $forward_backward_doc }
    };
    (@checked $cpu:ident, $check:path) => {
        impl $cpu {
            fn compute<T: $crate::dtype::HostFloat>(
                &self,
                student: ndarray::ArrayView4<'_, T>,
                teacher: ndarray::ArrayView4<'_, T>,
                upstream: f64,
                want_grad: bool,
            ) -> $crate::error::Result<$crate::cpu::CpuOutput> {
                let shape = $check(student.shape(), teacher.shape())?;
                self.compute_pair($crate::cpu::PairCall { student, teacher, shape, upstream, want_grad })
            }
        }
    };
    ($(#[$attr:meta])* pub struct $cpu:ident { config: $config:ty } $forward_backward_doc:literal) => {
        $crate::cpu::reference_config! { $(#[$attr])* pub struct $cpu { config: $config } }

        impl $cpu {
            /// The loss alone.
            pub fn forward<T: $crate::dtype::HostFloat>(
                &self,
                student: ndarray::ArrayView4<'_, T>,
                teacher: ndarray::ArrayView4<'_, T>,
            ) -> $crate::error::Result<f64> {
                Ok(self.compute(student, teacher, 1.0, false)?.loss)
            }

            #[doc = $forward_backward_doc]
            pub fn forward_backward<T: $crate::dtype::HostFloat>(
                &self,
                student: ndarray::ArrayView4<'_, T>,
                teacher: ndarray::ArrayView4<'_, T>,
            ) -> $crate::error::Result<$crate::cpu::CpuOutput> {
                self.compute(student, teacher, 1.0, true)
            }

            /// The gradients of [`Self::forward_backward`] times the upstream gradient `upstream` (d total /
            /// d loss); `loss` is filled too.
            pub fn backward<T: $crate::dtype::HostFloat>(
                &self,
                student: ndarray::ArrayView4<'_, T>,
                teacher: ndarray::ArrayView4<'_, T>,
                upstream: f64,
            ) -> $crate::error::Result<$crate::cpu::CpuOutput> {
                self.compute(student, teacher, upstream, true)
            }
        }

        impl $crate::cpu::PairReference for $cpu {
            type Config = $config;

            fn new(config: $config) -> $crate::error::Result<Self> {
                $cpu::new(config)
            }

            fn loss<T: $crate::dtype::HostFloat>(
                &self,
                student: ndarray::ArrayView4<'_, T>,
                teacher: ndarray::ArrayView4<'_, T>,
            ) -> $crate::error::Result<f64> {
                self.forward(student, teacher)
            }

            fn gradients<T: $crate::dtype::HostFloat>(
                &self,
                student: ndarray::ArrayView4<'_, T>,
                teacher: ndarray::ArrayView4<'_, T>,
                upstream: f64,
            ) -> $crate::error::Result<$crate::cpu::CpuOutput> {
                self.backward(student, teacher, upstream)
            }
        }
    };
}
pub(crate) use pair_reference_calls;

/// The calls of a (student, teacher) CPU reference that code generic over the family makes (the tensor
/// adapters, through [`crate::family::StudentGradFamily`]); every reference written with the pair calls has
/// them.
pub trait PairReference: Sized + Send + Sync + 'static {
    /// The loss's configuration.
    type Config;
    /// The reference for `config`, which it validates.
    fn new(config: Self::Config) -> Result<Self>;
    /// The loss alone.
    fn loss<T: HostFloat>(&self, student: ArrayView4<'_, T>, teacher: ArrayView4<'_, T>) -> Result<f64>;
    /// The loss and its gradients times `upstream` (d total / d loss).
    fn gradients<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        upstream: f64,
    ) -> Result<CpuOutput>;
}
