//! One CWD call from device addresses: checks, plan, workspace, argument block, launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation, which differ only in the [`Machine`] they pass.

use std::ffi::c_void;

use super::plan::{self, Device};
use super::{Cwd, CwdConfig, CwdPath};
use crate::error::Result;
use crate::family::{KernelFile, NchwFamily, PairRawBuffers, PlainPairFamily, RawCall, Sizing};
use crate::ffi::KdCwdArgs;
use crate::launch::{LaunchError, Machine, OutputSet};
use crate::shape::Nchw;

impl NchwFamily for Cwd {
    const FILE: KernelFile = KernelFile::new("cwd", &plan::KERNELS);
    type Config = CwdConfig;
    type RawBuffers = PairRawBuffers;
    type Path = CwdPath;

    /// The workspace (floats, counters) any call on the shape may need, whichever path it takes and however
    /// its buffers are aligned.
    fn workspace(at: Sizing<'_, Self, Nchw>) -> Result<(usize, usize)> {
        let device = Device::of(at.device, at.dtype)?;
        let outputs = OutputSet::TRAINING;
        let worst_lead = 16 / at.dtype.size() - 1;
        let mut bound = (0, 0);
        for path in [CwdPath::TwoPass, CwdPath::SinglePass] {
            if let Ok(p) = plan::plan(at.config, at.shape, at.dtype, device, path, outputs, 1.0, worst_lead) {
                bound = (bound.0.max(p.workspace_floats), bound.1.max(p.counters));
            }
        }
        Ok(bound)
    }

    unsafe fn run_nchw(call: RawCall<'_, Self, Nchw>, mut on: Machine<'_>) -> Result<CwdPath> {
        call.check()?;
        let RawCall { config, path, shape, dtype, buffers, options } = call;
        let outputs = buffers.outputs(config.teacher_grad, options)?;
        let addresses: Vec<u64> = [buffers.student, buffers.teacher, buffers.grad_student, buffers.grad_teacher]
            .into_iter()
            .filter(|&a| a != 0)
            .collect();
        let lead = plan::single_pass_lead(&addresses, shape.plane(), dtype);
        let mut cooperative_ok = true;
        loop {
            let mut facts = Device::of(on.device, dtype)?;
            if !cooperative_ok {
                facts.single_pass_resident = 0;
            }
            let plan = plan::plan(config, shape, dtype, facts, path, outputs, options.scale, lead)?;
            let (floats, counters) = on.scratch.prepare(plan.workspace_floats, plan.counters)?;
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
                match unsafe { on.launch_or_reset(launch, dtype, (&args as *const KdCwdArgs).cast::<c_void>()) } {
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
                // The driver would not keep the planned grid resident (fewer SMs than reported, e.g. MPS): a
                // forced single pass reports it; `Auto` takes the two passes (the refused launch queued nothing).
                Some(e) if path == CwdPath::SinglePass || !cooperative_ok => return Err(e),
                Some(_) => {
                    on.device.refuse_cooperative();
                    cooperative_ok = false;
                }
            }
        }
    }
}

impl PlainPairFamily for Cwd {
    type Reference = super::CwdCpu;

    fn teacher_grad(config: &CwdConfig) -> bool {
        config.teacher_grad
    }
}
