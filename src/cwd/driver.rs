//! One CWD call from device addresses: checks, plan, workspace, argument block, launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation, which differ only in the [`DeviceInfo`],
//! [`Scratch`] and [`Launcher`] they pass.

use std::ffi::c_void;

use super::plan::{self, Device};
use super::{CwdConfig, CwdPath};
use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::ffi::KdCwdArgs;
use crate::grad::GradOptions;
use crate::launch::{launch_or_reset, DeviceInfo, LaunchError, Launcher, OutputSet, Scratch};
use crate::shape::Nchw;

/// The device addresses of one CWD call (`CUdeviceptr`s; 0 for an absent output). What a call computes
/// follows from which are set: the loss where `loss` is, d loss / d student where `grad_student` is (and
/// then d loss / d teacher into `grad_teacher`, which must be set exactly when `config.teacher_grad` is),
/// and the gradients times the device scalar at `upstream` where that is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CwdRawBuffers {
    /// `[N, C, H, W]` student logits.
    pub student: u64,
    /// `[N, C, H, W]` teacher logits.
    pub teacher: u64,
    /// One f32: the loss.
    pub loss: u64,
    /// `[N, C, H, W]`: d loss / d student.
    pub grad_student: u64,
    /// `[N, C, H, W]`: d loss / d teacher.
    pub grad_teacher: u64,
    /// One f32 read by the kernels: d total / d loss.
    pub upstream: u64,
}

impl CwdRawBuffers {
    fn outputs(&self, config: &CwdConfig, options: GradOptions) -> Result<OutputSet> {
        if self.student == 0 || self.teacher == 0 {
            return Err(KdError::OutputMismatch { what: "student/teacher", fix: "both inputs need a device address" });
        }
        let grad_student = self.grad_student != 0;
        if !grad_student && self.loss == 0 {
            return Err(KdError::OutputMismatch {
                what: "loss/grad_student",
                fix: "nothing to compute: give the loss or the student gradient an address",
            });
        }
        if !grad_student && (self.grad_teacher != 0 || self.upstream != 0) {
            return Err(KdError::OutputMismatch {
                what: "grad_teacher/upstream",
                fix: "a teacher gradient or an upstream scalar needs the student gradient too",
            });
        }
        if grad_student && (self.grad_teacher != 0) != config.teacher_grad {
            return Err(if config.teacher_grad {
                KdError::OutputMismatch {
                    what: "grad_teacher",
                    fix: "config.teacher_grad is set: pass a buffer for the teacher's gradient",
                }
            } else {
                KdError::OutputMismatch {
                    what: "grad_teacher",
                    fix: "a buffer was passed but config.teacher_grad is off: set it, or pass None",
                }
            });
        }
        Ok(OutputSet {
            loss: self.loss != 0,
            grad_student,
            grad_teacher: self.grad_teacher != 0,
            device_upstream: self.upstream != 0,
            accumulate: options.accumulate,
        })
    }
}

/// The workspace (floats, counters) any call on `shape` in `dtype` may need, whichever path it takes and
/// however its buffers are aligned.
pub(crate) fn workspace_bound(
    config: &CwdConfig,
    shape: &Nchw,
    dtype: DType,
    device: Device,
) -> Result<(usize, usize)> {
    let outputs = OutputSet { loss: true, grad_student: true, ..OutputSet::default() };
    let worst_lead = 16 / dtype.size() - 1;
    let mut bound = (0, 0);
    for path in [CwdPath::TwoPass, CwdPath::SinglePass] {
        if let Ok(p) = plan::plan(config, shape, dtype, device, path, outputs, 1.0, worst_lead) {
            bound = (bound.0.max(p.workspace_floats), bound.1.max(p.counters));
        }
    }
    Ok(bound)
}

/// Runs one call; returns the path it took.
///
/// # Safety
/// Every non-zero address of `buffers` holds what [`CwdRawBuffers`] says for `shape` and `dtype`, where
/// `launcher`'s kernels can reach it.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run(
    config: &CwdConfig,
    path: CwdPath,
    shape: &Nchw,
    dtype: DType,
    buffers: &CwdRawBuffers,
    options: GradOptions,
    device: &dyn DeviceInfo,
    scratch: &mut dyn Scratch,
    launcher: &mut dyn Launcher,
) -> Result<CwdPath> {
    config.validate()?;
    options.validate()?;
    let outputs = buffers.outputs(config, options)?;
    let addresses: Vec<u64> = [buffers.student, buffers.teacher, buffers.grad_student, buffers.grad_teacher]
        .into_iter()
        .filter(|&a| a != 0)
        .collect();
    let lead = plan::single_pass_lead(&addresses, shape.plane(), dtype);
    let mut cooperative_ok = true;
    loop {
        let mut facts = Device::of(device, dtype)?;
        if !cooperative_ok {
            facts.single_pass_resident = 0;
        }
        let plan = plan::plan(config, shape, dtype, facts, path, outputs, options.scale, lead)?;
        let (floats, counters) = scratch.prepare(plan.workspace_floats, plan.counters)?;
        let args = KdCwdArgs {
            student: buffers.student,
            teacher: buffers.teacher,
            grad_student: buffers.grad_student,
            grad_teacher: buffers.grad_teacher,
            loss: buffers.loss,
            upstream: buffers.upstream,
            partials: floats,
            row_kl: floats + plan.row_kl_offset_bytes,
            counter: counters,
            row_sync: counters + std::mem::size_of::<u32>() as u64,
            p: plan.params,
        };
        let mut refused = None;
        for launch in &plan.launches {
            // SAFETY: `args` is the block cwd.cu's kernels take; its addresses come from the caller (who
            // vouches for them) and from the workspace, sized by the plan.
            match unsafe {
                launch_or_reset(launcher, scratch, launch, dtype, (&args as *const KdCwdArgs).cast::<c_void>())
            } {
                Ok(()) => {}
                Err(LaunchError::CooperativeRefused(e)) => {
                    refused = Some(e);
                    break;
                }
                Err(e) => return Err(e.into_error()),
            }
        }
        match refused {
            None => return Ok(plan.path),
            // The driver would not keep the planned grid resident (fewer SMs than reported, e.g. MPS): a forced
            // single pass reports it; `Auto` takes the two passes (the refused launch queued nothing).
            Some(e) if path == CwdPath::SinglePass || !cooperative_ok => return Err(e),
            Some(_) => {
                device.refuse_cooperative();
                cooperative_ok = false;
            }
        }
    }
}
