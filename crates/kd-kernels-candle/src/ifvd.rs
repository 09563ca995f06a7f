//! IFVD as a candle op: features and an integer label tensor; the gradient reaches the student. One fused
//! call of the crate (the CPU reference, or the kernels on candle's stream), attached to candle's graph by
//! `fused::attach` (first-order only): the backward pass would need four inputs (the features, the
//! labels and the upstream gradient), one more than candle's custom ops take.

use std::sync::Arc;

use candle_core::{DType as CandleDType, Device, Tensor};
use ndarray::{ArrayView3, ArrayView4};

use super::fused::{
    attach, check_float, cpu_storage, same_device, unsupported_device, Engines, Outputs as FusedOutputs,
};
use super::{candle_error, cpu_slice, dispatch_host, HostElem, PerHostDtype};
use kd_kernels::error::KdError;
use kd_kernels::ifvd::{check_shapes, IfvdConfig, IfvdCpu, IfvdShapes, LabelDType};

const NAME: &str = "kd-kernels-ifvd";
const ATTACH_NAME: &str = "kd-kernels-ifvd-grad";

/// IFVD ([`kd_kernels::ifvd`]) as a candle op: `loss(&student, &teacher, &labels)` with student features
/// `[N, Cs, H, W]` and teacher features `[N, Ct, H, W]` (one dtype: `f32`, `f16`, `bf16`; also `f64` on the
/// CPU) and labels `[N, Hl, Wl]` (`u8`, `i32` or `i64`; any resolution, resized to `H x W` by PyTorch's
/// `nearest`; values outside `[0, num_classes)`, such as 255, are ignored) is an f32 scalar whose backward
/// pass writes the student's gradient (directly and through its class prototypes). The teacher is a
/// constant (no gradient is computed for it).
#[derive(Clone)]
pub struct Ifvd {
    shared: Arc<Shared>,
}

type Shared = Engines<IfvdCpu, kd_kernels::ifvd::Ifvd>;
type Outputs = FusedOutputs<Tensor>;

impl Ifvd {
    /// Validates `config` (`num_classes` at least 1).
    pub fn new(config: IfvdConfig) -> candle_core::Result<Self> {
        Ok(Ifvd { shared: Engines::new(IfvdCpu::new(config))? })
    }

    /// The configuration.
    pub fn config(&self) -> &IfvdConfig {
        self.shared.cpu.config()
    }

    /// `loss_weight * mean_{n,p} (cos_S - cos_T)^2`.
    pub fn loss(&self, student: &Tensor, teacher: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
        let shapes = check(student, teacher, labels)?;
        let (student, teacher, labels) = (student.contiguous()?, teacher.contiguous()?, labels.contiguous()?);
        let want_grad = student.track_op();
        let device = student.device().clone();
        let job = Job {
            shared: &self.shared,
            student: &student,
            teacher: &teacher,
            labels: &labels,
            shapes: &shapes,
            want_grad,
        };
        let out = match &device {
            Device::Cpu => dispatch_host(student.dtype(), NAME, job)?,
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => super::dispatch(student.dtype(), NAME, job)?,
            _ => return Err(unsupported_device(NAME, &device)),
        };
        attach(out.loss, ATTACH_NAME, out.grads.map(|g| (&student, g)))
    }
}

/// Shapes, dtypes and devices in the crate's words.
fn check(student: &Tensor, teacher: &Tensor, labels: &Tensor) -> candle_core::Result<IfvdShapes> {
    let shapes = check_shapes(student.dims(), teacher.dims(), labels.dims()).map_err(candle_error)?;
    check_float(student.device(), student.dtype(), NAME)?;
    if teacher.dtype() != student.dtype() {
        return Err(candle_error(KdError::DTypeMismatch {
            what: "teacher".into(),
            expected: format!("{:?} (the student's)", student.dtype()),
            got: format!("{:?}", teacher.dtype()),
        }));
    }
    label_dtype(labels.dtype())?;
    same_device(student, teacher, NAME)?;
    same_device(student, labels, NAME)?;
    Ok(shapes)
}

/// The kernels' label type for a candle dtype; the others are refused.
fn label_dtype(dtype: CandleDType) -> candle_core::Result<LabelDType> {
    match dtype {
        CandleDType::U8 => Ok(LabelDType::U8),
        CandleDType::I32 => Ok(LabelDType::I32),
        CandleDType::I64 => Ok(LabelDType::I64),
        other => Err(candle_error(KdError::DTypeMismatch {
            what: "labels".into(),
            expected: "U8, I32 or I64 (convert with labels.to_dtype(DType::I64))".into(),
            got: format!("{other:?}"),
        })),
    }
}

