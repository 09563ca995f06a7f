//! One DIST call from device addresses: checks, plan, workspace, argument block, launches. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use super::plan;
use super::{Dist, DistConfig};
use crate::dtype::DType;
use crate::error::Result;
use crate::family::{Family, PairRawBuffers, PlainPairFamily, RawCall, StudentGradFamily};
use crate::ffi::KdDistArgs;
use crate::grad::GradOptions;
use crate::launch::{launch_all, DeviceInfo, Launcher, OutputSet, Scratch};
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
    // SAFETY: `args` is the block dist.cu's kernels take; its addresses come from the caller (who vouches for
    // them) and from the workspace, sized by the plan.
    unsafe { launch_all(launcher, scratch, &plan.launches, dtype, &args) }
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

impl PlainPairFamily for Dist {
    type Reference = super::DistCpu;
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
