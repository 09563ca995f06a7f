//! The losses over more than a (student, teacher) pair as burn operations: CWT, PKD, IFVD and SemCKD share one
//! pair of primitives ([`KdBackend::packed_forward`] and [`KdBackend::packed_forward_backward`]) taking their
//! tensors as [`PackedInputs`] and a [`PackedConfig`], and each backend implements them once, generic over the
//! family ([`PackedLossFamily`], through a [`PackedJob`]). A family gets its burn operation from one row of
//! `packed_families!` and its own file (`src/cwt.rs`, ...): how its tensors are packed, its checked function,
//! and its [`PackedLossFamily`] implementation (its CPU reference call on NdArray, its raw buffers on CUDA).
//!
//! # Why this shape
//!
//! burn 0.22's `backend_extension` routes, per argument, a single `FloatTensor` or `IntTensor`, or a struct or
//! enum deriving burn's `ExtensionType` whose fields are single tensors; a `Vec` of tensors or an `Option` of
//! one is not an input it can route (`burn-backend-extension/src/extension.rs`, `lower_extension`: anything
//! else is passed through unconverted, which does not type-check across backends). Its outputs may be tuples,
//! `Option`s and `Vec`s of tensors. So:
//!
//! * a family's many tensors are packed into a few flat ones by its checked function (SemCKD's `S + T + S*T`
//!   maps into two, its `4(S + T)` parameters into one; PKD's levels into one per side; CWT's four parameters
//!   into one), and burn's autograd of the packing (a `cat` of reshapes) carries the gradients back;
//! * the packed tensors travel as one [`PackedInputs`], an `ExtensionType` enum with a variant per arity (two or
//!   three float tensors, or two and an integer one): no family passes placeholder tensors (a fixed arity
//!   would make PKD and IFVD allocate empty tensors on the device per call, and every backend tell real inputs
//!   from placeholders), and the backends see the floats as a list ([`PackedInputs::into_parts`]), so their
//!   code does not depend on the arity but where burn's autodiff needs it as a constant;
//! * the gradients come back as one `Option` per float input, in order ([`PackedFamilyRow::GRADS`] says which
//!   inputs have one), each in its input's dtype (SemCKD's f32 parameters under f64 maps).
//!
//! The integer input (IFVD's labels) is what only IFVD has; it is a variant of [`PackedInputs`] rather than a
//! primitive of its own because burn routes it as it routes the floats, and every backend handles it in the
//! same place as them (autodiff tracks no integers: it travels beside the tracked floats).

use std::fmt;
use std::ops::Range;

use ::burn::backend::tensor::{FloatTensor, IntTensor};
use ::burn::backend::{Backend, Dispatch, ExtensionType};
use ::burn::tensor::{DType, Device, Tensor};

use super::ndarray::{CpuTensor, NdArrayFloat};
use super::{KdBackend, PkdPacked, SemckdPacked};
use kd_kernels::cwt::{Cwt, CwtSetup};
use kd_kernels::dtype::{DType as KernelDType, LabelDType};
use kd_kernels::error::{KdError, Result};
use kd_kernels::family::Family;
use kd_kernels::ifvd::{Ifvd, IfvdConfig};
use kd_kernels::pkd::Pkd;
use kd_kernels::semckd::Semckd;

/// The packed tensors of one call, as burn routes them to a backend: a variant per arity.
#[derive(ExtensionType)]
pub enum PackedInputs<B: Backend> {
    /// Two float tensors (PKD: the packed student and teacher levels).
    Two(FloatTensor<B>, FloatTensor<B>),
    /// Three float tensors (CWT: student, teacher, packed parameters; SemCKD: packed maps, packed teacher maps,
    /// packed parameters).
    Three(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>),
    /// Two float tensors and an integer one (IFVD: student, teacher, labels).
    TwoLabelled(FloatTensor<B>, FloatTensor<B>, IntTensor<B>),
}

impl<B: Backend> PackedInputs<B> {
    /// The float tensors in order, and the integer one where there is one.
    pub fn into_parts(self) -> (Vec<FloatTensor<B>>, Option<IntTensor<B>>) {
        match self {
            PackedInputs::Two(a, b) => (vec![a, b], None),
            PackedInputs::Three(a, b, c) => (vec![a, b, c], None),
            PackedInputs::TwoLabelled(a, b, labels) => (vec![a, b], Some(labels)),
        }
    }

    /// The float tensors in order.
    pub fn floats(&self) -> Vec<&FloatTensor<B>> {
        match self {
            PackedInputs::Two(a, b) | PackedInputs::TwoLabelled(a, b, _) => vec![a, b],
            PackedInputs::Three(a, b, c) => vec![a, b, c],
        }
    }

