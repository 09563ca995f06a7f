//! One pixel-KD call from device addresses: checks, plan, workspace, argument block, launch. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use super::plan::{self, Device, PixelKdPlan};
use super::{PixelKd, PixelKdConfig, PixelKdPath};
use crate::dtype::DType;
use crate::error::Result;
use crate::family::{Family, PairRawBuffers, PlainPairFamily, RawCall};
use crate::ffi::KdPixelKdArgs;
use crate::grad::GradOptions;
use crate::launch::{launch_all, DeviceInfo, Launcher, OutputSet, Scratch};
use crate::shape::Nchw;

/// Plans a call on `device` (the tiled kernel's grid from its occupancy with the tile's shared memory).
pub(crate) fn plan_on(
    config: &PixelKdConfig,
    path: PixelKdPath,
    shape: &Nchw,
    dtype: DType,
    outputs: OutputSet,
    scale: f64,
    device: &dyn DeviceInfo,
) -> Result<PixelKdPlan> {
    plan::plan(config, shape, dtype, Device::of(device), path, outputs, scale, |bytes| {
        device.resident_blocks(plan::TILED, dtype, bytes)
    })
}

/// Runs one call; returns the path it took.
///
/// # Safety
/// Every non-zero address of `buffers` holds what [`PairRawBuffers`] says for `shape` and `dtype`, where
/// `launcher`'s kernels can reach it.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run(
    config: &PixelKdConfig,
    path: PixelKdPath,
    shape: &Nchw,
    dtype: DType,
    buffers: &PairRawBuffers,
    options: GradOptions,
    device: &dyn DeviceInfo,
    scratch: &mut dyn Scratch,
    launcher: &mut dyn Launcher,
) -> Result<PixelKdPath> {
    config.validate()?;
    options.validate()?;
    let outputs = buffers.outputs(false, options)?;
    let plan = plan_on(config, path, shape, dtype, outputs, options.scale, device)?;
    let (floats, counters) = scratch.prepare(plan.workspace_floats, 1)?;
    let args = KdPixelKdArgs {
        student: buffers.student,
        teacher: buffers.teacher,
        grad_student: buffers.grad_student,
        loss: buffers.loss,
        upstream: buffers.upstream,
        block_totals: floats,
        counter: counters,
        p: plan.params,
    };
    // SAFETY: `args` is the block pixel_kd.cu's kernels take; its addresses come from the caller (who vouches
    // for them) and from the workspace, sized by the plan.
    unsafe { launch_all(launcher, scratch, std::slice::from_ref(&plan.launch), dtype, &args) }?;
    Ok(plan.path)
}

/// The workspace any call on `shape` may need, on either path.
pub(crate) fn workspace_bound(config: &PixelKdConfig, shape: &Nchw, dtype: DType, device: &dyn DeviceInfo) -> usize {
    let outputs = OutputSet { loss: true, grad_student: true, ..OutputSet::default() };
    let mut floats = 0;
    for path in [PixelKdPath::Tiled, PixelKdPath::PerPixel] {
        if let Ok(p) = plan_on(config, path, shape, dtype, outputs, 1.0, device) {
            floats = floats.max(p.workspace_floats);
        }
    }
    floats
}

impl Family for PixelKd {
    const NAME: &'static str = "pixel_kd";
    const KERNELS: &'static [&'static str] = &plan::KERNELS;
    const LARGE_SMEM_KERNELS: &'static [&'static str] = &plan::OPT_IN_SMEM;
    type Config = PixelKdConfig;
    type Shape = [usize];
    type RawBuffers = PairRawBuffers;
    type Path = PixelKdPath;
    type Report = PixelKdPath;

    fn validate(config: &PixelKdConfig) -> Result<()> {
        config.validate()
    }

    fn workspace_bound(
        config: &PixelKdConfig,
        shape: &[usize],
        dtype: DType,
        device: &dyn DeviceInfo,
    ) -> Result<(usize, usize)> {
        let shape = Nchw::from_dims("student", shape)?;
        Ok((workspace_bound(config, &shape, dtype, device), 1))
    }

    unsafe fn run(
        call: RawCall<'_, Self>,
        device: &dyn DeviceInfo,
        scratch: &mut dyn Scratch,
        launcher: &mut dyn Launcher,
    ) -> Result<PixelKdPath> {
        let shape = Nchw::from_dims("student", call.shape)?;
        // SAFETY: forwarded from the caller.
        unsafe {
            run(call.config, call.path, &shape, call.dtype, call.buffers, call.options, device, scratch, launcher)
        }
    }
}

impl PlainPairFamily for PixelKd {
    type Reference = super::PixelKdCpu;
}
