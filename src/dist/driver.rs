//! One DIST call from device addresses: checks, plan, workspace, argument block, launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use std::ffi::c_void;

use ndarray::ArrayView4;

use super::plan;
use super::{Dist, DistConfig};
use crate::cpu::CpuOutput;
use crate::cuda::Binder;
use crate::dtype::{DType, HostFloat, KdFloat};
use crate::error::Result;
use crate::family::{
    bind_pair, Family, PairBuffers, PairFamily, PairRawBuffers, RawCall, StudentGradFamily, StudentTeacherFamily,
    TypedFamily,
};
use crate::ffi::KdDistArgs;
use crate::grad::GradOptions;
use crate::launch::{launch_or_reset, DeviceInfo, Launcher, OutputSet, Scratch};
use crate::shape::Nchw;

/// The workspace floats any call on `shape` may need.
pub(crate) fn workspace_bound(config: &DistConfig, shape: &Nchw, sm_count: usize) -> Result<usize> {
    let outputs = OutputSet { loss: true, grad_student: true, ..OutputSet::default() };
    Ok(plan::plan(config, shape, sm_count, outputs, 1.0)?.workspace_floats)
}

/// Runs one call.
///
/// # Safety
/// Every non-zero address of `buffers` holds what [`PairRawBuffers`] says for `shape` and `dtype`, where
/// `launcher`'s kernels can reach it.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run(
    config: &DistConfig,
    shape: &Nchw,
    dtype: DType,
    buffers: &PairRawBuffers,
    options: GradOptions,
    device: &dyn DeviceInfo,
    scratch: &mut dyn Scratch,
    launcher: &mut dyn Launcher,
) -> Result<()> {
    config.validate()?;
    options.validate()?;
    let outputs = buffers.outputs(false, options)?;
    let plan = plan::plan(config, shape, device.sm_count(), outputs, options.scale)?;
    let (floats, counters) = scratch.prepare(plan.workspace_floats, 1)?;
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
    for launch in &plan.launches {
        // SAFETY: `args` is the block dist.cu's kernels take; its addresses come from the caller (who vouches
        // for them) and from the workspace, sized by the plan.
        unsafe { launch_or_reset(launcher, scratch, launch, dtype, (&args as *const KdDistArgs).cast::<c_void>()) }
            .map_err(|e| e.into_error())?;
    }
    Ok(())
}

impl Family for Dist {
    const NAME: &'static str = "dist";
    const KERNELS: &'static [&'static str] = &plan::KERNELS;
    type Config = DistConfig;
    type Shape = [usize];
    type RawBuffers = PairRawBuffers;
    type Path = ();
    type Report = ();

    fn validate(config: &DistConfig) -> Result<()> {
        config.validate()
    }

    fn workspace_bound(
        config: &DistConfig,
        shape: &[usize],
        _dtype: DType,
        device: &dyn DeviceInfo,
    ) -> Result<(usize, usize)> {
        let shape = Nchw::from_dims("student", shape)?;
        Ok((workspace_bound(config, &shape, device.sm_count())?, 1))
    }

    unsafe fn run(
        call: RawCall<'_, Self>,
        device: &dyn DeviceInfo,
        scratch: &mut dyn Scratch,
        launcher: &mut dyn Launcher,
    ) -> Result<()> {
        let shape = Nchw::from_dims("student", call.shape)?;
        // SAFETY: forwarded from the caller.
        unsafe { run(call.config, &shape, call.dtype, call.buffers, call.options, device, scratch, launcher) }
    }
}

impl TypedFamily for Dist {
    type Buffers<'a, T: KdFloat + 'a> = PairBuffers<'a, T>;

    fn bind<'a: 's, 's, T: KdFloat>(
        _config: &DistConfig,
        shape: &[usize],
        buffers: PairBuffers<'a, T>,
        binder: &mut Binder<'s>,
    ) -> Result<(PairRawBuffers, GradOptions)> {
        bind_pair(Nchw::from_dims("student", shape)?.numel(), buffers, binder)
    }
}

impl PairFamily for Dist {
    fn teacher_grad(_config: &DistConfig) -> bool {
        false
    }

    fn cpu<T: HostFloat>(
        config: &DistConfig,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
    ) -> Result<CpuOutput> {
        super::DistCpu::new(*config)?.forward_backward(student, teacher)
    }

    fn pair_raw(pair: PairRawBuffers) -> Result<PairRawBuffers> {
        Ok(pair)
    }
}

impl StudentTeacherFamily for Dist {
    fn pair_buffers<'a, T: KdFloat>(pair: PairBuffers<'a, T>) -> PairBuffers<'a, T> {
        pair
    }
}

impl StudentGradFamily for Dist {
    type Reference = super::DistCpu;

    fn with_shape<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&[usize]) -> Result<R>) -> Result<R> {
        Nchw::from_dims("student", student)?.expect_same("teacher", teacher)?;
        f(student)
    }

    fn raw_buffers(pair: PairRawBuffers) -> Result<PairRawBuffers> {
        Ok(pair)
    }
}