    /// The inputs [`PackedInputs::into_parts`] gave, on another backend.
    ///
    /// # Panics
    ///
    /// On an arity no variant has (the backends only rebuild what they took apart).
    pub fn from_parts(floats: Vec<FloatTensor<B>>, labels: Option<IntTensor<B>>) -> Self {
        let arity = floats.len();
        let mut floats = floats.into_iter();
        let mut next = || floats.next().expect("counted");
        match (arity, labels) {
            (2, None) => PackedInputs::Two(next(), next()),
            (3, None) => PackedInputs::Three(next(), next(), next()),
            (2, Some(labels)) => PackedInputs::TwoLabelled(next(), next(), labels),
            (n, labels) => {
                panic!(
                    "kd_kernels_burn: no packed call takes {n} float tensors and {} integer ones",
                    labels.iter().len()
                )
            }
        }
    }
}

/// A family's configuration with the geometry of its packed tensors (which their flat dims do not give).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedCall<G, C> {
    /// Where each tensor lies in the packed ones (PKD's levels, SemCKD's layer table).
    pub geometry: G,
    /// The loss's configuration.
    pub config: C,
}

/// The device addresses of one packed call on CUDA, from which a family makes its raw buffers.
#[derive(Debug, Clone, Copy)]
pub struct PackedAddresses<'a> {
    /// The float inputs, in order, each contiguous.
    pub floats: &'a [u64],
    /// The integer input and its element type, where the call has one.
    pub labels: Option<(u64, LabelDType)>,
    /// The kernels' dtype of the first float input (the features'; parameters are f32).
    pub dtype: KernelDType,
    /// The loss (one f32).
    pub loss: u64,
    /// Per float input, its gradient, 0 where none is computed.
    pub grads: &'a [u64],
}

/// What a family's CPU reference returns to [`PackedLossFamily::cpu`]'s caller: the loss, and with gradients
/// asked for, one per float input [`PackedFamilyRow::GRADS`] marks, in order, each packed as its input.
pub struct PackedCpuOutput {
    /// The loss.
    pub loss: f64,
    /// The gradients (empty for the loss alone).
    pub grads: Vec<::ndarray::ArrayD<f64>>,
}

/// What a packed family's row of `packed_families!` gives it: its name, which inputs get gradients, what its
/// calls carry.
pub trait PackedFamilyRow {
    /// The loss's name in messages.
    const LABEL: &'static str;
    /// Per float input, in order, whether the loss computes its gradient.
    const GRADS: &'static [bool];
    /// What a call carries beside its tensors: the configuration, and the geometry where the packing hides it.
    type Call: Clone + PartialEq + fmt::Debug + Send + Sync + 'static;
}

/// A packed call's NdArray tensors as a family's CPU reference reads them, the features stored as the `T` of
/// [`PackedLossFamily::cpu`] (the checked function accepted them).
#[derive(Clone, Copy)]
pub struct CpuCall<'a> {
    /// The float inputs, in order.
    pub floats: &'a [CpuTensor],
    /// The integer input, where the call has one.
    pub labels: Option<&'a CpuTensor>,
    /// Whether the gradients are asked for (the loss alone otherwise).
    pub want_grad: bool,
}

/// A family whose burn primitives are the packed ones: its CPU reference on NdArray tensors and its raw buffers
/// on CUDA. Implemented in the family's own file; the rest comes from its row ([`PackedFamilyRow`]).
pub trait PackedLossFamily: Family + PackedFamilyRow {
    /// The configuration a loss object is made for (the cache key on CUDA).
    fn config(call: &Self::Call) -> Self::Config;

