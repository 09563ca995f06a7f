//! One CWT call from device addresses: checks, plan, workspace, argument blocks, launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use super::cuda::CwtBuffers;
use super::plan::{self, Device};
use super::{Cwt, CwtConfig, CwtSetup, CwtShapes};
use crate::cuda::Binder;
use crate::dtype::DType;
use crate::dtype::KdFloat;
use crate::error::{KdError, Result};
use crate::family::{Family, KernelFile, RawCall, Sizing, TypedFamily};
use crate::ffi::KdCwtArgs;
use crate::grad::GradOptions;
use crate::launch::{DeviceInfo, Launcher, Machine, OutputSet, Scratch};
use crate::shape::Nchw;

/// The device addresses of one CWT call (`CUdeviceptr`s; 0 for an absent output). The loss is computed
/// where `loss` is set; the gradients where `grad_student` is set, and then every parameter gradient must be
/// set too (the five come from one backward pass); times the device scalar at `upstream` where that is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CwtRawBuffers {
    /// `[N, Cs, H, W]` student features (the call's dtype).
    pub student: u64,
    /// `[N, Ct, H, W]` teacher features (the call's dtype).
    pub teacher: u64,
    /// `[Ch, Cs]` f32.
    pub w1: u64,
    /// `[Ch]` f32.
    pub b1: u64,
    /// `[Ct, Ch]` f32.
    pub w2: u64,
    /// `[Ct]` f32.
    pub b2: u64,
    /// One f32: the loss.
    pub loss: u64,
    /// `[N, Cs, H, W]` (the call's dtype): d loss / d student.
    pub grad_student: u64,
    /// `[Ch, Cs]` f32.
    pub grad_w1: u64,
    /// `[Ch]` f32.
    pub grad_b1: u64,
    /// `[Ct, Ch]` f32.
    pub grad_w2: u64,
    /// `[Ct]` f32.
    pub grad_b2: u64,
    /// One f32 read by the kernels: d total / d loss.
    pub upstream: u64,
}

impl CwtRawBuffers {
    fn outputs(&self, options: GradOptions) -> Result<OutputSet> {
        if [self.student, self.teacher, self.w1, self.b1, self.w2, self.b2].contains(&0) {
            return Err(KdError::OutputMismatch {
                what: "student/teacher/w1/b1/w2/b2",
                fix: "every input needs a device address",
            });
        }
        let grads = [self.grad_student, self.grad_w1, self.grad_b1, self.grad_w2, self.grad_b2];
        let any = grads.iter().any(|&a| a != 0);
        if any && grads.contains(&0) {
            return Err(KdError::OutputMismatch {
                what: "grad_student/grad_w1/grad_b1/grad_w2/grad_b2",
                fix: "the gradients come from one backward pass: give all five an address, or none",
            });
        }
        if !any && self.loss == 0 {
            return Err(KdError::OutputMismatch {
                what: "loss/gradients",
                fix: "nothing to compute: give the loss or the gradients addresses",
            });
        }
        if !any && self.upstream != 0 {
            return Err(KdError::OutputMismatch { what: "upstream", fix: "an upstream scalar needs the gradients" });
        }
        Ok(OutputSet {
            loss: self.loss != 0,
            grad_student: any,
            grad_teacher: false,
            device_upstream: self.upstream != 0,
            accumulate: options.accumulate,
        })
    }
}

/// The workspace floats any call on these shapes may need (counters: 1).
pub(crate) fn workspace_bound(
    config: &CwtConfig,
    shapes: &CwtShapes,
    student: &Nchw,
    teacher: &Nchw,
    dtype: DType,
    device: Device,
) -> Result<usize> {
    let outputs = OutputSet::TRAINING;
    let forward = OutputSet { loss: true, ..OutputSet::default() };
    let a = plan::plan(config, shapes, student, teacher, dtype, device, outputs, 1.0, None)?.workspace_floats;
    let b = plan::plan(config, shapes, student, teacher, dtype, device, forward, 1.0, None)?.workspace_floats;
    Ok(a.max(b))
}

