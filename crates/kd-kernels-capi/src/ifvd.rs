//! IFVD's entry points: `kd_ifvd_cuda` (device addresses, the caller's stream) and `kd_ifvd_cpu` (host
//! pointers, the f64 reference). Three shapes (student, teacher, labels) and an integer label dtype.

use std::ffi::c_void;

use kd::dtype::LabelDType;
use kd::ifvd::{check_shapes, Ifvd, IfvdConfig, IfvdCpu, IfvdRawBuffers, IfvdShapes};
use kd::ndarray::ArrayView3;
use kd::GradOptions;

use crate::context::{launch, KdContext};
use crate::cpu::{self, Element, PerElement};
use crate::entry::{self, RawShape};
use crate::{guard, read_shape, Failure, KdDtype, KdGradOptions, KdStatus, KD_ERR_DTYPE, KD_ERR_NULL_POINTER};

/// The integer type of a label tensor.
pub type KdLabelDtype = i32;

/// IFVD (docs/losses.md §11): per image and class a prototype (the mean feature of the pixels labelled k),
/// each pixel's cosine with its class's prototype (its own feature where its label is not in
/// [0, num_classes)), L = loss_weight * mean over N*H*W of (cos_S - cos_T)^2.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdIfvdConfig {
    /// The class count K (19 on Cityscapes, 150 on ADE20K); 1 to 2^24.
    pub num_classes: i64,
    /// The factor on the mean; finite (CIRKD's scripts use 20).
    pub loss_weight: f64,
}

abi_config!(KdIfvdConfig => Ifvd, |params, _teacher_grad| {
    // A negative count becomes 0, which the crate's check refuses with its message.
    let num_classes = usize::try_from(params.num_classes).unwrap_or(0);
    Ok(IfvdConfig { num_classes, loss_weight: params.loss_weight })
});

/// uint8 (raw PNG label maps, 255 ignored).
pub const KD_LABEL_U8: KdLabelDtype = 0;
/// int32.
pub const KD_LABEL_I32: KdLabelDtype = 1;
/// int64 (PyTorch's long).
pub const KD_LABEL_I64: KdLabelDtype = 2;

fn label_dtype(raw: KdLabelDtype) -> Result<LabelDType, Failure> {
    match raw {
        KD_LABEL_U8 => Ok(LabelDType::U8),
        KD_LABEL_I32 => Ok(LabelDType::I32),
        KD_LABEL_I64 => Ok(LabelDType::I64),
        other => Err(Failure::new(
            KD_ERR_DTYPE,
            format!(
                "label_dtype: unknown kd_label_dtype {other}; labels are integers: KD_LABEL_U8 (0), KD_LABEL_I32 (1) \
                 or KD_LABEL_I64 (2)"
            ),
        )),
    }
}

/// Reads and checks the three shapes.
///
/// # Safety
/// Each shape pointer is null or points to its `ndim` readable `i64`s.
unsafe fn read_shapes([student, teacher, labels]: [RawShape; 3]) -> Result<IfvdShapes, Failure> {
    // SAFETY: forwarded from the caller.
    let (s, t, l) = unsafe {
        (read_shape(student.0, student.1)?, read_shape(teacher.0, teacher.1)?, read_shape(labels.0, labels.1)?)
    };
    Ok(check_shapes(&s, &t, &l)?)
}

/// IFVD on the GPU, queued on `stream`: the loss (one f32) where `loss` is non-zero, d loss / d student (in
/// `dtype`, times the device f32 at `upstream` where that is non-zero) where `grad_student` is. Student
/// [N, Cs, H, W], teacher [N, Ct, H, W], labels [N, Hl, Wl] of `label_dtype` at any resolution (resized by
/// PyTorch's nearest rule).
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble), for the three shapes.
#[no_mangle]
pub unsafe extern "C" fn kd_ifvd_cuda(
    ctx: *mut KdContext, params: *const KdIfvdConfig, student_shape: *const i64, student_ndim: usize,
    teacher_shape: *const i64, teacher_ndim: usize, label_shape: *const i64, label_ndim: usize, dtype: KdDtype,
    label_dtype: KdLabelDtype, student: u64, teacher: u64, labels: u64, loss: u64, grad_student: u64, upstream: u64,
    options: KdGradOptions, stream: *mut c_void,
) -> KdStatus {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let call = unsafe { entry::device(params, dtype, options, false)? };
        let shapes = [(student_shape, student_ndim), (teacher_shape, teacher_ndim), (label_shape, label_ndim)];
        let (shapes, label_dtype) = (unsafe { read_shapes(shapes)? }, self::label_dtype(label_dtype)?);
        let buffers = IfvdRawBuffers { student, teacher, labels, label_dtype, loss, grad_student, upstream };
        // SAFETY: forwarded from the caller.
        unsafe { launch::<Ifvd>(ctx, &call.config, &shapes, call.dtype, &buffers, call.options, stream) }
    })
}

