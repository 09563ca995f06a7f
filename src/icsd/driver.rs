//! One ICSD call from device addresses: checks, plan, workspace, argument block, launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use std::ffi::c_void;

use super::plan;
use super::{Icsd, IcsdConfig};
use crate::cpu::CpuOutput;
use crate::cuda::Binder;
use crate::dtype::DType;
use crate::dtype::{HostFloat, KdFloat};
use crate::error::{KdError, Result};
use crate::family::{
    bind_pair, KernelFile, NchwFamily, PairBuffers, PairFamily, PairRawBuffers, RawCall, Sizing, StudentTeacherFamily,
    TypedFamily,
};
use crate::ffi::{KdIcsdArgs, KdIcsdMixArgs};
use crate::grad::GradOptions;
use crate::launch::{Launch, Launcher, Machine, OutputSet};
use crate::shape::Nchw;
use cudarc::driver::DevicePtrMut;
use ndarray::ArrayView4;

/// The device addresses of one ICSD call (`CUdeviceptr`s; 0 for an absent output). The call writes the loss
/// where `loss` is set, d loss / d student where `grad_student` is (times the device scalar at `upstream`
/// where that is set), and the row-normalised `C x C` matrices (f32) where `sim_student` / `sim_teacher` are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IcsdRawBuffers {
    /// `[B, C, H, W]` student logits.
    pub student: u64,
    /// `[B, C, H, W]` teacher logits.
    pub teacher: u64,
    /// One f32: the loss.
    pub loss: u64,
    /// `[B, C, H, W]`: d loss / d student.
    pub grad_student: u64,
    /// One f32 read by the kernels: d total / d loss.
    pub upstream: u64,
    /// `C * C` f32: `Mh_S`.
    pub sim_student: u64,
    /// `C * C` f32: `Mh_T`.
    pub sim_teacher: u64,
}

impl IcsdRawBuffers {
    fn outputs(&self, options: GradOptions) -> Result<OutputSet> {
        if self.student == 0 || self.teacher == 0 {
            return Err(KdError::OutputMismatch { what: "student/teacher", fix: "both inputs need a device address" });
        }
        OutputSet::student(
            self.loss != 0,
            self.grad_student != 0,
            self.upstream != 0,
            self.sim_student != 0 || self.sim_teacher != 0,
            "nothing to compute: give the loss, the student gradient or a matrix an address",
            options,
        )
    }
}

/// Queues `out = wa * a + wb * b` on three device f32 (AICSD's loss terms).
///
/// # Safety
/// `a`, `b`, `out` are device f32 the launcher's kernels can reach.
pub(crate) unsafe fn mix(
    launcher: &mut dyn Launcher,
    dtype: DType,
    a: u64,
    b: u64,
    out: u64,
    wa: f64,
    wb: f64,
) -> Result<()> {
    let args = KdIcsdMixArgs { a, b, out, wa: wa as f32, wb: wb as f32 };
    // SAFETY: forwarded from the caller; `args` is icsd_mix's block.
    unsafe { launcher.launch(&Launch::new(plan::MIX, 1), dtype, (&args as *const KdIcsdMixArgs).cast::<c_void>()) }
        .map_err(|e| e.into_error())
}

/// The typed buffers of one ICSD call: a pair call, and the two row-normalised `C x C` matrices (f32,
/// row-major) where given.
pub struct IcsdBuffers<'a, T> {
    /// Inputs, loss, student gradient, upstream scalar, options (ICSD gives no teacher gradient).
    pub pair: PairBuffers<'a, T>,
    /// `Mh_S`.
    pub sim_student: Option<&'a mut dyn DevicePtrMut<f32>>,
    /// `Mh_T`.
    pub sim_teacher: Option<&'a mut dyn DevicePtrMut<f32>>,
}

fn no_teacher_grad(grad_teacher: bool) -> Result<()> {
    if grad_teacher {
        return Err(KdError::OutputMismatch {
            what: "grad_teacher",
            fix: "ICSD gives no teacher gradient (the teacher is a constant): pass None",
        });
    }
    Ok(())
}

