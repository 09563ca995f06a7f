//! One CIRKD call from device addresses: checks, plan, workspace, argument block, launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use super::{plan, Cirkd, CirkdConfig};
use crate::error::Result;
use crate::family::{
    Family, KernelFile, PairBuffers, PairRawBuffers, PlainPairFamily, RawCall, Sizing, StudentGradFamily,
};
use crate::ffi::KdCirkdArgs;
use crate::launch::Machine;
use crate::relation::RelationShapes;

/// The device addresses of one CIRKD call: [`PairRawBuffers`] with the student `[B, Cs, H, W]` and the
/// teacher `[B, Ct, H, W]` (its channel count may differ) and no teacher gradient (`grad_teacher` is 0). The
/// call writes the loss where `loss` is set and d loss / d student (in the input dtype) where `grad_student`
/// is, times the device scalar at `upstream` where that is set.
pub type CirkdRawBuffers = PairRawBuffers;

/// The typed buffers of one CIRKD call: a (student, teacher) pair; the teacher gets no gradient.
pub type CirkdBuffers<'a, T> = PairBuffers<'a, T>;

impl Family for Cirkd {
    const FILE: KernelFile = KernelFile::new("cirkd", &plan::KERNELS);
    type Config = CirkdConfig;
    type Shape = RelationShapes;
    type RawBuffers = CirkdRawBuffers;
    type Path = ();

    fn workspace_bound(at: Sizing<'_, Self>) -> Result<(usize, usize)> {
        Ok((plan::workspace_bound(at.config, &at.shape.checked()?, at.dtype)?, 1))
    }

    unsafe fn run(call: RawCall<'_, Self>, mut on: Machine<'_>) -> Result<()> {
        call.check()?;
        let shapes = call.shape.checked()?;
        let buffers = call.buffers;
        let outputs = buffers.outputs(false, call.options)?;
        let plan = plan::plan(call.config, &shapes, call.dtype, outputs, call.options.scale)?;
        let (floats, counters) = on.scratch.prepare(plan.workspace_floats, 1)?;
        let ws = |offset: usize| floats + 4 * offset as u64;
        // 0 for an array the call does not keep in the workspace: the kernels never read those.
        let kept = |offset: Option<usize>| offset.map_or(0, ws);
        let o = plan.offsets;
        let mut args = KdCirkdArgs {
            student: buffers.student,
            teacher: buffers.teacher,
            loss: buffers.loss,
            grad_student: buffers.grad_student,
            upstream: buffers.upstream,
            inv_norms: ws(o.inv_norms),
            pooled_student: kept(o.pooled_student),
            pooled_teacher: kept(o.pooled_teacher),
            lse: ws(o.lse),
            d_hat: if plan.d_hat_in_grad { buffers.grad_student } else { kept(o.d_hat) },
            loss_partials: ws(o.loss_partials),
            anchor_losses: ws(o.anchor_losses),
            counter: counters,
            p: plan.params,
        };
        for (launch, anchor) in plan.launches() {
            // A launch takes its argument block by value, so the next group's anchor does not touch this one's.
            args.p.anchor = anchor;
            // SAFETY: `args` is the block cirkd.cu's kernels take; its addresses come from the caller (who vouches
            // for them) and from the workspace, sized by the plan.
            unsafe { on.launch_all(std::slice::from_ref(launch), call.dtype, &args) }?;
        }
        Ok(())
    }
}

impl PlainPairFamily for Cirkd {
    type Reference = super::CirkdCpu;
}

impl StudentGradFamily for Cirkd {}