struct CpuCall {
    ifvd: IfvdCpu,
    shapes: IfvdShapes,
    student: *const c_void,
    teacher: *const c_void,
    labels: Vec<i64>,
    loss: *mut f64,
    grad_student: *mut c_void,
    options: GradOptions,
}

impl PerElement for CpuCall {
    fn run<T: Element>(self) -> crate::Outcome {
        // SAFETY: the entry point's contract: host tensors of the shapes in this dtype.
        let student = unsafe { cpu::view::<T>("student", self.student, &self.shapes.student)? };
        let teacher = unsafe { cpu::view::<T>("teacher", self.teacher, &self.shapes.teacher())? };
        let labels = ArrayView3::from_shape(self.shapes.label_dims(), &self.labels[..])
            .map_err(|e| Failure::new(crate::KD_ERR_SHAPE, format!("labels: {e}")))?;
        let out = if self.grad_student.is_null() {
            self.ifvd.forward(student, teacher, labels)?
        } else {
            self.ifvd.forward_backward(student, teacher, labels)?
        };
        let grad = (!self.grad_student.is_null()).then_some(&out.grad_student);
        // SAFETY: the entry point's contract: null or writable outputs, the gradient of the student's shape.
        unsafe { cpu::write_outputs::<T>((self.loss, out.loss), (self.grad_student, grad), self.options) };
        Ok(())
    }
}

/// Widens `len` labels of `dtype` at `labels` to i64.
///
/// # Safety
/// `labels` is null or points to `len` readable values of `dtype`.
unsafe fn read_labels(labels: *const c_void, dtype: LabelDType, len: usize) -> Result<Vec<i64>, Failure> {
    if labels.is_null() {
        return Err(Failure::new(KD_ERR_NULL_POINTER, "labels: a null pointer; pass the label map's data"));
    }
    // SAFETY: forwarded from the caller.
    Ok(unsafe {
        match dtype {
            LabelDType::U8 => {
                std::slice::from_raw_parts(labels.cast::<u8>(), len).iter().map(|&v| i64::from(v)).collect()
            }
            LabelDType::I32 => {
                std::slice::from_raw_parts(labels.cast::<i32>(), len).iter().map(|&v| i64::from(v)).collect()
            }
            LabelDType::I64 => std::slice::from_raw_parts(labels.cast::<i64>(), len).to_vec(),
        }
    })
}

/// IFVD on the CPU reference: the loss into `*loss` (where not null) and the student gradient (in `dtype`)
/// where `grad_student` is not null.
///
/// # Safety
/// The CPU entry points' contract (the header's preamble), for the three shapes; `labels` points to the label map in `label_dtype`.
#[no_mangle]
pub unsafe extern "C" fn kd_ifvd_cpu(
    params: *const KdIfvdConfig, student_shape: *const i64, student_ndim: usize, teacher_shape: *const i64,
    teacher_ndim: usize, label_shape: *const i64, label_ndim: usize, dtype: KdDtype, label_dtype: KdLabelDtype,
    student: *const c_void, teacher: *const c_void, labels: *const c_void, loss: *mut f64, grad_student: *mut c_void,
    options: KdGradOptions,
) -> KdStatus {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let prelude = unsafe { entry::host(params, dtype, options, false)? };
        let shapes = [(student_shape, student_ndim), (teacher_shape, teacher_ndim), (label_shape, label_ndim)];
        let (shapes, label_dtype) = (unsafe { read_shapes(shapes)? }, self::label_dtype(label_dtype)?);
        let ifvd = IfvdCpu::new(prelude.config)?;
        let len = shapes.label_dims().iter().product();
        // SAFETY: forwarded from the caller.
        let labels = unsafe { read_labels(labels, label_dtype, len)? };
        let call = CpuCall { ifvd, shapes, student, teacher, labels, loss, grad_student, options: prelude.options };
        cpu::dispatch(prelude.dtype, call)
    })
}
