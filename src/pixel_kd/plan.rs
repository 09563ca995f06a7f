//! Launch geometry of the pixel-KD kernel: the parameter block, the grid and the workspace. Shared by the
//! CUDA wrapper and the host emulation of the kernels.

use super::PixelKdConfig;
use crate::cuda::{self, BLOCK_THREADS};
use crate::error::{KdError, Result};
use crate::ffi::KdPixelKdParams;
use crate::outputs::OutputSet;
use crate::shape::Nchw;
use crate::validate;

/// One wave of resident 256-thread blocks per SM; threads then stride over the remaining pixels.
const BLOCKS_PER_SM: usize = 8;

/// Everything a pixel-KD launch needs besides the buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PixelKdPlan {
    pub params: KdPixelKdParams,
    pub blocks: u32,
    /// Workspace floats: one partial sum per block.
    pub workspace_floats: usize,
}

/// Plans the launch for `shape` on a GPU with `sm_count` SMs: one pixel per thread, up to one full wave.
pub(crate) fn plan(config: &PixelKdConfig, shape: &Nchw, sm_count: usize, outputs: OutputSet) -> Result<PixelKdPlan> {
    if shape.c > i32::MAX as usize {
        return Err(KdError::TooLarge { what: "student", detail: format!("{} channels; at most 2^31 - 1", shape.c) });
    }
    let pixels = shape.n * shape.plane();
    let blocks = pixels.div_ceil(BLOCK_THREADS as usize).clamp(1, sm_count.max(1) * BLOCKS_PER_SM);
    let grid = cuda::grid_blocks("student", blocks)?;
    let loss_scale = config.loss_scale(shape);
    let grad_scale = config.grad_scale(shape);
    validate::representable_f32("loss_weight * [tau^2] / divisor", loss_scale)?;
    validate::representable_f32("loss_weight * [tau^2] / divisor / tau", grad_scale)?;
    let params = KdPixelKdParams {
        pixels: pixels as i64,
        plane: shape.plane() as i64,
        channels: shape.c as i32,
        flags: outputs.flags(),
        log2e_over_tau: (std::f64::consts::LOG2_E / config.tau) as f32,
        loss_scale: loss_scale as f32,
        grad_scale: grad_scale as f32,
        reserved: 0.0,
    };
    Ok(PixelKdPlan { params, blocks: grid, workspace_floats: blocks })
}
