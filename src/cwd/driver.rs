//! One CWD call from device addresses: checks, plan, workspace, argument block, launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation, which differ only in the [`DeviceInfo`],
//! [`Scratch`] and [`Launcher`] they pass.

use std::ffi::c_void;

use super::plan::{self, Device};
use super::{Cwd, CwdConfig, CwdPath};
use crate::dtype::DType;
use crate::error::Result;
use crate::family::{Family, PairRawBuffers, PlainPairFamily, RawCall};
use crate::ffi::KdCwdArgs;
use crate::grad::GradOptions;
use crate::launch::{launch_or_reset, DeviceInfo, LaunchError, Launcher, OutputSet, Scratch};
use crate::shape::Nchw;

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
/// Every non-zero address of `buffers` holds what [`PairRawBuffers`] says for `shape` and `dtype`, where
/// `launcher`'s kernels can reach it.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run(
    config: &CwdConfig,
    path: CwdPath,
    shape: &Nchw,
    dtype: DType,
    buffers: &PairRawBuffers,
    options: GradOptions,
    device: &dyn DeviceInfo,
    scratch: &mut dyn Scratch,
    launcher: &mut dyn Launcher,
) -> Result<CwdPath> {
    config.validate()?;
    options.validate()?;
    let outputs = buffers.outputs(config.teacher_grad, options)?;
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

impl Family for Cwd {
    const NAME: &'static str = "cwd";
    const KERNELS: &'static [&'static str] = &plan::KERNELS;
    type Config = CwdConfig;
    type Shape = [usize];
    type RawBuffers = PairRawBuffers;
    type Path = CwdPath;
    type Report = CwdPath;

    fn validate(config: &CwdConfig) -> Result<()> {
        config.validate()
    }

    fn workspace_bound(
        config: &CwdConfig,
        shape: &[usize],
        dtype: DType,
        device: &dyn DeviceInfo,
    ) -> Result<(usize, usize)> {
        let shape = Nchw::from_dims("student", shape)?;
        workspace_bound(config, &shape, dtype, Device::of(device, dtype)?)
    }

    unsafe fn run(
        call: RawCall<'_, Self>,
        device: &dyn DeviceInfo,
        scratch: &mut dyn Scratch,
        launcher: &mut dyn Launcher,
    ) -> Result<CwdPath> {
        let shape = Nchw::from_dims("student", call.shape)?;
        // SAFETY: forwarded from the caller.
        unsafe {
            run(call.config, call.path, &shape, call.dtype, call.buffers, call.options, device, scratch, launcher)
        }
    }
}

impl PlainPairFamily for Cwd {
    type Reference = super::CwdCpu;

    fn teacher_grad(config: &CwdConfig) -> bool {
        config.teacher_grad
    }
}
