//! IFVD as a burn operation: [`ifvd_loss`], features and an integer label tensor.

use ::burn::tensor::{Int, Tensor};
use ::ndarray::Ix3;

use super::ndarray::{int_labels, view4, view_as, NdArrayFloat};
use super::packed::{
    check_same_device, label_dtype, packed_loss, CpuCall, PackedAddresses, PackedCpuOutput, PackedInputs,
};
use super::{check_float_pair, refuse_tracked_teacher, PackedConfig, PackedFamilyRow, PackedLossFamily};
use kd_kernels::error::Result;
use kd_kernels::ifvd::{check_shapes, Ifvd, IfvdConfig, IfvdCpu, IfvdRawBuffers, IfvdShapes};

/// IFVD (`docs/losses.md` §11) between student features `[N, Cs, H, W]` and teacher features
/// `[N, Ct, H, W]` (one float dtype; the channel counts may differ) with the labels `[N, Hl, Wl]` (`i64`,
/// burn's default int, `i32` or `u8`; any resolution, resized to `H x W` by PyTorch's `nearest`; values
/// outside `[0, num_classes)`, such as 255, are ignored), as a differentiable one-element tensor.
///
/// On an autodiff device the gradient reaches the student (directly and through its class prototypes).
/// IFVD has no teacher gradient: a tracked teacher is refused (pass `teacher.detach()`).
pub fn ifvd_loss(
    student: Tensor<4>,
    teacher: Tensor<4>,
    labels: Tensor<3, Int>,
    config: &IfvdConfig,
) -> Result<Tensor<1>> {
    config.validate()?;
    check_shapes(student.shape().as_slice(), teacher.shape().as_slice(), labels.shape().as_slice())?;
    check_float_pair(&student, &teacher)?;
    label_dtype(labels.dtype())?;
    check_same_device("labels", &labels.device(), &student.device())?;
    refuse_tracked_teacher(&teacher, Ifvd::LABEL)?;
    let inputs = PackedInputs::TwoLabelled(student.into_dispatch(), teacher.into_dispatch(), labels.into_dispatch());
    Ok(packed_loss(inputs, PackedConfig::Ifvd(*config)))
}

/// IFVD's packed call: student `[N, Cs, H, W]`, teacher `[N, Ct, H, W]` and the labels `[N, Hl, Wl]`; the
/// student's gradient.
impl PackedLossFamily for Ifvd {
    fn config(config: &IfvdConfig) -> IfvdConfig {
        *config
    }

    /// The labels may be any NdArray integer type, widened to `i64` (exactly).
    fn cpu<T: NdArrayFloat>(config: &IfvdConfig, tensors: CpuCall<'_>) -> Result<PackedCpuOutput> {
        let CpuCall { floats, labels, want_grad } = tensors;
        let labels = int_labels(labels.expect("IFVD's call has labels"));
        let labels = view_as::<i64, Ix3>(labels.view());
        let (s, t) = (view4(T::storage("student", &floats[0])), view4(T::storage("teacher", &floats[1])));
        let ifvd = IfvdCpu::new(*config)?;
        if !want_grad {
            return Ok(PackedCpuOutput { loss: ifvd.forward(s, t, labels)?.loss, grads: Vec::new() });
        }
        let out = ifvd.forward_backward(s, t, labels)?;
        Ok(PackedCpuOutput { loss: out.loss, grads: vec![out.grad_student.into_dyn()] })
    }

    fn with_shape<R>(_config: &IfvdConfig, dims: &[Vec<usize>], f: impl FnOnce(&IfvdShapes) -> Result<R>) -> Result<R> {
        f(&check_shapes(&dims[0], &dims[1], &dims[2])?)
    }

    fn raw_buffers(_config: &IfvdConfig, at: &PackedAddresses<'_>) -> IfvdRawBuffers {
        let (labels, label_dtype) = at.labels.expect("IFVD's call has labels");
        IfvdRawBuffers {
            student: at.floats[0],
            teacher: at.floats[1],
            labels,
            label_dtype,
            loss: at.loss,
            grad_student: at.grads[0],
            upstream: 0,
        }
    }
}
