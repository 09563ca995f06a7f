//! Launch geometry of the pixel-KD kernels: which kernel a call takes, its tile, the parameter block, the
//! grid and the workspace. Shared by the CUDA wrapper and the host emulation of the kernels.

use super::{PixelKdConfig, PixelKdPath};
use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::ffi::KdPixelKdParams;
use crate::launch::{self, DeviceInfo, Launch, OutputSet, BLOCK_THREADS};
use crate::shape::Nchw;
use crate::validate;

/// The entry points of kernels/pixel_kd.cu.
pub(crate) const TILED: &str = "pixel_kd_tiled";
pub(crate) const PER_PIXEL: &str = "pixel_kd";
pub(crate) const KERNELS: [&str; 2] = [TILED, PER_PIXEL];
/// The kernels whose blocks may have more than 48 KiB of shared memory (the launcher opts them in).
pub(crate) const OPT_IN_SMEM: [&str; 1] = [TILED];
/// The static shared memory of the kernels launched with dynamic shared memory (`KernelFile::static_smem`).
pub(crate) const STATIC_SMEM: [(&str, usize); 1] = [(TILED, 8272)];

/// One wave of resident 256-thread blocks per SM for the per-pixel kernel; threads then stride over the
/// remaining pixels.
const BLOCKS_PER_SM: usize = 8;
/// The tiled kernel takes the widest tile (most pixels, up to 256) whose staged values fit in this much
/// shared memory, which needs no opt-in and leaves room for several blocks per SM...
const TILE_BYTES_TARGET: usize = 48 * 1024;
/// ...else the narrowest tile, whatever the device allows a block (opt-in).
const NARROWEST_TILE: usize = 32;

/// Everything a pixel-KD launch needs besides the buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PixelKdPlan {
    pub params: KdPixelKdParams,
    /// [`PixelKdPath::Tiled`] or [`PixelKdPath::PerPixel`], never `Auto`.
    pub path: PixelKdPath,
    /// The one launch: `pixel_kd_tiled` with its tile's dynamic shared memory, or `pixel_kd`.
    pub launch: Launch,
    /// Workspace floats: one partial sum per block.
    pub workspace_floats: usize,
}

/// What the device offers the planner.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Device {
    pub sm_count: usize,
    /// The most dynamic shared memory one block of the tiled kernel may have (opt-in limit less its static
    /// shared memory).
    pub max_dynamic_smem: usize,
}

impl Device {
    pub(crate) fn of(info: &dyn DeviceInfo) -> Self {
        Device { sm_count: info.sm_count(), max_dynamic_smem: info.max_dynamic_smem(TILED) }
    }
}

/// The tile of the tiled kernel for `channels` channels of `dtype` on planes of `plane` pixels: pixels per
/// tile and bytes of shared memory, or `None` when even the narrowest tile does not fit. A tile is no wider
/// than the plane needs (a narrower tile gives a pixel more threads instead of leaving threads idle).
pub(crate) fn tile(channels: usize, plane: usize, dtype: DType, max_dynamic_smem: usize) -> Option<(usize, usize)> {
    let bytes = |pixels: usize| 2 * channels * pixels * dtype.size();
    let widest_useful = plane.next_power_of_two().max(NARROWEST_TILE);
    [256, 128, 64, 32]
        .into_iter()
        .find(|&p| p <= widest_useful && bytes(p) <= TILE_BYTES_TARGET.min(max_dynamic_smem))
        .or((bytes(NARROWEST_TILE) <= max_dynamic_smem).then_some(NARROWEST_TILE))
        .map(|p| (p, bytes(p)))
}

