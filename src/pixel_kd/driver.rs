//! One pixel-KD call from device addresses: checks, plan, workspace, argument block, launch. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use std::ffi::c_void;

use super::plan::{self, Device, PixelKdPlan};
use super::{PixelKdConfig, PixelKdPath};
use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::ffi::KdPixelKdArgs;
use crate::grad::GradOptions;
use crate::launch::{launch_or_reset, DeviceInfo, Launcher, OutputSet, Scratch};
use crate::shape::Nchw;

/// The device addresses of one pixel-KD call (`CUdeviceptr`s; 0 for an absent output). The call computes
/// the loss where `loss` is set, d loss / d student where `grad_student` is, and scales that gradient by
/// the device scalar at `upstream` where that is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PixelKdRawBuffers {
    /// `[N, C, H, W]` student logits.
    pub student: u64,
    /// `[N, C, H, W]` teacher logits.
    pub teacher: u64,
    /// One f32: the loss.
    pub loss: u64,
    /// `[N, C, H, W]`: d loss / d student.
    pub grad_student: u64,
    /// One f32 read by the kernel: d total / d loss.
    pub upstream: u64,
}

impl PixelKdRawBuffers {
    fn outputs(&self, options: GradOptions) -> Result<OutputSet> {
        if self.student == 0 || self.teacher == 0 {
            return Err(KdError::OutputMismatch { what: "student/teacher", fix: "both inputs need a device address" });
        }
        if self.grad_student == 0 && self.loss == 0 {
            return Err(KdError::OutputMismatch {
                what: "loss/grad_student",
                fix: "nothing to compute: give the loss or the student gradient an address",
            });
        }
        if self.grad_student == 0 && self.upstream != 0 {
            return Err(KdError::OutputMismatch {
                what: "upstream",
                fix: "an upstream scalar needs the student gradient too",
            });
        }
        Ok(OutputSet {
            loss: self.loss != 0,
            grad_student: self.grad_student != 0,
            grad_teacher: false,
            device_upstream: self.upstream != 0,
            accumulate: options.accumulate,
        })
    }
}

/// Plans a call on `device` (the tiled kernel's grid from its occupancy with the tile's shared memory).
pub(crate) fn plan_on(
    config: &PixelKdConfig,
    path: PixelKdPath,
    shape: &Nchw,
    dtype: DType,
    outputs: OutputSet,
    scale: f64,
    device: &dyn DeviceInfo,
) -> Result<PixelKdPlan> {
    plan::plan(config, shape, dtype, Device::of(device), path, outputs, scale, |bytes| {
        device.resident_blocks(plan::TILED, dtype, bytes)
    })
}

/// Runs one call; returns the path it took.
///
/// # Safety
/// Every non-zero address of `buffers` holds what [`PixelKdRawBuffers`] says for `shape` and `dtype`, where
/// `launcher`'s kernels can reach it.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run(
    config: &PixelKdConfig,
    path: PixelKdPath,
    shape: &Nchw,
    dtype: DType,
    buffers: &PixelKdRawBuffers,
    options: GradOptions,
    device: &dyn DeviceInfo,
    scratch: &mut dyn Scratch,
    launcher: &mut dyn Launcher,
) -> Result<PixelKdPath> {
    config.validate()?;
    options.validate()?;
    let outputs = buffers.outputs(options)?;
    let plan = plan_on(config, path, shape, dtype, outputs, options.scale, device)?;
    let (floats, counters) = scratch.prepare(plan.workspace_floats, 1)?;
    let args = KdPixelKdArgs {
        student: buffers.student,
        teacher: buffers.teacher,
        grad_student: buffers.grad_student,
        loss: buffers.loss,
        upstream: buffers.upstream,
        block_totals: floats,
        counter: counters,
        p: plan.params,
    };
    // SAFETY: `args` is the block pixel_kd.cu's kernels take; its addresses come from the caller (who vouches
    // for them) and from the workspace, sized by the plan.
    unsafe {
        launch_or_reset(launcher, scratch, &plan.launch, dtype, (&args as *const KdPixelKdArgs).cast::<c_void>())
    }
    .map_err(|e| e.into_error())?;
    Ok(plan.path)
}
