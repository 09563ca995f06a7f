//! One SKD call from device addresses: checks, plan, workspace, argument block, the launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use super::plan::{self, SkdPlan};
use super::{RelationShapes, Skd, SkdConfig};
use crate::error::Result;
use crate::family::{
    Family, KernelFile, PairBuffers, PairRawBuffers, PlainPairFamily, RawCall, Sizing, StudentGradFamily,
};
use crate::ffi::KdSkdArgs;
use crate::launch::Machine;

/// The device addresses of one SKD call: [`PairRawBuffers`] with the student `[N, Cs, H, W]` and the teacher
/// `[N, Ct, H, W]` (its channel count may differ) and no teacher gradient (`grad_teacher` is 0). The loss is
/// written where `loss` is set, d loss / d student (the student's shape, in the input dtype) where
/// `grad_student` is, times the device scalar at `upstream` where that is set.
pub type SkdRawBuffers = PairRawBuffers;

/// The typed buffers of one SKD call: [`PairBuffers`] whose teacher holds `N*Ct*H*W` elements (the student and
/// its gradient `N*Cs*H*W`); `grad_teacher` stays `None` (the teacher is a constant).
pub type SkdBuffers<'a, T> = PairBuffers<'a, T>;

/// The workspace's u32 counters: the loss's ticket.
pub(crate) const COUNTERS: usize = 1;

impl Family for Skd {
    const FILE: KernelFile = KernelFile::new("skd", &plan::KERNELS);
    type Config = SkdConfig;
    type Shape = RelationShapes;
    type RawBuffers = SkdRawBuffers;
    type Path = ();

    fn workspace_bound(at: Sizing<'_, Self>) -> Result<(usize, usize)> {
        Ok((plan::workspace_bound(at.config, at.shape)?, COUNTERS))
    }

    unsafe fn run(call: RawCall<'_, Self>, mut on: Machine<'_>) -> Result<()> {
        call.check()?;
        let buffers = call.buffers;
        let outputs = buffers.outputs(false, call.options)?;
        let SkdPlan { params, launches, offsets, workspace_floats, .. } =
            plan::plan(call.config, call.shape, call.dtype, outputs, call.options.scale)?;
        let (floats, counters) = on.scratch.prepare(workspace_floats, COUNTERS)?;
        let ws = |k: usize| floats + 4 * offsets[k] as u64;
        let args = KdSkdArgs {
            student: buffers.student,
            teacher: buffers.teacher,
            grad_student: buffers.grad_student,
            loss: buffers.loss,
            upstream: buffers.upstream,
            inv_norms: ws(0),
            gram_partials: ws(1),
            gram: ws(2),
            loss_partials: ws(3),
            counter: counters,
            p: params,
        };
        // SAFETY: `args` is the block skd.cu's kernels take; its addresses come from the caller (who vouches for
        // them) and from the workspace, sized by the plan.
        unsafe { on.launch_all(&launches, call.dtype, &args) }
    }
}

impl PlainPairFamily for Skd {
    type Reference = super::SkdCpu;
}

impl StudentGradFamily for Skd {}
