//! [`KdBackend`] for burn's `NdArray` backend, through the crate's CPU reference (f64 arithmetic).
//!
//! NdArray stores floats as `f32` or `f64`; the reference reads either without a copy (strided views are
//! fine) and the results are rounded to the input's type.

use ::burn::backend::ndarray::{NdArrayTensor, SharedArray};
use ::burn::backend::NdArray;
use ::ndarray::{ArrayView1, ArrayView2, ArrayView4, ArrayViewD, Dimension, Ix4};

use super::KdBackend;
use crate::cpu::{CpuOutput, HostFloat};
use crate::cwd::{CwdConfig, CwdCpu};
use crate::cwt::{CwtConfig, CwtCpu, MlpParams};
use crate::error::Result;
use crate::icsd::{IcsdConfig, IcsdCpu, IcsdCpuOutput};
use crate::pixel_kd::{PixelKdConfig, PixelKdCpu};

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
/// On inputs the checked functions of [`crate::burn`] refuse (not rank 4, different shapes or float types,
/// an empty dimension); they never pass them.
pub fn cpu_pair<L: CpuPairLoss>(
    loss: &L,
    student: NdArrayTensor,
    teacher: NdArrayTensor,
    want_grad: bool,
) -> CpuPairOutput {
    fn go<T, L>(loss: &L, student: ArrayView4<'_, T>, teacher: ArrayView4<'_, T>, want_grad: bool) -> CpuPairOutput
    where
        T: HostFloat + FromF64,
        L: CpuPairLoss,
        NdArrayTensor: From<SharedArray<T>>,
    {
        let out = loss
            .run(student, teacher, want_grad)
            .unwrap_or_else(|e| panic!("kd_kernels::burn: input the checked functions refuse: {e}"));
        let to_tensor =
            |a: ::ndarray::Array4<f64>| -> NdArrayTensor { a.mapv(T::from_f64).into_dyn().into_shared().into() };
        let loss = ::ndarray::Array1::from_elem(1, T::from_f64(out.loss)).into_dyn().into_shared().into();
        CpuPairOutput {
            loss,
            grad_student: want_grad.then(|| to_tensor(out.grad_student)),
            grad_teacher: out.grad_teacher.map(to_tensor),
        }
    }
    match (&student, &teacher) {
        (NdArrayTensor::F32(s), NdArrayTensor::F32(t)) => go(loss, view4(s.view()), view4(t.view()), want_grad),
        (NdArrayTensor::F64(s), NdArrayTensor::F64(t)) => go(loss, view4(s.view()), view4(t.view()), want_grad),
        (s, t) => panic!(
            "kd_kernels::burn: NdArray student {:?} and teacher {:?}: the losses read two f32 or two f64 tensors",
            burn_dtype(s),
            burn_dtype(t)
        ),
    }
}

fn burn_dtype(t: &NdArrayTensor) -> ::burn::tensor::DType {
    use ::burn::backend::TensorMetadata;
    t.dtype()
}

fn view4<T>(view: ArrayViewD<'_, T>) -> ArrayView4<'_, T> {
    view_as::<T, Ix4>(view)
}

fn view_as<T, D: Dimension>(view: ArrayViewD<'_, T>) -> ::ndarray::ArrayView<'_, T, D> {
    let shape = view.shape().to_vec();
    view.into_dimensionality::<D>().unwrap_or_else(|e| {
        panic!("kd_kernels::burn: a tensor of shape {shape:?} where rank {:?} is needed: {e}", D::NDIM)
    })
}

fn f32_storage<'a>(what: &str, t: &'a NdArrayTensor) -> ArrayViewD<'a, f32> {
    match t {
        NdArrayTensor::F32(s) => s.view(),
        other => panic!("kd_kernels::burn: CWT's {what} must be f32, got {:?}", burn_dtype(other)),
    }
}

fn f32_tensor<D: Dimension>(a: ::ndarray::Array<f64, D>) -> NdArrayTensor {
    a.mapv(|v| v as f32).into_dyn().into_shared().into()
}

