//! [`KdBackend`] for burn's `NdArray` backend, through the crate's CPU reference (f64 arithmetic).
//!
//! NdArray stores floats as `f32` or `f64`; the reference reads either without a copy (strided views are
//! fine) and the results are rounded to the input's type.

use ::burn::backend::ndarray::NdArrayTensor;
use ::burn::backend::NdArray;
use ::ndarray::{ArrayD, ArrayView, ArrayView4, ArrayViewD, Dimension, Ix4, IxDyn};

use super::packed::scatter;
use super::{
    CpuCall, KdBackend, PackedConfig, PackedInputs, PackedJob, PackedLossFamily, PairConfig, PairJob, PairLossFamily,
};
use kd_kernels::cpu::{CpuOutput, HostFloat, PairReference};
use kd_kernels::cwd::{CwdConfig, CwdCpu};
use kd_kernels::error::Result;
use kd_kernels::family::StudentGradFamily;
use kd_kernels::icsd::{IcsdConfig, IcsdCpu, IcsdCpuOutput};
use kd_kernels::pixel_kd::{PixelKdConfig, PixelKdCpu};
use std::ops::Range;

/// A tensor of burn's NdArray backend, as the CPU references read and write it (named here, in the module that
/// allows burn 0.22's deprecation of NdArray, for the families' own files).
pub type CpuTensor = NdArrayTensor;

/// A CPU reference of a loss over a (student, teacher) pair of one shape, for [`cpu_pair`].
pub trait CpuPairLoss: Sized {
    /// The loss's configuration.
    type Config;

    /// The reference for `config`, which it validates.
    fn new(config: Self::Config) -> Result<Self>;

    /// The loss alone (`want_grad` false, the gradients of the output are then empty) or the loss and its
    /// gradients.
    fn run<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        want_grad: bool,
    ) -> Result<CpuOutput>;
}

/// What a reference's `forward` or `forward_backward` returns (the loss alone, [`CpuOutput`], or a
/// family's own output), read as a [`CpuOutput`].
trait IntoCpuOutput {
    fn into_cpu_output(self) -> CpuOutput;
}

impl IntoCpuOutput for f64 {
    fn into_cpu_output(self) -> CpuOutput {
        CpuOutput { loss: self, grad_student: Default::default(), grad_teacher: None }
    }
}

impl IntoCpuOutput for CpuOutput {
    fn into_cpu_output(self) -> CpuOutput {
        self
    }
}

impl IntoCpuOutput for IcsdCpuOutput {
    fn into_cpu_output(self) -> CpuOutput {
        CpuOutput { loss: self.loss, grad_student: self.grad_student, grad_teacher: None }
    }
}

/// [`CpuPairLoss`] for references with `new(config)`, `forward(student, teacher)` and
/// `forward_backward(student, teacher)`.
macro_rules! cpu_pair_loss {
    ($($cpu:ident($config:ty)),* $(,)?) => {$(
        impl CpuPairLoss for $cpu {
            type Config = $config;

            fn new(config: $config) -> Result<Self> {
                $cpu::new(config)
            }

            fn run<T: HostFloat>(
                &self,
                student: ArrayView4<'_, T>,
                teacher: ArrayView4<'_, T>,
                want_grad: bool,
            ) -> Result<CpuOutput> {
                Ok(if want_grad {
                    self.forward_backward(student, teacher)?.into_cpu_output()
                } else {
                    self.forward(student, teacher)?.into_cpu_output()
                })
            }
        }
    )*};
}

cpu_pair_loss!(CwdCpu(CwdConfig), PixelKdCpu(PixelKdConfig), IcsdCpu(IcsdConfig));

/// [`CpuPairLoss`] for the CPU reference of a [`StudentGradFamily`] (DIST, SKD, CIRKD), through the calls
/// every such reference has.
pub struct StudentGradCpu<F: StudentGradFamily>(F::Reference);

impl<F: StudentGradFamily> CpuPairLoss for StudentGradCpu<F> {
    type Config = F::Config;

    fn new(config: F::Config) -> Result<Self> {
        F::Reference::new(config).map(StudentGradCpu)
    }

    fn run<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        want_grad: bool,
    ) -> Result<CpuOutput> {
        if want_grad {
            self.0.gradients(student, teacher, 1.0)
        } else {
            self.0.loss(student, teacher).map(IntoCpuOutput::into_cpu_output)
        }
    }
}

/// A [`PairConfig`]'s loss (and with `want_grad` its gradients) through its family's CPU reference: the pair
/// primitives' one body.
struct PairOnCpu {
    student: NdArrayTensor,
    teacher: NdArrayTensor,
    want_grad: bool,
}

