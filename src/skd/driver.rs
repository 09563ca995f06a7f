//! One SKD call from device addresses: checks, plan, workspace, argument block, the launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use super::plan::{self, SkdPlan};
use super::{RelationShapes, Skd, SkdConfig};
use crate::cuda::Binder;
use crate::dtype::KdFloat;
use crate::error::{KdError, Result};
use crate::family::{
    Family, KernelFile, PairBuffers, PairRawBuffers, RawCall, Sizing, StudentGradFamily, StudentTeacherFamily,
    TypedFamily,
};
use crate::ffi::KdSkdArgs;
use crate::grad::GradOptions;
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

impl TypedFamily for Skd {
    type Buffers<'a, T: KdFloat + 'a> = SkdBuffers<'a, T>;

    fn bind<'a: 's, 's, T: KdFloat>(
        _config: &SkdConfig,
        shapes: &RelationShapes,
        buffers: SkdBuffers<'a, T>,
        binder: &mut Binder<'s>,
    ) -> Result<(SkdRawBuffers, GradOptions)> {
        if buffers.grad_teacher.is_some() {
            return Err(KdError::OutputMismatch {
                what: "grad_teacher",
                fix: "SKD gives no teacher gradient (the teacher is a constant); pass None",
            });
        }
        let (student, teacher) = (shapes.student.numel(), shapes.teacher().numel());
        let raw = PairRawBuffers {
            student: binder.input("student", buffers.student, student)?,
            teacher: binder.input("teacher", buffers.teacher, teacher)?,
            loss: binder.output("loss", buffers.loss, 1)?,
            grad_student: binder.output("grad_student", buffers.grad_student, student)?,
            grad_teacher: 0,
            upstream: binder.optional_input("upstream", buffers.upstream, 1)?,
        };
        Ok((raw, buffers.options))
    }
}

impl StudentTeacherFamily for Skd {
    fn pair_buffers<'a, T: KdFloat>(pair: PairBuffers<'a, T>) -> SkdBuffers<'a, T> {
        pair
    }
}

impl StudentGradFamily for Skd {
    type Reference = super::SkdCpu;

    fn with_shape<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&RelationShapes) -> Result<R>) -> Result<R> {
        f(&super::check_shapes(student, teacher)?)
    }

    /// The driver refuses a teacher gradient (its outputs are checked with none produced).
    fn raw_buffers(pair: PairRawBuffers) -> Result<SkdRawBuffers> {
        Ok(pair)
    }
}