/// CWT through its CPU reference: every tensor f32 (the checked function refuses others on NdArray).
#[allow(clippy::too_many_arguments)]
fn cwt_cpu(
    student: &NdArrayTensor,
    teacher: &NdArrayTensor,
    w1: &NdArrayTensor,
    b1: &NdArrayTensor,
    w2: &NdArrayTensor,
    b2: &NdArrayTensor,
    config: CwtConfig,
    want_grad: bool,
) -> crate::cwt::CwtOutput {
    let w1: ArrayView2<'_, f32> = view_as(f32_storage("w1", w1));
    let b1: ArrayView1<'_, f32> = view_as(f32_storage("b1", b1));
    let w2: ArrayView2<'_, f32> = view_as(f32_storage("w2", w2));
    let b2: ArrayView1<'_, f32> = view_as(f32_storage("b2", b2));
    let params = MlpParams { w1, b1, w2, b2 };
    let (s, t) = (view4(f32_storage("student", student)), view4(f32_storage("teacher", teacher)));
    let cwt = cpu(CwtCpu::new(config));
    let out = if want_grad {
        cwt.forward_backward(s, t, &params)
    } else {
        cwt.forward(s, t, &params).map(|loss| crate::cwt::CwtOutput {
            loss,
            grad_student: Default::default(),
            grad_w1: Default::default(),
            grad_b1: Default::default(),
            grad_w2: Default::default(),
            grad_b2: Default::default(),
        })
    };
    out.unwrap_or_else(|e| panic!("kd_kernels::burn: input the checked functions refuse: {e}"))
}

/// Rounding from the reference's f64 to the tensor's float type.
trait FromF64 {
    fn from_f64(v: f64) -> Self;
}

impl FromF64 for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl FromF64 for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
}

impl KdBackend for NdArray {
    fn cwd_forward(student: NdArrayTensor, teacher: NdArrayTensor, config: CwdConfig) -> NdArrayTensor {
        pair_loss::<CwdCpu>(config, student, teacher)
    }

    fn cwd_forward_backward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        config: CwdConfig,
    ) -> (NdArrayTensor, NdArrayTensor, Option<NdArrayTensor>) {
        let out = cpu_pair(&cpu(CwdCpu::new(config)), student, teacher, true);
        (out.loss, expect_grad(out.grad_student), out.grad_teacher)
    }

    fn pixel_kd_forward(student: NdArrayTensor, teacher: NdArrayTensor, config: PixelKdConfig) -> NdArrayTensor {
        pair_loss::<PixelKdCpu>(config, student, teacher)
    }

    fn pixel_kd_forward_backward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        config: PixelKdConfig,
    ) -> (NdArrayTensor, NdArrayTensor) {
        pair_loss_and_student_grad::<PixelKdCpu>(config, student, teacher)
    }

    fn icsd_forward(student: NdArrayTensor, teacher: NdArrayTensor, config: IcsdConfig) -> NdArrayTensor {
        pair_loss::<IcsdCpu>(config, student, teacher)
    }

    fn icsd_forward_backward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        config: IcsdConfig,
    ) -> (NdArrayTensor, NdArrayTensor) {
        pair_loss_and_student_grad::<IcsdCpu>(config, student, teacher)
    }

    fn cwt_forward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        w1: NdArrayTensor,
        b1: NdArrayTensor,
        w2: NdArrayTensor,
        b2: NdArrayTensor,
        config: CwtConfig,
    ) -> NdArrayTensor {
        let out = cwt_cpu(&student, &teacher, &w1, &b1, &w2, &b2, config, false);
        f32_tensor(::ndarray::Array1::from_elem(1, out.loss))
    }

    fn cwt_forward_backward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        w1: NdArrayTensor,
        b1: NdArrayTensor,
        w2: NdArrayTensor,
        b2: NdArrayTensor,
        config: CwtConfig,
    ) -> (NdArrayTensor, NdArrayTensor, NdArrayTensor, NdArrayTensor, NdArrayTensor, NdArrayTensor) {
        let out = cwt_cpu(&student, &teacher, &w1, &b1, &w2, &b2, config, true);
        (
            f32_tensor(::ndarray::Array1::from_elem(1, out.loss)),
            f32_tensor(out.grad_student),
            f32_tensor(out.grad_w1),
            f32_tensor(out.grad_b1),
            f32_tensor(out.grad_w2),
            f32_tensor(out.grad_b2),
        )
    }
}

/// A pair loss alone, through its CPU reference.
fn pair_loss<L: CpuPairLoss>(config: L::Config, student: NdArrayTensor, teacher: NdArrayTensor) -> NdArrayTensor {
    cpu_pair(&cpu(L::new(config)), student, teacher, false).loss
}

/// A pair loss and d loss / d student, through its CPU reference.
fn pair_loss_and_student_grad<L: CpuPairLoss>(
    config: L::Config,
    student: NdArrayTensor,
    teacher: NdArrayTensor,
) -> (NdArrayTensor, NdArrayTensor) {
    let out = cpu_pair(&cpu(L::new(config)), student, teacher, true);
    (out.loss, expect_grad(out.grad_student))
}

fn cpu<L>(loss: Result<L>) -> L {
    loss.unwrap_or_else(|e| panic!("kd_kernels::burn: a configuration the checked functions refuse: {e}"))
}

fn expect_grad(grad: Option<NdArrayTensor>) -> NdArrayTensor {
    grad.expect("cpu_pair returns the student's gradient when asked for it")
}
