//! [`KdBackend`] for burn's `NdArray` backend, through the crate's CPU reference (f64 arithmetic).
//!
//! NdArray stores floats as `f32` or `f64`; the reference reads either without a copy (strided views are
//! fine) and the results are rounded to the input's type.

use ::burn::backend::ndarray::NdArrayTensor;
use ::burn::backend::NdArray;
use ::ndarray::{ArrayD, ArrayView, ArrayView4, ArrayViewD, Dimension, Ix3, Ix4, IxDyn};

use super::{CwtPacking, PkdPacking, SemckdPacking};
use super::{KdBackend, PairConfig, PairJob, PairLossFamily};
use kd_kernels::cpu::{CpuOutput, HostFloat, PairReference};
use kd_kernels::cwd::{CwdConfig, CwdCpu};
use kd_kernels::cwt::{CwtCpu, CwtSetup, MlpParams};
use kd_kernels::error::Result;
use kd_kernels::family::StudentGradFamily;
use kd_kernels::icsd::{IcsdConfig, IcsdCpu, IcsdCpuOutput};
use kd_kernels::ifvd::{IfvdConfig, IfvdCpu};
use kd_kernels::pixel_kd::{PixelKdConfig, PixelKdCpu};
use kd_kernels::pkd::{PkdConfig, PkdCpu, PkdLevels};
use kd_kernels::semckd::{EmbedWeights, SemckdConfig, SemckdCpu, SemckdCpuInputs, SemckdLayers};
use std::ops::Range;

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

fn view4<T>(view: ArrayViewD<'_, T>) -> ArrayView4<'_, T> {
    view_as::<T, Ix4>(view)
}

fn view_as<T, D: Dimension>(view: ArrayViewD<'_, T>) -> ::ndarray::ArrayView<'_, T, D> {
    let shape = view.shape().to_vec();
    view.into_dimensionality::<D>().unwrap_or_else(|e| {
        panic!("kd_kernels_burn: a tensor of shape {shape:?} where rank {:?} is needed: {e}", D::NDIM)
    })
}

fn f32_storage<'a>(what: &str, t: &'a NdArrayTensor) -> ArrayViewD<'a, f32> {
    f32::storage(what, t)
}

fn f32_tensor<D: Dimension>(a: ::ndarray::Array<f64, D>) -> NdArrayTensor {
    float_tensor::<f32, D>(a)
}

/// `a` rounded to `T`, as an NdArray tensor.
fn float_tensor<T: NdArrayFloat, D: Dimension>(a: ::ndarray::Array<f64, D>) -> NdArrayTensor {
    T::tensor(a.mapv(T::from_f64).into_dyn())
}

/// Runs CWT's CPU reference on the NdArray tensors of [`KdBackend::cwt_forward`], every one f32 (the checked
/// function refuses others on NdArray): the loss (shape `[1]`) and, with `want_grad`, d loss / d student and
/// d loss / d `params`, packed as `params` ([`CwtPacking`]).
///
/// # Panics
///
/// On inputs [`crate::cwt_loss`] refuses; it never passes them.
pub fn cwt_cpu(
    student: &NdArrayTensor,
    teacher: &NdArrayTensor,
    params: &NdArrayTensor,
    setup: CwtSetup,
    want_grad: bool,
) -> (NdArrayTensor, Option<(NdArrayTensor, NdArrayTensor)>) {
    let packing = CwtPacking::new(&setup.shapes);
    let params = contiguous(f32_storage("params", params));
    let [w1, b1, w2, b2] = <[_; 4]>::try_from(unpack::<f32, IxDyn>(&params, &packing.params))
        .unwrap_or_else(|_| unreachable!("CWT packs four parameters"));
    let params = MlpParams { w1: into_dim(w1), b1: into_dim(b1), w2: into_dim(w2), b2: into_dim(b2) };
    let (s, t) = (view4(f32_storage("student", student)), view4(f32_storage("teacher", teacher)));
    let cwt = cpu(CwtCpu::new(setup.config));
    fn refused<T>(e: kd_kernels::KdError) -> T {
        panic!("kd_kernels_burn: input the checked functions refuse: {e}")
    }
    if !want_grad {
        let loss = cwt.forward(s, t, &params).unwrap_or_else(refused);
        return (f32_tensor(::ndarray::Array1::from_elem(1, loss)), None);
    }
    let out = cwt.forward_backward(s, t, &params).unwrap_or_else(refused);
    let grad_params = out.grad_w1.iter().chain(&out.grad_b1).chain(&out.grad_w2).chain(&out.grad_b2).copied();
    let grads = (f32_tensor(out.grad_student), f32_tensor(::ndarray::Array1::from_iter(grad_params)));
    (f32_tensor(::ndarray::Array1::from_elem(1, out.loss)), Some(grads))
}