impl PairJob for PairOnCpu {
    type Out = CpuPairOutput;
    fn run<F: PairLossFamily>(self, config: F::Config) -> CpuPairOutput {
        cpu_pair(&cpu(F::Cpu::new(config)), self.student, self.teacher, self.want_grad)
    }
}

/// What [`cpu_pair`] returns: the loss (shape `[1]`), and with `want_grad` the student's gradient and,
/// where the loss produced one, the teacher's; all in the input's float type.
pub struct CpuPairOutput {
    /// The loss, shape `[1]`.
    pub loss: NdArrayTensor,
    /// d loss / d student (with `want_grad`).
    pub grad_student: Option<NdArrayTensor>,
    /// d loss / d teacher (with `want_grad`, where the loss computes it).
    pub grad_teacher: Option<NdArrayTensor>,
}

/// Runs a CPU reference on two NdArray tensors of one float type.
///
/// # Panics
///
/// On inputs the checked functions of [this crate](crate) refuse (not rank 4, different shapes or float types,
/// an empty dimension); they never pass them.
pub fn cpu_pair<L: CpuPairLoss>(
    loss: &L,
    student: NdArrayTensor,
    teacher: NdArrayTensor,
    want_grad: bool,
) -> CpuPairOutput {
    fn go<T: NdArrayFloat, L: CpuPairLoss>(
        loss: &L,
        student: &NdArrayTensor,
        teacher: &NdArrayTensor,
        want_grad: bool,
    ) -> CpuPairOutput {
        let (s, t) = (view4(T::storage("student", student)), view4(T::storage("teacher", teacher)));
        let out = loss
            .run(s, t, want_grad)
            .unwrap_or_else(|e| panic!("kd_kernels_burn: input the checked functions refuse: {e}"));
        CpuPairOutput {
            loss: float_tensor::<T, _>(::ndarray::Array1::from_elem(1, out.loss)),
            grad_student: want_grad.then(|| float_tensor::<T, _>(out.grad_student)),
            grad_teacher: out.grad_teacher.map(float_tensor::<T, _>),
        }
    }
    match student {
        NdArrayTensor::F64(_) => go::<f64, L>(loss, &student, &teacher, want_grad),
        _ => go::<f32, L>(loss, &student, &teacher, want_grad),
    }
}

fn burn_dtype(t: &NdArrayTensor) -> ::burn::tensor::DType {
    use ::burn::backend::TensorMetadata;
    t.dtype()
}

/// A rank-4 view of a tensor the checked functions accepted as one.
pub(crate) fn view4<T>(view: ArrayViewD<'_, T>) -> ArrayView4<'_, T> {
    view_as::<T, Ix4>(view)
}

/// A view of the rank `D` the checked functions accepted.
pub(crate) fn view_as<T, D: Dimension>(view: ArrayViewD<'_, T>) -> ::ndarray::ArrayView<'_, T, D> {
    let shape = view.shape().to_vec();
    view.into_dimensionality::<D>().unwrap_or_else(|e| {
        panic!("kd_kernels_burn: a tensor of shape {shape:?} where rank {:?} is needed: {e}", D::NDIM)
    })
}

/// `a` rounded to `T`, as an NdArray tensor.
fn float_tensor<T: NdArrayFloat, D: Dimension>(a: ::ndarray::Array<f64, D>) -> NdArrayTensor {
    T::tensor(a.mapv(T::from_f64).into_dyn())
}

/// The float types NdArray stores, as the CPU references read and write them.
pub trait NdArrayFloat: HostFloat {
    /// Rounds from the reference's f64.
    fn from_f64(v: f64) -> Self;
    /// The elements of `t`, the input `what`, which stores this type.
    fn storage<'a>(what: &str, t: &'a NdArrayTensor) -> ArrayViewD<'a, Self>;
    /// A tensor owning `a`.
    fn tensor(a: ArrayD<Self>) -> NdArrayTensor;
}

macro_rules! ndarray_float {
    ($($t:ident: $variant:ident),*) => {$(
        impl NdArrayFloat for $t {
            fn from_f64(v: f64) -> Self {
                v as $t
            }

            fn storage<'a>(what: &str, t: &'a NdArrayTensor) -> ArrayViewD<'a, Self> {
                match t {
                    NdArrayTensor::$variant(s) => s.view(),
                    other => panic!(
                        "kd_kernels_burn: {what} must be {}, got {:?} (the checked functions refuse this)",
                        stringify!($t),
                        burn_dtype(other)
                    ),
                }
            }

            fn tensor(a: ArrayD<Self>) -> NdArrayTensor {
                a.into_shared().into()
            }
        }
    )*};
}

ndarray_float!(f32: F32, f64: F64);

