//! One PKD call from device addresses: checks, plan, workspace, argument block, the three launches. Shared by
//! the typed CUDA API, the raw layer and the host emulation.

use super::plan::{self, PkdPlan};
use super::{Pkd, PkdConfig, PkdLevels};
use crate::cuda::Binder;
use crate::dtype::KdFloat;
use crate::error::{KdError, Result};
use crate::family::{Family, KernelFile, RawCall, Sizing, TypedFamily};
use crate::ffi::KdPkdArgs;
use crate::grad::GradOptions;
use crate::launch::{Machine, OutputSet};

/// The device addresses of one PKD call (`CUdeviceptr`s; 0 for an absent output), one per level for the
/// tensors. The loss is written where `loss` is set; d loss / d student where `grad_student` holds an address
/// per level (empty: no gradient), times the device scalar at `upstream` where that is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PkdRawBuffers {
    /// Level `l`'s student `[N, C, H, W]`.
    pub student: Vec<u64>,
    /// Level `l`'s teacher, the student's shape.
    pub teacher: Vec<u64>,
    /// One f32: the loss.
    pub loss: u64,
    /// Level `l`'s d loss / d student, in the input dtype; empty for no gradient.
    pub grad_student: Vec<u64>,
    /// One f32 read by the kernels: d total / d loss.
    pub upstream: u64,
}

impl PkdRawBuffers {
    /// The outputs the call asks for, checked against the level count.
    fn outputs(&self, levels: &PkdLevels, options: GradOptions) -> Result<OutputSet> {
        let l = levels.len();
        for (what, n) in
            [("student buffers (one per level)", self.student.len()), ("teacher buffers", self.teacher.len())]
        {
            if n != l {
                return Err(KdError::ShapeMismatch { what, expected: vec![l], got: vec![n] });
            }
        }
        if self.student.iter().chain(&self.teacher).any(|&a| a == 0) {
            return Err(KdError::OutputMismatch {
                what: "student/teacher",
                fix: "every level's inputs need an address",
            });
        }
        let grad_student = !self.grad_student.is_empty();
        if grad_student {
            if self.grad_student.len() != l {
                return Err(KdError::ShapeMismatch {
                    what: "grad_student buffers (one per level, or none)",
                    expected: vec![l],
                    got: vec![self.grad_student.len()],
                });
            }
            if self.grad_student.contains(&0) {
                return Err(KdError::OutputMismatch {
                    what: "grad_student",
                    fix: "gradients come for every level: give each level's gradient an address, or none",
                });
            }
        }
        OutputSet::student(
            self.loss != 0,
            grad_student,
            self.upstream != 0,
            false,
            "nothing to compute: give the loss or the student gradients an address",
            options,
        )
    }
}

impl Family for Pkd {
    const FILE: KernelFile = KernelFile::new("pkd", &plan::KERNELS);
    type Config = PkdConfig;
    type Shape = PkdLevels;
    type RawBuffers = PkdRawBuffers;
    type Path = ();

    fn workspace_bound(at: Sizing<'_, Self>) -> Result<(usize, usize)> {
        Ok((plan::workspace_bound(at.config, at.shape)?, 1))
    }

    unsafe fn run(call: RawCall<'_, Self>, mut on: Machine<'_>) -> Result<()> {
        call.check()?;
        let (levels, buffers) = (call.shape, call.buffers);
        let outputs = buffers.outputs(levels, call.options)?;
        let PkdPlan { params, launches, offsets, workspace_floats } =
            plan::plan(call.config, levels, outputs, call.options.scale)?;
        let (floats, counters) = on.scratch.prepare(workspace_floats, 1)?;
        let ws = |k: usize| floats + 4 * offsets[k] as u64;
        // SAFETY: plain old data; zero addresses are "absent".
        let mut args: KdPkdArgs = unsafe { std::mem::zeroed() };
        args.student[..levels.len()].copy_from_slice(&buffers.student);
        args.teacher[..levels.len()].copy_from_slice(&buffers.teacher);
        if outputs.grad_student {
            args.grad_student[..levels.len()].copy_from_slice(&buffers.grad_student);
        }
        args.loss = buffers.loss;
        args.upstream = buffers.upstream;
        args.partials = ws(0);
        args.coef = ws(1);
        args.loss_partials = ws(2);
        args.counter = counters;
        args.p = params;
        // SAFETY: `args` is the block pkd.cu's kernels take; its addresses come from the caller (who vouches for
        // them) and from the workspace, sized by the plan.
        unsafe { on.launch_all(&launches, call.dtype, &args) }
    }
}

impl TypedFamily for Pkd {
    type Buffers<'a, T: KdFloat + 'a> = super::PkdBuffers<'a, T>;

    fn bind<'a: 's, 's, T: KdFloat>(
        _config: &PkdConfig,
        levels: &PkdLevels,
        buffers: super::PkdBuffers<'a, T>,
        binder: &mut Binder<'s>,
    ) -> Result<(PkdRawBuffers, GradOptions)> {
        let l = levels.len();
        let counts = [buffers.student.len(), buffers.teacher.len()];
        if counts != [l, l] || !(buffers.grad_student.is_empty() || buffers.grad_student.len() == l) {
            return Err(KdError::ShapeMismatch {
                what: "buffer counts (student, teacher, grad_student): one per level (no gradients: none)",
                expected: vec![l, l, l],
                got: vec![counts[0], counts[1], buffers.grad_student.len()],
            });
        }
        let mut raw = PkdRawBuffers {
            loss: binder.output("loss", buffers.loss, 1)?,
            upstream: binder.optional_input("upstream", buffers.upstream, 1)?,
            ..PkdRawBuffers::default()
        };
        for (shape, (s, t)) in levels.shapes().iter().zip(buffers.student.iter().zip(buffers.teacher)) {
            raw.student.push(binder.input("student level", *s, shape.numel())?);
            raw.teacher.push(binder.input("teacher level", *t, shape.numel())?);
        }
        for (shape, g) in levels.shapes().iter().zip(buffers.grad_student) {
            raw.grad_student.push(binder.output("grad_student level", Some(g), shape.numel())?);
        }
        Ok((raw, buffers.options))
    }
}