    /// The CPU reference on the call's NdArray tensors; the gradients as [`PackedCpuOutput`] says.
    fn cpu<T: NdArrayFloat>(call: &Self::Call, tensors: CpuCall<'_>) -> Result<PackedCpuOutput>;

    /// Checks the dims of the inputs (floats, then the integer one) against `call` and runs `f` on the
    /// kernels' shape.
    fn with_shape<R>(call: &Self::Call, dims: &[Vec<usize>], f: impl FnOnce(&Self::Shape) -> Result<R>) -> Result<R>;

    /// The family's raw buffers at `at`.
    fn raw_buffers(call: &Self::Call, at: &PackedAddresses<'_>) -> Self::RawBuffers;
}

/// Code generic over the family, run for the family a [`PackedConfig`] names.
pub trait PackedJob {
    /// What the job returns.
    type Out;
    /// Runs the job for family `F` and its call.
    fn run<F: PackedLossFamily>(self, call: F::Call) -> Self::Out;
}

/// The packed families' table: each row is a family's [`PackedConfig`] variant (documented by the row's doc
/// comment), what its calls carry, its marker, its name in messages and which float inputs get gradients (its
/// [`PackedFamilyRow`]); its [`PackedLossFamily`] implementation is in the family's file.
macro_rules! packed_families {
    ($($(#[$doc:meta])* $variant:ident($call:ty) => $family:ty, $label:literal, $grads:expr;)*) => {
        family_config_enum! {
            /// Which packed loss a packed primitive computes, with what its call carries.
            #[derive(Debug, Clone, PartialEq)]
            PackedConfig: PackedJob;
            $($(#[$doc])* $variant($call) => $family;)*
        }

        $(impl PackedFamilyRow for $family {
            const LABEL: &'static str = $label;
            const GRADS: &'static [bool] = &$grads;
            type Call = $call;
        })*
    };
}

packed_families! {
    /// CWT (`docs/losses.md` §5): student, teacher, the MLP's parameters packed ([`CwtPacking`](super::CwtPacking));
    /// gradients for the student and the parameters.
    Cwt(CwtSetup) => Cwt, "CWT", [true, false, true];
    /// PKD (`docs/losses.md` §7): the levels packed, one tensor per side ([`PkdPacking`](super::PkdPacking)); the
    /// student's gradient.
    Pkd(PkdPacked) => Pkd, "PKD", [true, false];
    /// IFVD (`docs/losses.md` §11): student, teacher and the integer labels; the student's gradient.
    Ifvd(IfvdConfig) => Ifvd, "IFVD", [true, false];
    /// SemCKD (`docs/losses.md` §4): maps, teacher maps and parameters packed
    /// ([`SemckdPacking`](super::SemckdPacking)); gradients for the maps and the parameters.
    Semckd(SemckdPacked) => Semckd, "SemCKD", [true, false, true];
}

impl PackedConfig {
    /// Per float input, in order, whether the loss computes its gradient.
    pub fn grads(&self) -> &'static [bool] {
        struct Grads;
        impl PackedJob for Grads {
            type Out = &'static [bool];
            fn run<F: PackedLossFamily>(self, _call: F::Call) -> &'static [bool] {
                F::GRADS
            }
        }
        self.clone().run(Grads)
    }
}

/// `grads`, the computed gradients in order, placed at the inputs `want` marks (one entry per float input).
///
/// # Panics
///
/// When `grads` holds fewer gradients than `want` marks.
pub(crate) fn scatter<T>(want: impl IntoIterator<Item = bool>, grads: impl IntoIterator<Item = T>) -> Vec<Option<T>> {
    let mut grads = grads.into_iter();
    want.into_iter().map(|w| w.then(|| grads.next().expect("a gradient per marked input"))).collect()
}

/// The checked inputs' packed loss, as a burn tensor.
pub(crate) fn packed_loss(inputs: PackedInputs<Dispatch>, config: PackedConfig) -> Tensor<1> {
    Tensor::from_dispatch(Dispatch::packed_forward(inputs, config))
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

/// Tensors of `shapes` flattened row-major and laid end to end: each one's shape and range of elements.
pub(crate) fn lay_out(shapes: impl Iterator<Item = Vec<usize>>) -> Vec<(Vec<usize>, Range<usize>)> {
    let mut start = 0;
    shapes
        .map(|shape| {
            let range = start..start + shape.iter().product::<usize>();
            start = range.end;
            (shape, range)
        })
        .collect()
}

/// The addresses of the tensors laid out as `parts` in a packed buffer at `base` of `size`-byte elements; none
/// for an absent buffer (`base` 0).
pub(crate) fn addresses(base: u64, parts: &[(Vec<usize>, Range<usize>)], size: usize) -> Vec<u64> {
    if base == 0 {
        return Vec::new();
    }
    parts.iter().map(|(_, range)| base + (range.start * size) as u64).collect()
}

/// The `N` addresses of a call whose count the family's packing fixes.
pub(crate) fn fixed<const N: usize>(list: &[u64]) -> [u64; N] {
    list.try_into().unwrap_or_else(|_| panic!("kd_kernels_burn: {} addresses where {N} are packed", list.len()))
}

/// Every input of a many-tensor loss on the first student's device.
pub(crate) fn check_same_device(what: &str, got: &Device, expected: &Device) -> Result<()> {
    if got != expected {
        return Err(KdError::Unsupported {
            what: "an input on another device",
            detail: format!(
                "{what} is on {got:?} but student[0] is on {expected:?}; move it with .to_device(&student[0].device())"
            ),
        });
    }
    Ok(())
}