/// The float types NdArray stores, as the CPU references read and write them.
trait NdArrayFloat: HostFloat {
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

/// Runs SemCKD's CPU reference on the packed NdArray tensors of [`KdBackend::semckd_forward`]: the loss
/// (shape `[1]`, in the maps' float type) and, with `want_grad`, d loss / d `maps` (in that type) and
/// d loss / d `params` (f32), packed as the inputs.
///
/// # Panics
///
/// On inputs [`crate::semckd_loss`] refuses (sizes, float types); it never passes them.
pub fn semckd_cpu(
    maps: &NdArrayTensor,
    teacher: &NdArrayTensor,
    params: &NdArrayTensor,
    layers: &SemckdLayers,
    config: SemckdConfig,
    want_grad: bool,
) -> (NdArrayTensor, Option<(NdArrayTensor, NdArrayTensor)>) {
    fn go<T: NdArrayFloat>(
        maps: &NdArrayTensor,
        teacher: &NdArrayTensor,
        params: &NdArrayTensor,
        layers: &SemckdLayers,
        config: SemckdConfig,
        want_grad: bool,
    ) -> (NdArrayTensor, Option<(NdArrayTensor, NdArrayTensor)>) {
        let packing = SemckdPacking::new(layers);
        let (maps, teacher) = (contiguous(T::storage("maps", maps)), contiguous(T::storage("teacher", teacher)));
        let params = contiguous(f32::storage("params", params));
        let (s_n, t_n) = (layers.students(), layers.teachers());
        let map_views = unpack::<T, Ix4>(&maps, &packing.maps);
        let param_views = unpack::<f32, IxDyn>(&params, &packing.params);
        let mlps: Vec<EmbedWeights<'_>> = param_views
            .chunks(4)
            .map(|p| EmbedWeights {
                linear1_weight: into_dim(p[0].clone()),
                linear1_bias: into_dim(p[1].clone()),
                linear2_weight: into_dim(p[2].clone()),
                linear2_bias: into_dim(p[3].clone()),
            })
            .collect();
        let inputs = SemckdCpuInputs {
            student: map_views[..s_n].to_vec(),
            teacher: unpack::<T, Ix4>(&teacher, &packing.teacher),
            proj: map_views[s_n..].chunks(t_n).map(<[_]>::to_vec).collect(),
            query: mlps[..s_n].to_vec(),
            key: mlps[s_n..].to_vec(),
        };
        let semckd = cpu(SemckdCpu::new(config));
        let out = if want_grad { semckd.forward_backward(&inputs) } else { semckd.forward(&inputs) };
        let out = out.unwrap_or_else(|e| panic!("kd_kernels_burn: input the checked functions refuse: {e}"));
        let loss = float_tensor::<T, _>(::ndarray::Array1::from_elem(1, out.loss));
        if !want_grad {
            return (loss, None);
        }
        let grad_maps = out.grad_student.iter().chain(out.grad_proj.iter().flatten()).flat_map(|g| g.iter().copied());
        let grad_params = out.grad_query.iter().chain(&out.grad_key).flat_map(|g| {
            g.linear1_weight.iter().chain(&g.linear1_bias).chain(&g.linear2_weight).chain(&g.linear2_bias).copied()
        });
        let packed = |values: Vec<f64>| ::ndarray::Array1::from_vec(values);
        let grads = (float_tensor::<T, _>(packed(grad_maps.collect())), f32_tensor(packed(grad_params.collect())));
        (loss, Some(grads))
    }
    match maps {
        NdArrayTensor::F64(_) => go::<f64>(maps, teacher, params, layers, config, want_grad),
        _ => go::<f32>(maps, teacher, params, layers, config, want_grad),
    }
}

/// Runs PKD's CPU reference on the packed NdArray tensors of [`KdBackend::pkd_forward`]: the loss (shape
/// `[1]`) and, with `want_grad`, d loss / d student packed as the student; in the student's float type.
///
/// # Panics
///
/// On inputs [`crate::pkd_loss`] refuses; it never passes them.
pub fn pkd_cpu(
    student: &NdArrayTensor,
    teacher: &NdArrayTensor,
    levels: &PkdLevels,
    config: PkdConfig,
    want_grad: bool,
) -> (NdArrayTensor, Option<NdArrayTensor>) {
    fn go<T: NdArrayFloat>(
        student: &NdArrayTensor,
        teacher: &NdArrayTensor,
        levels: &PkdLevels,
        config: PkdConfig,
        want_grad: bool,
    ) -> (NdArrayTensor, Option<NdArrayTensor>) {
        let packing = PkdPacking::new(levels);
        let (s, t) = (contiguous(T::storage("student", student)), contiguous(T::storage("teacher", teacher)));
        let (s, t) = (unpack::<T, Ix4>(&s, &packing.levels), unpack::<T, Ix4>(&t, &packing.levels));
        let pkd = cpu(PkdCpu::new(config));
        let out = if want_grad {
            pkd.forward_backward(&s, &t)
        } else {
            pkd.forward(&s, &t).map(|loss| kd_kernels::pkd::PkdCpuOutput {
                loss,
                level_losses: Vec::new(),
                grad_student: Vec::new(),
            })
        };
        let out = out.unwrap_or_else(|e| panic!("kd_kernels_burn: input the checked functions refuse: {e}"));
        let loss = float_tensor::<T, _>(::ndarray::Array1::from_elem(1, out.loss));
        let grad = want_grad.then(|| {
            let packed: Vec<f64> = out.grad_student.iter().flat_map(|g| g.iter().copied()).collect();
            float_tensor::<T, _>(::ndarray::Array1::from_vec(packed))
        });
        (loss, grad)
    }
    match student {
        NdArrayTensor::F64(_) => go::<f64>(student, teacher, levels, config, want_grad),
        _ => go::<f32>(student, teacher, levels, config, want_grad),
    }
}

/// Runs IFVD's CPU reference on NdArray tensors: the loss (shape `[1]`) and, with `want_grad`, d loss /
/// d student; in the student's float type. The labels may be any NdArray integer type.
///
/// # Panics
///
/// On inputs [`crate::ifvd_loss`] refuses; it never passes them.
pub fn ifvd_cpu(
    student: &NdArrayTensor,
    teacher: &NdArrayTensor,
    labels: &NdArrayTensor,
    config: IfvdConfig,
    want_grad: bool,
) -> (NdArrayTensor, Option<NdArrayTensor>) {
    fn go<T: NdArrayFloat>(
        student: &NdArrayTensor,
        teacher: &NdArrayTensor,
        labels: ArrayView<'_, i64, Ix3>,
        config: IfvdConfig,
        want_grad: bool,
    ) -> (NdArrayTensor, Option<NdArrayTensor>) {
        let (s, t) = (view4(T::storage("student", student)), view4(T::storage("teacher", teacher)));
        let ifvd = cpu(IfvdCpu::new(config));
        let out = if want_grad { ifvd.forward_backward(s, t, labels) } else { ifvd.forward(s, t, labels) };
        let out = out.unwrap_or_else(|e| panic!("kd_kernels_burn: input the checked functions refuse: {e}"));
        let loss = float_tensor::<T, _>(::ndarray::Array1::from_elem(1, out.loss));
        (loss, want_grad.then(|| float_tensor::<T, _>(out.grad_student)))
    }
    let labels = int_labels(labels);
    let labels = view_as::<i64, Ix3>(labels.view());
    match student {
        NdArrayTensor::F64(_) => go::<f64>(student, teacher, labels, config, want_grad),
        _ => go::<f32>(student, teacher, labels, config, want_grad),
    }
}

/// Integer labels widened to `i64`, as the CPU reference reads them (exactly, for every integer type).
fn int_labels(labels: &NdArrayTensor) -> ArrayD<i64> {
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
fn contiguous<T: Clone>(view: ArrayViewD<'_, T>) -> std::borrow::Cow<'_, [T]> {
    match view.to_slice() {
        Some(slice) => std::borrow::Cow::Borrowed(slice),
        None => std::borrow::Cow::Owned(view.iter().cloned().collect()),
    }
}

/// The tensors packed in `data` at `layout` (shape, range), as views.
fn unpack<'a, T, D: Dimension>(data: &'a [T], layout: &[(Vec<usize>, Range<usize>)]) -> Vec<ArrayView<'a, T, D>> {
    layout
        .iter()
        .map(|(shape, range)| {
            let view = ArrayView::from_shape(IxDyn(shape), &data[range.clone()])
                .unwrap_or_else(|e| panic!("kd_kernels_burn: a packed tensor of shape {shape:?}: {e}"));
            into_dim(view)
        })
        .collect()
}

fn into_dim<'a, T, D: Dimension>(view: ArrayViewD<'a, T>) -> ArrayView<'a, T, D> {
    view_as::<T, D>(view)
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

    fn pkd_forward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        levels: PkdLevels,
        config: PkdConfig,
    ) -> NdArrayTensor {
        pkd_cpu(&student, &teacher, &levels, config, false).0
    }

    fn pkd_forward_backward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        levels: PkdLevels,
        config: PkdConfig,
    ) -> (NdArrayTensor, NdArrayTensor) {
        let (loss, grad) = pkd_cpu(&student, &teacher, &levels, config, true);
        (loss, expect_grad(grad))
    }

    fn ifvd_forward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        labels: NdArrayTensor,
        config: IfvdConfig,
    ) -> NdArrayTensor {
        ifvd_cpu(&student, &teacher, &labels, config, false).0
    }

    fn ifvd_forward_backward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        labels: NdArrayTensor,
        config: IfvdConfig,
    ) -> (NdArrayTensor, NdArrayTensor) {
        let (loss, grad) = ifvd_cpu(&student, &teacher, &labels, config, true);
        (loss, expect_grad(grad))
    }

    fn cwt_forward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        params: NdArrayTensor,
        setup: CwtSetup,
    ) -> NdArrayTensor {
        cwt_cpu(&student, &teacher, &params, setup, false).0
    }

    fn cwt_forward_backward(
        student: NdArrayTensor,
        teacher: NdArrayTensor,
        params: NdArrayTensor,
        setup: CwtSetup,
    ) -> (NdArrayTensor, NdArrayTensor, NdArrayTensor) {
        let (loss, grads) = cwt_cpu(&student, &teacher, &params, setup, true);
        let (grad_student, grad_params) = grads.expect("cwt_cpu returns the gradients when asked for them");
        (loss, grad_student, grad_params)
    }

    fn semckd_forward(
        maps: NdArrayTensor,
        teacher: NdArrayTensor,
        params: NdArrayTensor,
        layers: SemckdLayers,
        config: SemckdConfig,
    ) -> NdArrayTensor {
        semckd_cpu(&maps, &teacher, &params, &layers, config, false).0
    }

    fn semckd_forward_backward(
        maps: NdArrayTensor,
        teacher: NdArrayTensor,
        params: NdArrayTensor,
        layers: SemckdLayers,
        config: SemckdConfig,
    ) -> (NdArrayTensor, NdArrayTensor, NdArrayTensor) {
        let (loss, grads) = semckd_cpu(&maps, &teacher, &params, &layers, config, true);
        let (grad_maps, grad_params) = grads.expect("semckd_cpu returns the gradients when asked for them");
        (loss, grad_maps, grad_params)
    }
}

fn cpu<L>(loss: Result<L>) -> L {
    loss.unwrap_or_else(|e| panic!("kd_kernels_burn: a configuration the checked functions refuse: {e}"))
}

fn expect_grad(grad: Option<NdArrayTensor>) -> NdArrayTensor {
    grad.expect("the CPU references return the student's gradient when asked for it")
}
