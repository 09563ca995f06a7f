//! One DIST call from device addresses: checks, plan, workspace, argument block, launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use super::plan;
use super::{Dist, DistConfig};
use crate::error::Result;
use crate::family::{KernelFile, NchwFamily, PairRawBuffers, PlainPairFamily, RawCall, Sizing, StudentGradFamily};
use crate::ffi::KdDistArgs;
use crate::launch::{Machine, OutputSet};
use crate::shape::Nchw;

impl NchwFamily for Dist {
    const FILE: KernelFile = KernelFile::new("dist", &plan::KERNELS);
    type Config = DistConfig;
    type RawBuffers = PairRawBuffers;
    type Path = ();

    fn workspace(at: Sizing<'_, Self, Nchw>) -> Result<(usize, usize)> {
        Ok((plan::plan(at.config, at.shape, at.device.sm_count(), OutputSet::TRAINING, 1.0)?.workspace_floats, 1))
    }

    unsafe fn run_nchw(call: RawCall<'_, Self, Nchw>, mut on: Machine<'_>) -> Result<()> {
        call.check()?;
        let buffers = call.buffers;
        let outputs = buffers.outputs(false, call.options)?;
        let plan = plan::plan(call.config, call.shape, on.device.sm_count(), outputs, call.options.scale)?;
        let (floats, counters) = on.scratch.prepare(plan.workspace_floats, 1)?;
        let [pixel_rho, class_rho, coefs] = plan.offsets;
        let args = KdDistArgs {
            student: buffers.student,
            teacher: buffers.teacher,
            grad_student: buffers.grad_student,
            loss: buffers.loss,
            upstream: buffers.upstream,
            moments: floats,
            pixel_rho: floats + pixel_rho,
            class_rho: floats + class_rho,
            coefs: floats + coefs,
            counter: counters,
            p: plan.params,
        };
        // SAFETY: `args` is the block dist.cu's kernels take; its addresses come from the caller (who vouches
        // for them) and from the workspace, sized by the plan.
        unsafe { on.launch_all(&plan.launches, call.dtype, &args) }
    }
}

impl PlainPairFamily for Dist {
    type Reference = super::DistCpu;
}

impl StudentGradFamily for Dist {}