impl NchwFamily for Icsd {
    const FILE: KernelFile = KernelFile::new("icsd", &plan::KERNELS);
    type Config = IcsdConfig;
    type RawBuffers = IcsdRawBuffers;
    type Path = ();

    fn workspace(at: Sizing<'_, Self, Nchw>) -> Result<(usize, usize)> {
        Ok((plan::plan(at.config, at.shape, at.device.sm_count(), OutputSet::TRAINING, 1.0)?.workspace_floats, 1))
    }

    unsafe fn run_nchw(call: RawCall<'_, Self, Nchw>, mut on: Machine<'_>) -> Result<()> {
        call.check()?;
        let buffers = call.buffers;
        let outputs = buffers.outputs(call.options)?;
        let plan = plan::plan(call.config, call.shape, on.device.sm_count(), outputs, call.options.scale)?;
        let (floats, _) = on.scratch.prepare(plan.workspace_floats, 1)?;
        let [mats, stats, coef, dots] = plan.offsets;
        let args = KdIcsdArgs {
            student: buffers.student,
            teacher: buffers.teacher,
            grad_student: buffers.grad_student,
            loss: buffers.loss,
            upstream: buffers.upstream,
            sim_student: buffers.sim_student,
            sim_teacher: buffers.sim_teacher,
            stats: floats + stats,
            partials: floats,
            mats: floats + mats,
            coef: floats + coef,
            dots: floats + dots,
            p: plan.params,
        };
        // SAFETY: `args` is the block icsd.cu's kernels take; its addresses come from the caller (who vouches
        // for them) and from the workspace, sized by the plan.
        unsafe { on.launch_all(&plan.launches, call.dtype, &args) }
    }
}

impl TypedFamily for Icsd {
    type Buffers<'a, T: KdFloat + 'a> = IcsdBuffers<'a, T>;

    fn bind<'a: 's, 's, T: KdFloat>(
        _config: &IcsdConfig,
        shape: &[usize],
        buffers: IcsdBuffers<'a, T>,
        binder: &mut Binder<'s>,
    ) -> Result<(IcsdRawBuffers, GradOptions)> {
        let nchw = Nchw::from_dims("student", shape)?;
        no_teacher_grad(buffers.pair.grad_teacher.is_some())?;
        let (pair, options) = bind_pair((nchw.numel(), nchw.numel()), buffers.pair, binder)?;
        let cc = nchw.c * nchw.c;
        let raw = IcsdRawBuffers {
            sim_student: binder.output("sim_student", buffers.sim_student, cc)?,
            sim_teacher: binder.output("sim_teacher", buffers.sim_teacher, cc)?,
            ..Self::pair_raw(pair)?
        };
        Ok((raw, options))
    }
}

impl PairFamily for Icsd {
    fn cpu<T: HostFloat>(
        config: &IcsdConfig,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
    ) -> Result<CpuOutput> {
        let out = super::IcsdCpu::new(*config)?.forward_backward(student, teacher)?;
        Ok(CpuOutput { loss: out.loss, grad_student: out.grad_student, grad_teacher: None })
    }

    fn teacher_grad(_config: &IcsdConfig) -> bool {
        false
    }

    fn pair_raw(pair: PairRawBuffers) -> Result<IcsdRawBuffers> {
        no_teacher_grad(pair.grad_teacher != 0)?;
        Ok(IcsdRawBuffers {
            student: pair.student,
            teacher: pair.teacher,
            loss: pair.loss,
            grad_student: pair.grad_student,
            upstream: pair.upstream,
            sim_student: 0,
            sim_teacher: 0,
        })
    }
}

impl StudentTeacherFamily for Icsd {
    fn pair_buffers<'a, T: KdFloat>(pair: PairBuffers<'a, T>) -> IcsdBuffers<'a, T> {
        IcsdBuffers { pair, sim_student: None, sim_teacher: None }
    }
}