/// Integer labels widened to `i64`, as the CPU reference reads them (exactly, for every integer type).
pub(crate) fn int_labels(labels: &NdArrayTensor) -> ArrayD<i64> {
    macro_rules! widen {
        ($($variant:ident),*) => {
            match labels {
                $(NdArrayTensor::$variant(s) => s.view().mapv(i64::from),)*
                other => panic!("kd_kernels_burn: labels must be integers, got {:?}", burn_dtype(other)),
            }
        };
    }
    widen!(I64, I32, I16, I8, U32, U16, U8)
}

/// A 1-D packed tensor's elements in order, borrowed when they are contiguous.
pub(crate) fn contiguous<T: Clone>(view: ArrayViewD<'_, T>) -> std::borrow::Cow<'_, [T]> {
    match view.to_slice() {
        Some(slice) => std::borrow::Cow::Borrowed(slice),
        None => std::borrow::Cow::Owned(view.iter().cloned().collect()),
    }
}

/// The tensors packed in `data` at `layout` (shape, range), as views.
pub(crate) fn unpack<'a, T, D: Dimension>(
    data: &'a [T],
    layout: &[(Vec<usize>, Range<usize>)],
) -> Vec<ArrayView<'a, T, D>> {
    layout
        .iter()
        .map(|(shape, range)| {
            let view = ArrayView::from_shape(IxDyn(shape), &data[range.clone()])
                .unwrap_or_else(|e| panic!("kd_kernels_burn: a packed tensor of shape {shape:?}: {e}"));
            view_as(view)
        })
        .collect()
}

impl KdBackend for NdArray {
    fn pair_forward(student: NdArrayTensor, teacher: NdArrayTensor, config: PairConfig) -> NdArrayTensor {
        config.run(PairOnCpu { student, teacher, want_grad: false }).loss
    }

    fn pair_forward_backward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        config: PairConfig,
    ) -> (NdArrayTensor, NdArrayTensor, Option<NdArrayTensor>) {
        let out = config.run(PairOnCpu { student, teacher, want_grad: true });
        (out.loss, expect_grad(out.grad_student), out.grad_teacher)
    }

    fn packed_forward(inputs: PackedInputs<Self>, config: PackedConfig) -> NdArrayTensor {
        config.run(PackedOnCpu { inputs, want_grad: false }).0
    }

    fn packed_forward_backward(
        inputs: PackedInputs<Self>,
        config: PackedConfig,
    ) -> (NdArrayTensor, Vec<Option<NdArrayTensor>>) {
        config.run(PackedOnCpu { inputs, want_grad: true })
    }
}

/// A [`PackedConfig`]'s loss (and with `want_grad` the gradients its family has) through the family's CPU
/// reference: the packed primitives' one body. The loss is returned in the first input's float type, each
/// gradient in its input's.
struct PackedOnCpu {
    inputs: PackedInputs<NdArray>,
    want_grad: bool,
}

impl PackedJob for PackedOnCpu {
    type Out = (NdArrayTensor, Vec<Option<NdArrayTensor>>);
    fn run<F: PackedLossFamily>(self, call: F::Call) -> Self::Out {
        let (floats, labels) = self.inputs.into_parts();
        let tensors = CpuCall { floats: &floats, labels: labels.as_ref(), want_grad: self.want_grad };
        let out = match floats[0] {
            NdArrayTensor::F64(_) => F::cpu::<f64>(&call, tensors),
            _ => F::cpu::<f32>(&call, tensors),
        };
        let out =
            out.unwrap_or_else(|e| panic!("kd_kernels_burn: {} input the checked functions refuse: {e}", F::LABEL));
        let loss = float_tensor_like(&floats[0], ::ndarray::Array1::from_elem(1, out.loss).into_dyn());
        let want = F::GRADS.iter().map(|&g| g && self.want_grad);
        let marked = floats.iter().zip(F::GRADS).filter(|(_, &g)| g).map(|(input, _)| input);
        let grads = marked.zip(out.grads).map(|(input, grad)| float_tensor_like(input, grad));
        (loss, scatter(want, grads))
    }
}

/// `a` rounded to the float type `like` stores.
fn float_tensor_like(like: &NdArrayTensor, a: ArrayD<f64>) -> NdArrayTensor {
    match like {
        NdArrayTensor::F64(_) => float_tensor::<f64, _>(a),
        _ => float_tensor::<f32, _>(a),
    }
}

fn cpu<L>(loss: Result<L>) -> L {
    loss.unwrap_or_else(|e| panic!("kd_kernels_burn: a configuration the checked functions refuse: {e}"))
}

fn expect_grad(grad: Option<NdArrayTensor>) -> NdArrayTensor {
    grad.expect("the CPU references return the student's gradient when asked for it")
}
