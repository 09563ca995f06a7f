//! One pixel-KD call from device addresses: checks, plan, workspace, argument block, launch. Shared by the
//! typed CUDA API, the raw layer and the host emulation.

use super::plan::{self, Device, PixelKdPlan};
use super::{PixelKd, PixelKdConfig, PixelKdPath};
use crate::dtype::DType;
use crate::error::Result;
use crate::family::{KernelFile, NchwFamily, PairRawBuffers, PlainPairFamily, RawCall, Sizing};
use crate::ffi::KdPixelKdArgs;
use crate::launch::{DeviceInfo, Machine, OutputSet};
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

impl NchwFamily for PixelKd {
    const FILE: KernelFile = KernelFile::new("pixel_kd", &plan::KERNELS)
        .with_large_smem(&plan::OPT_IN_SMEM)
        .with_static_smem(&plan::STATIC_SMEM);
    type Config = PixelKdConfig;
    type RawBuffers = PairRawBuffers;
    type Path = PixelKdPath;

    /// The workspace any call on the shape may need, on either path.
    fn workspace(at: Sizing<'_, Self, Nchw>) -> Result<(usize, usize)> {
        let mut floats = 0;
        for path in [PixelKdPath::Tiled, PixelKdPath::PerPixel] {
            if let Ok(p) = plan_on(at.config, path, at.shape, at.dtype, OutputSet::TRAINING, 1.0, at.device) {
                floats = floats.max(p.workspace_floats);
            }
        }
        Ok((floats, 1))
    }

    unsafe fn run_nchw(call: RawCall<'_, Self, Nchw>, mut on: Machine<'_>) -> Result<PixelKdPath> {
        call.check()?;
        let buffers = call.buffers;
        let outputs = buffers.outputs(false, call.options)?;
        let plan = plan_on(call.config, call.path, call.shape, call.dtype, outputs, call.options.scale, on.device)?;
        let (floats, counters) = on.scratch.prepare(plan.workspace_floats, 1)?;
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
        // SAFETY: `args` is the block pixel_kd.cu's kernels take; its addresses come from the caller (who
        // vouches for them) and from the workspace, sized by the plan.
        unsafe { on.launch_all(std::slice::from_ref(&plan.launch), call.dtype, &args) }?;
        Ok(plan.path)
    }
}

impl PlainPairFamily for PixelKd {
    type Reference = super::PixelKdCpu;
}