/// Plans a call on `device`: the tiled kernel where `path` allows it and a tile fits, else the per-pixel
/// kernel. `tiled_resident(bytes)` is how many blocks of the tiled kernel with `bytes` of dynamic shared
/// memory the device holds at once (its grid).
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan(
    config: &PixelKdConfig,
    shape: &Nchw,
    dtype: DType,
    device: Device,
    path: PixelKdPath,
    outputs: OutputSet,
    grad_factor: f64,
    tiled_resident: impl FnOnce(usize) -> Result<usize>,
) -> Result<PixelKdPlan> {
    if shape.c > i32::MAX as usize {
        return Err(KdError::TooLarge { what: "student", detail: format!("{} channels; at most 2^31 - 1", shape.c) });
    }
    let loss_scale = config.loss_scale(shape);
    let grad_scale = config.grad_scale(shape) * grad_factor;
    validate::representable_f32("loss_weight * [tau^2] / divisor", loss_scale)?;
    validate::representable_f32("loss_weight * [tau^2] / divisor / tau * GradOptions::scale", grad_scale)?;
    let pixels = shape.n * shape.plane();
    let mut params = KdPixelKdParams {
        pixels: pixels as i64,
        plane: shape.plane() as i64,
        channels: shape.c as i32,
        flags: outputs.flags(),
        log2e_over_tau: (std::f64::consts::LOG2_E / config.tau) as f32,
        loss_scale: loss_scale as f32,
        grad_scale: grad_scale as f32,
        tile_pixels: 0,
    };
    let tile = match path {
        PixelKdPath::PerPixel => None,
        PixelKdPath::Auto => tile(shape.c, shape.plane(), dtype, device.max_dynamic_smem),
        PixelKdPath::Tiled => {
            Some(tile(shape.c, shape.plane(), dtype, device.max_dynamic_smem).ok_or_else(|| KdError::Unsupported {
                what: "PixelKdPath::Tiled",
                detail: format!(
                    "{} {dtype} channels do not fit the narrowest tile ({NARROWEST_TILE} pixels, {} bytes of shared \
                 memory; the device allows {}); use PixelKdPath::Auto or PerPixel",
                    shape.c,
                    2 * shape.c * NARROWEST_TILE * dtype.size(),
                    device.max_dynamic_smem
                ),
            })?)
        }
    };
    let (path, launch) = match tile {
        Some((tile_pixels, bytes)) => {
            params.tile_pixels = tile_pixels as i32;
            let tiles = shape.n * shape.plane().div_ceil(tile_pixels);
            let blocks = launch::grid_blocks("student", tiles.clamp(1, tiled_resident(bytes)?.max(1)))?;
            (PixelKdPath::Tiled, Launch { dynamic_smem: bytes as u32, ..Launch::new(TILED, blocks) })
        }
        None => {
            let blocks = pixels.div_ceil(BLOCK_THREADS as usize).clamp(1, device.sm_count.max(1) * BLOCKS_PER_SM);
            (PixelKdPath::PerPixel, Launch::new(PER_PIXEL, launch::grid_blocks("student", blocks)?))
        }
    };
    Ok(PixelKdPlan { params, path, launch, workspace_floats: launch.grid as usize })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100_SMEM: usize = 227 * 1024 - 8272;

    #[test]
    fn tiles_fit_the_channels() {
        let plane = 64 * 128;
        assert_eq!(tile(19, plane, DType::F32, H100_SMEM), Some((256, 2 * 19 * 256 * 4)));
        assert_eq!(tile(19, plane, DType::BF16, H100_SMEM), Some((256, 2 * 19 * 256 * 2)));
        assert_eq!(tile(150, plane, DType::F32, H100_SMEM), Some((32, 2 * 150 * 32 * 4))); // ADE20K
        assert_eq!(tile(256, plane, DType::F32, H100_SMEM), Some((32, 65536))); // above 48 KiB: opt-in
        assert_eq!(tile(256, plane, DType::BF16, H100_SMEM), Some((32, 32768)));
        assert_eq!(tile(1, plane, DType::F32, H100_SMEM), Some((256, 2048)));
        assert_eq!(tile(1000, plane, DType::F32, H100_SMEM), None);
        assert_eq!(tile(1000, plane, DType::BF16, H100_SMEM), Some((32, 128_000)));
        assert_eq!(tile(256, plane, DType::F32, 48 * 1024), None);
    }

    #[test]
    fn tiles_are_no_wider_than_the_plane() {
        assert_eq!(tile(19, 81, DType::F32, H100_SMEM).map(|t| t.0), Some(128)); // 9x9: 2 threads a pixel
        assert_eq!(tile(19, 64, DType::F32, H100_SMEM).map(|t| t.0), Some(64));
        assert_eq!(tile(19, 1, DType::F32, H100_SMEM).map(|t| t.0), Some(32)); // the narrowest tile
        assert_eq!(tile(19, 257, DType::F32, H100_SMEM).map(|t| t.0), Some(256));
    }

    #[test]
    fn kernels_follow_the_path() {
        let config = PixelKdConfig::default();
        let device = Device { sm_count: 132, max_dynamic_smem: H100_SMEM };
        let outputs = OutputSet { loss: true, grad_student: true, ..OutputSet::default() };
        let shape = Nchw { n: 8, c: 19, h: 64, w: 128 };
        let auto = plan(&config, &shape, DType::F32, device, PixelKdPath::Auto, outputs, 1.0, |_| Ok(660)).unwrap();
        assert_eq!(auto.path, PixelKdPath::Tiled);
        assert_eq!(auto.launch.dynamic_smem, 2 * 19 * 256 * 4);
        assert_eq!(auto.params.tile_pixels, 256);
        assert_eq!(auto.launch.grid, 256); // 8 images x 32 tiles, fewer than the resident blocks
        let per_pixel =
            plan(&config, &shape, DType::F32, device, PixelKdPath::PerPixel, outputs, 1.0, |_| Ok(660)).unwrap();
        assert_eq!(per_pixel.path, PixelKdPath::PerPixel);
        let wide = Nchw { n: 2, c: 1000, h: 8, w: 8 };
        let fallback = plan(&config, &wide, DType::F32, device, PixelKdPath::Auto, outputs, 1.0, |_| Ok(660)).unwrap();
        assert_eq!(fallback.path, PixelKdPath::PerPixel);
        let forced = plan(&config, &wide, DType::F32, device, PixelKdPath::Tiled, outputs, 1.0, |_| Ok(660));
        assert!(matches!(forced, Err(KdError::Unsupported { .. })), "{forced:?}");
        let big = Nchw { n: 8, c: 19, h: 512, w: 1024 };
        let grid = plan(&config, &big, DType::BF16, device, PixelKdPath::Auto, outputs, 1.0, |_| Ok(660)).unwrap();
        assert_eq!(grid.launch.grid, 660, "as many blocks as are resident, striding over the tiles");
        assert_eq!(grid.workspace_floats, 660);
    }
}
