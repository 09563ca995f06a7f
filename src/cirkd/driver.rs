//! One CIRKD call from device addresses: checks, plan, workspace, argument block, launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use super::{plan, Cirkd, CirkdConfig};
use crate::cuda::Binder;
use crate::dtype::KdFloat;
use crate::error::{KdError, Result};
use crate::family::{
    Family, KernelFile, PairBuffers, PairRawBuffers, RawCall, Sizing, StudentGradFamily, StudentTeacherFamily,
    TypedFamily,
};
use crate::ffi::KdCirkdArgs;
use crate::grad::GradOptions;
use crate::launch::{Machine, OutputSet};
use crate::relation::{check_shapes, RelationShapes};

/// The device addresses of one CIRKD call (`CUdeviceptr`s; 0 for an absent output). The call writes the loss
/// where `loss` is set and d loss / d student where `grad_student` is (times the device scalar at `upstream`
/// where that is set). The teacher has no gradient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CirkdRawBuffers {
    /// `[B, Cs, H, W]` student features.
    pub student: u64,
    /// `[B, Ct, H, W]` teacher features.
    pub teacher: u64,
    /// One f32: the loss.
    pub loss: u64,
    /// `[B, Cs, H, W]`: d loss / d student, in the input dtype.
    pub grad_student: u64,
    /// One f32 read by the kernels: d total / d loss.
    pub upstream: u64,
}

impl CirkdRawBuffers {
    fn outputs(&self, options: GradOptions) -> Result<OutputSet> {
        if self.student == 0 || self.teacher == 0 {
            return Err(KdError::OutputMismatch { what: "student/teacher", fix: "both inputs need a device address" });
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

/// The typed buffers of one CIRKD call: a (student, teacher) pair; the teacher gets no gradient.
pub type CirkdBuffers<'a, T> = PairBuffers<'a, T>;

/// Re-checks a call's shapes (their fields are public, so a caller may have built them by hand).
fn checked(shapes: &RelationShapes) -> Result<RelationShapes> {
    check_shapes(&shapes.student.dims(), &shapes.teacher().dims())
}

impl Family for Cirkd {
    const FILE: KernelFile = KernelFile::new("cirkd", &plan::KERNELS);
    type Config = CirkdConfig;
    type Shape = RelationShapes;
    type RawBuffers = CirkdRawBuffers;
    type Path = ();

    fn workspace_bound(at: Sizing<'_, Self>) -> Result<(usize, usize)> {
        Ok((plan::workspace_bound(at.config, &checked(at.shape)?, at.dtype)?, 1))
    }

    unsafe fn run(call: RawCall<'_, Self>, mut on: Machine<'_>) -> Result<()> {
        call.check()?;
        let shapes = checked(call.shape)?;
        let buffers = call.buffers;
        let outputs = buffers.outputs(call.options)?;
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

impl TypedFamily for Cirkd {
    type Buffers<'a, T: KdFloat + 'a> = CirkdBuffers<'a, T>;

    fn bind<'a: 's, 's, T: KdFloat>(
        _config: &CirkdConfig,
        shape: &RelationShapes,
        buffers: CirkdBuffers<'a, T>,
        binder: &mut Binder<'s>,
    ) -> Result<(CirkdRawBuffers, GradOptions)> {
        if buffers.grad_teacher.is_some() {
            return Err(KdError::OutputMismatch {
                what: "grad_teacher",
                fix: "CIRKD gives no teacher gradient (the teacher is a constant); pass None",
            });
        }
        let shapes = checked(shape)?;
        let numel_s = shapes.student.numel();
        let raw = CirkdRawBuffers {
            student: binder.input("student", buffers.student, numel_s)?,
            teacher: binder.input("teacher", buffers.teacher, shapes.teacher().numel())?,
            loss: binder.output("loss", buffers.loss, 1)?,
            grad_student: binder.output("grad_student", buffers.grad_student, numel_s)?,
            upstream: binder.optional_input("upstream", buffers.upstream, 1)?,
        };
        Ok((raw, buffers.options))
    }
}

impl StudentTeacherFamily for Cirkd {
    fn pair_buffers<'a, T: KdFloat>(pair: PairBuffers<'a, T>) -> CirkdBuffers<'a, T> {
        pair
    }
}

impl StudentGradFamily for Cirkd {
    type Reference = super::CirkdCpu;

    fn with_shape<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&RelationShapes) -> Result<R>) -> Result<R> {
        f(&check_shapes(student, teacher)?)
    }

    fn raw_buffers(pair: PairRawBuffers) -> Result<CirkdRawBuffers> {
        if pair.grad_teacher != 0 {
            return Err(KdError::OutputMismatch {
                what: "grad_teacher",
                fix: "CIRKD gives no teacher gradient (the teacher is a constant); pass 0",
            });
        }
        let PairRawBuffers { student, teacher, loss, grad_student, upstream, .. } = pair;
        Ok(CirkdRawBuffers { student, teacher, loss, grad_student, upstream })
    }
}