/// Runs one call.
///
/// # Safety
/// Every non-zero address of `buffers` holds what [`CwtRawBuffers`] says for the shapes and `dtype`, where
/// `launcher`'s kernels can reach it.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run(
    config: &CwtConfig,
    shapes: &CwtShapes,
    student: &[usize],
    teacher: &[usize],
    dtype: DType,
    buffers: &CwtRawBuffers,
    options: GradOptions,
    chunk_limit: Option<usize>,
    device: &dyn DeviceInfo,
    scratch: &mut dyn Scratch,
    launcher: &mut dyn Launcher,
) -> Result<()> {
    config.validate()?;
    options.validate()?;
    let (s, t) = shapes.check_features(student, teacher)?;
    let outputs = buffers.outputs(options)?;
    let plan = plan::plan(config, shapes, &s, &t, dtype, Device::of(device), outputs, options.scale, chunk_limit)?;
    let (floats, counters) = scratch.prepare(plan.workspace_floats, 1)?;
    let mut args = KdCwtArgs {
        student: buffers.student,
        teacher: buffers.teacher,
        w1: buffers.w1,
        b1: buffers.b1,
        w2: buffers.w2,
        b2: buffers.b2,
        loss: buffers.loss,
        upstream: buffers.upstream,
        grad_student: buffers.grad_student,
        grad_w1: buffers.grad_w1,
        grad_b1: buffers.grad_b1,
        grad_w2: buffers.grad_w2,
        grad_b2: buffers.grad_b2,
        hidden: floats,
        out_grad: floats + plan.out_grad_offset,
        partials: floats + plan.partials_offset,
        loss_partials: floats + plan.loss_partials_offset,
        counter: counters,
        p: plan.chunks[0].params,
    };
    let mut on = Machine { device, scratch, launcher };
    for chunk in &plan.chunks {
        args.p = chunk.params;
        // SAFETY: `args` is the block cwt.cu's kernels take; its addresses come from the caller (who vouches
        // for them) and from the workspace, sized by the plan.
        unsafe { on.launch_all(&chunk.launches, dtype, &args) }?;
    }
    // SAFETY: as above.
    unsafe { on.launch_all(plan.combine.as_slice(), dtype, &args) }
}

/// The teacher's dims for a student of `student` dims: the same with `Ct` channels.
fn teacher_dims(shapes: &CwtShapes, student: &[usize]) -> Vec<usize> {
    let mut t = student.to_vec();
    if t.len() == 4 {
        t[1] = shapes.ct;
    }
    t
}

impl Family for Cwt {
    const FILE: KernelFile =
        KernelFile::new("cwt", &plan::KERNELS).with_large_smem(&plan::OPT_IN_SMEM).with_static_smem(&plan::STATIC_SMEM);
    type Config = CwtSetup;
    /// The student's `[N, Cs, H, W]`; the teacher is `[N, Ct, H, W]`.
    type Shape = [usize];
    type RawBuffers = CwtRawBuffers;
    type Path = ();

    fn workspace_bound(at: Sizing<'_, Self>) -> Result<(usize, usize)> {
        let CwtSetup { config, shapes } = at.config;
        let (s, t) = shapes.check_features(at.shape, &teacher_dims(shapes, at.shape))?;
        Ok((workspace_bound(config, shapes, &s, &t, at.dtype, Device::of(at.device))?, 1))
    }

    unsafe fn run(call: RawCall<'_, Self>, on: Machine<'_>) -> Result<()> {
        let CwtSetup { config, shapes } = call.config;
        let RawCall { shape: student, dtype, buffers, options, .. } = call;
        let teacher = teacher_dims(shapes, student);
        let Machine { device, scratch, launcher } = on;
        // SAFETY: forwarded from the caller.
        unsafe { run(config, shapes, student, &teacher, dtype, buffers, options, None, device, scratch, launcher) }
    }
}

impl TypedFamily for Cwt {
    type Buffers<'a, T: KdFloat + 'a> = CwtBuffers<'a, T>;

    fn bind<'a: 's, 's, T: KdFloat>(
        setup: &CwtSetup,
        student_shape: &[usize],
        buffers: CwtBuffers<'a, T>,
        binder: &mut Binder<'s>,
    ) -> Result<(CwtRawBuffers, GradOptions)> {
        let (s, t) = setup.shapes.check_features(student_shape, &teacher_dims(&setup.shapes, student_shape))?;
        let CwtShapes { cs, ch, ct } = setup.shapes;
        let params = buffers.params;
        let mut raw = CwtRawBuffers {
            student: binder.input("student", buffers.student, s.numel())?,
            teacher: binder.input("teacher", buffers.teacher, t.numel())?,
            w1: binder.input("mlp.linear1.weight", params.w1, ch * cs)?,
            b1: binder.input("mlp.linear1.bias", params.b1, ch)?,
            w2: binder.input("mlp.linear2.weight", params.w2, ct * ch)?,
            b2: binder.input("mlp.linear2.bias", params.b2, ct)?,
            loss: binder.output("loss", buffers.loss, 1)?,
            grad_student: binder.output("grad_student", buffers.grad_student, s.numel())?,
            upstream: binder.optional_input("upstream", buffers.upstream, 1)?,
            ..CwtRawBuffers::default()
        };
        if let Some(g) = buffers.grads {
            raw.grad_w1 = binder.output("grad_w1", Some(g.w1), ch * cs)?;
            raw.grad_b1 = binder.output("grad_b1", Some(g.b1), ch)?;
            raw.grad_w2 = binder.output("grad_w2", Some(g.w2), ct * ch)?;
            raw.grad_b2 = binder.output("grad_b2", Some(g.b2), ct)?;
        }
        Ok((raw, buffers.options))
    }
}