/// One call in the element type of the features.
struct Job<'a> {
    shared: &'a Shared,
    student: &'a Tensor,
    teacher: &'a Tensor,
    labels: &'a Tensor,
    shapes: &'a IfvdShapes,
    want_grad: bool,
}

impl PerHostDtype for Job<'_> {
    type Out = Outputs;

    fn run<T: HostElem>(self) -> candle_core::Result<Outputs> {
        // The reference reads i64 labels: a copy of the (small) label map, exact for every label type.
        let labels = self.labels.to_dtype(CandleDType::I64)?.flatten_all()?.to_vec1::<i64>()?;
        let too_large = |e: ndarray::ShapeError| candle_error(KdError::TooLarge { what: NAME, detail: e.to_string() });
        let labels = ArrayView3::from_shape(self.shapes.label_dims(), &labels).map_err(too_large)?;
        let (s_guard, t_guard) = (self.student.storage_and_layout(), self.teacher.storage_and_layout());
        let s = cpu_slice::<T>(cpu_storage(&s_guard.0, NAME)?, s_guard.1, NAME)?;
        let t = cpu_slice::<T>(cpu_storage(&t_guard.0, NAME)?, t_guard.1, NAME)?;
        let s = ArrayView4::from_shape(self.shapes.student.dims(), s).map_err(too_large)?;
        let t = ArrayView4::from_shape(self.shapes.teacher().dims(), t).map_err(too_large)?;
        let cpu = &self.shared.cpu;
        let out = if self.want_grad { cpu.forward_backward(s, t, labels) } else { cpu.forward(s, t, labels) }
            .map_err(candle_error)?;
        let grad = self
            .want_grad
            .then(|| {
                let values: Vec<T> = out.grad_student.iter().map(|&v| T::from_f64(v)).collect();
                Tensor::from_vec(values, out.grad_student.shape(), &Device::Cpu)
            })
            .transpose()?;
        Ok(Outputs { loss: Tensor::new(out.loss as f32, &Device::Cpu)?, grads: grad })
    }
}

#[cfg(feature = "cuda")]
impl super::PerDtype for Job<'_> {
    type Out = Outputs;

    fn run<T: super::Float>(self) -> candle_core::Result<Outputs> {
        use super::cuda::view;
        use super::fused::{cuda_storage, tensor};
        use candle_core::backend::BackendStorage;
        use cudarc::driver::CudaSlice;
        use kd_kernels::ifvd::IfvdLabels;

        let guards = [self.student, self.teacher, self.labels].map(Tensor::storage_and_layout);
        let s_storage = cuda_storage(&guards[0].0, NAME)?;
        let t_storage = cuda_storage(&guards[1].0, NAME)?;
        let y_storage = cuda_storage(&guards[2].0, NAME)?;
        let s = view::<T>(s_storage, guards[0].1, NAME)?;
        let t = view::<T>(t_storage, guards[1].1, NAME)?;
        let (y_u8, y_i32, y_i64);
        let labels = match label_dtype(self.labels.dtype())? {
            LabelDType::U8 => {
                y_u8 = view::<u8>(y_storage, guards[2].1, NAME)?;
                IfvdLabels::U8(&y_u8)
            }
            LabelDType::I32 => {
                y_i32 = view::<i32>(y_storage, guards[2].1, NAME)?;
                IfvdLabels::I32(&y_i32)
            }
            LabelDType::I64 => {
                y_i64 = view::<i64>(y_storage, guards[2].1, NAME)?;
                IfvdLabels::I64(&y_i64)
            }
        };
        let device = s_storage.device().clone();
        let stream = device.cuda_stream();
        let mut loss: CudaSlice<f32> = device.alloc_zeros(1)?;
        let dims = self.shapes.student.dims();
        // SAFETY: the kernels write every element of the gradient (overwritten, not added).
        let mut grad: Option<CudaSlice<T>> =
            if self.want_grad { Some(unsafe { device.alloc::<T>(dims.iter().product())? }) } else { None };
        let config = *self.shared.cpu.config();
        self.shared.cuda.with(
            &stream,
            |st| kd_kernels::ifvd::IfvdCuda::new(st, config),
            |cuda| match grad.as_mut() {
                Some(g) => cuda.forward_backward(self.shapes, &s, &t, labels, &mut loss, g),
                None => cuda.forward(self.shapes, &s, &t, labels, &mut loss),
            },
        )?;
        let grad = grad.map(|g| tensor(g, &device, dims.to_vec()));
        Ok(Outputs { loss: tensor(loss, &device, Vec::new()), grads: grad })
    }
}
