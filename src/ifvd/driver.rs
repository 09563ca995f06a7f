//! One IFVD call from device addresses: checks, plan, workspace, argument block, launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::labels::{check_shapes, IfvdShapes};
use super::{plan, Ifvd, IfvdConfig};
use crate::cuda::Binder;
use crate::dtype::{KdFloat, LabelDType};
use crate::error::{KdError, Result};
use crate::family::{Family, KernelFile, RawCall, Sizing, TypedFamily};
use crate::ffi::KdIfvdArgs;
use crate::grad::GradOptions;
use crate::launch::{Machine, OutputSet};

/// The device addresses of one IFVD call (`CUdeviceptr`s; 0 for an absent output). The call writes the loss
/// where `loss` is set and d loss / d student where `grad_student` is (times the device scalar at `upstream`
/// where that is set). The teacher has no gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfvdRawBuffers {
    /// `[N, Cs, H, W]` student features.
    pub student: u64,
    /// `[N, Ct, H, W]` teacher features.
    pub teacher: u64,
    /// `[N, Hl, Wl]` integer labels.
    pub labels: u64,
    /// The labels' integer type.
    pub label_dtype: LabelDType,
    /// One f32: the loss.
    pub loss: u64,
    /// `[N, Cs, H, W]`: d loss / d student.
    pub grad_student: u64,
    /// One f32 read by the kernels: d total / d loss.
    pub upstream: u64,
}

impl IfvdRawBuffers {
    fn outputs(&self, options: GradOptions) -> Result<OutputSet> {
        if self.student == 0 || self.teacher == 0 || self.labels == 0 {
            return Err(KdError::OutputMismatch {
                what: "student/teacher/labels",
                fix: "the three inputs need a device address",
            });
        }
        OutputSet::student(
            self.loss != 0,
            self.grad_student != 0,
            self.upstream != 0,
            false,
            "nothing to compute: give the loss or the student gradient an address",
            options,
        )
    }
}

/// The typed labels of a call: `[N, Hl, Wl]` integers in one of the dtypes the kernels read.
pub enum IfvdLabels<'a> {
    /// `uint8` (raw PNG label maps, 255 ignored).
    U8(&'a dyn DevicePtr<u8>),
    /// `int32`.
    I32(&'a dyn DevicePtr<i32>),
    /// `int64` (PyTorch's `long`).
    I64(&'a dyn DevicePtr<i64>),
}

/// The typed buffers of one IFVD call.
pub struct IfvdBuffers<'a, T> {
    /// The student's features.
    pub student: &'a dyn DevicePtr<T>,
    /// The teacher's features.
    pub teacher: &'a dyn DevicePtr<T>,
    /// The labels.
    pub labels: IfvdLabels<'a>,
    /// One f32: the loss.
    pub loss: Option<&'a mut dyn DevicePtrMut<f32>>,
    /// d loss / d student, in the input dtype.
    pub grad_student: Option<&'a mut dyn DevicePtrMut<T>>,
    /// One f32 the kernels read, d total / d loss, scaling the gradient (a backward pass).
    pub upstream: Option<&'a dyn DevicePtr<f32>>,
    /// How the gradient is scaled and whether it is added into its buffer.
    pub options: GradOptions,
}

impl<'a, T> IfvdBuffers<'a, T> {
    /// The inputs, with no output yet and [`GradOptions::OVERWRITE`].
    pub fn new(student: &'a dyn DevicePtr<T>, teacher: &'a dyn DevicePtr<T>, labels: IfvdLabels<'a>) -> Self {
        IfvdBuffers {
            student,
            teacher,
            labels,
            loss: None,
            grad_student: None,
            upstream: None,
            options: GradOptions::OVERWRITE,
        }
    }
}

/// Re-checks a call's shapes (their fields are public, so a caller may have built them by hand).
fn checked(shapes: &IfvdShapes) -> Result<IfvdShapes> {
    check_shapes(&shapes.student.dims(), &shapes.teacher().dims(), &shapes.label_dims())
}

impl Family for Ifvd {
    const FILE: KernelFile = KernelFile::new("ifvd", &plan::KERNELS);
    type Config = IfvdConfig;
    type Shape = IfvdShapes;
    type RawBuffers = IfvdRawBuffers;
    type Path = ();

    fn workspace_bound(at: Sizing<'_, Self>) -> Result<(usize, usize)> {
        let outputs = OutputSet::TRAINING;
        let plan = plan::plan(at.config, &checked(at.shape)?, LabelDType::I64, at.device.sm_count(), outputs, 1.0)?;
        Ok((plan.workspace_floats, 1))
    }

    unsafe fn run(call: RawCall<'_, Self>, mut on: Machine<'_>) -> Result<()> {
        call.check()?;
        let shapes = checked(call.shape)?;
        let buffers = call.buffers;
        let outputs = buffers.outputs(call.options)?;
        let plan =
            plan::plan(call.config, &shapes, buffers.label_dtype, on.device.sm_count(), outputs, call.options.scale)?;
        let (floats, counters) = on.scratch.prepare(plan.workspace_floats, 1)?;
        let [pixel_class, counts, sums, protos, proto_norms, moments, coef, proto_grad, loss_partials] =
            plan.offsets.map(|offset| floats + offset);
        let args = KdIfvdArgs {
            student: buffers.student,
            teacher: buffers.teacher,
            labels: buffers.labels,
            loss: buffers.loss,
            grad_student: buffers.grad_student,
            upstream: buffers.upstream,
            pixel_class,
            counts,
            sums,
            protos,
            proto_norms,
            moments,
            coef,
            proto_grad,
            loss_partials,
            counter: counters,
            p: plan.params,
        };
        // SAFETY: `args` is the block ifvd.cu's kernels take; its addresses come from the caller (who vouches
        // for them) and from the workspace, sized by the plan.
        unsafe { on.launch_all(&plan.launches, call.dtype, &args) }
    }
}

impl TypedFamily for Ifvd {
    type Buffers<'a, T: KdFloat + 'a> = IfvdBuffers<'a, T>;

    fn bind<'a: 's, 's, T: KdFloat>(
        _config: &IfvdConfig,
        shape: &IfvdShapes,
        buffers: IfvdBuffers<'a, T>,
        binder: &mut Binder<'s>,
    ) -> Result<(IfvdRawBuffers, GradOptions)> {
        let shapes = checked(shape)?;
        let numel_s = shapes.student.numel();
        let numel_l = shapes.label_dims().iter().product();
        let (labels, label_dtype) = match buffers.labels {
            IfvdLabels::U8(l) => (binder.input("labels", l, numel_l)?, LabelDType::U8),
            IfvdLabels::I32(l) => (binder.input("labels", l, numel_l)?, LabelDType::I32),
            IfvdLabels::I64(l) => (binder.input("labels", l, numel_l)?, LabelDType::I64),
        };
        let raw = IfvdRawBuffers {
            student: binder.input("student", buffers.student, numel_s)?,
            teacher: binder.input("teacher", buffers.teacher, shapes.teacher().numel())?,
            labels,
            label_dtype,
            loss: binder.output("loss", buffers.loss, 1)?,
            grad_student: binder.output("grad_student", buffers.grad_student, numel_s)?,
            upstream: binder.optional_input("upstream", buffers.upstream, 1)?,
        };
        Ok((raw, buffers.options))
    }
}
