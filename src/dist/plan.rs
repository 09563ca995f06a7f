//! Launch geometry of the DIST kernels (kernels/dist.cu): grids, the parameter block and the workspace
//! layout. Pure; shared by the CUDA wrapper, the host emulation and the launch-limit sweep.

use super::DistConfig;
use crate::error::{KdError, Result};
use crate::ffi::{self, KdDistParams};
use crate::launch::{self, Launch, OutputSet, BLOCK_THREADS};
use crate::shape::Nchw;
use crate::validate;

pub(crate) const STATS: &str = "dist_stats";
pub(crate) const FINISH: &str = "dist_finish";
pub(crate) const GRAD: &str = "dist_grad";
pub(crate) const KERNELS: [&str; 3] = [STATS, FINISH, GRAD];

/// The most classes DIST takes: `dist_stats` keeps each class's shifts in shared memory (16 KiB at this
/// count). Every segmentation benchmark (19 to 171 classes) and ImageNet's 1000 classes fit.
pub(crate) const MAX_CLASSES: usize = ffi::KD_DIST_MAX_CLASSES as usize;
/// Pixels of one tile of `dist_stats`.
const TILE_PIXELS: usize = ffi::KD_DIST_TILE_PIXELS as usize;
/// One wave of resident 256-thread blocks per SM; blocks then stride over the remaining tiles (and pixels).
const BLOCKS_PER_SM: usize = 8;
/// The most doubles the per-(class, block) moments take (64 MiB): with many classes, fewer blocks.
pub(crate) const MAX_MOMENT_DOUBLES: usize = 8 << 20;
/// Moments per (class, block): sums of x, y, x^2, y^2, x y.
const MOMENTS: usize = 5;
const COEFS: usize = ffi::KD_DIST_COEFS as usize;

/// Everything a call needs besides the buffers.
#[derive(Debug, Clone)]
pub(crate) struct DistPlan {
    pub params: KdDistParams,
    pub launches: Vec<Launch>,
    pub workspace_floats: usize,
    /// Byte offsets in the workspace of `pixel_rho`, `class_rho` and `coefs` (`moments` is at 0).
    pub offsets: [u64; 3],
}

/// Plans a call. `grad_factor` is `GradOptions::scale`.
pub(crate) fn plan(
    config: &DistConfig,
    shape: &Nchw,
    sm_count: usize,
    outputs: OutputSet,
    grad_factor: f64,
) -> Result<DistPlan> {
    let c = shape.c;
    if c > MAX_CLASSES {
        return Err(KdError::TooLarge {
            what: "student",
            detail: format!(
                "{c} classes; DIST takes at most {MAX_CLASSES} (its kernels keep per-class shifts in shared memory)"
            ),
        });
    }
    let pixels = shape.n * shape.plane();
    let weight = config.loss_weight * config.tau * config.tau;
    let inter_loss_weight = weight * config.beta;
    let intra_loss_weight = weight * config.gamma;
    let inter_grad_scale = weight / config.tau * config.beta / pixels as f64 * grad_factor;
    let intra_grad_scale = weight / config.tau * config.gamma / c as f64 * grad_factor;
    validate::representable_f32("loss_weight * tau^2 * beta", inter_loss_weight)?;
    validate::representable_f32("loss_weight * tau^2 * gamma", intra_loss_weight)?;
    validate::representable_f32("loss_weight * tau * beta / (N*H*W) * GradOptions::scale", inter_grad_scale)?;
    validate::representable_f32("loss_weight * tau * gamma / C * GradOptions::scale", intra_grad_scale)?;

    // Every block of dist_stats takes at least one tile (a block without one would leave its moments unset).
    let tiles = pixels.div_ceil(TILE_PIXELS);
    let stats_blocks = tiles.min(BLOCKS_PER_SM * sm_count.max(1)).min((MAX_MOMENT_DOUBLES / (MOMENTS * c)).max(1));
    let grad_blocks = pixels.div_ceil(BLOCK_THREADS as usize).min(BLOCKS_PER_SM * sm_count.max(1));
    let params = KdDistParams {
        pixels: pixels as i64,
        plane: shape.plane() as i64,
        classes: c as i32,
        flags: outputs.flags(),
        stats_blocks: launch::grid_blocks("student", stats_blocks)? as i32,
        inv_tau: (1.0 / config.tau) as f32,
        inter_loss_weight: inter_loss_weight as f32,
        intra_loss_weight: intra_loss_weight as f32,
        inter_grad_scale: inter_grad_scale as f32,
        intra_grad_scale: intra_grad_scale as f32,
    };
    let mut launches =
        vec![Launch::new(STATS, stats_blocks as u32), Launch::new(FINISH, launch::grid_blocks("student", c)?)];
    if outputs.grad_student {
        launches.push(Launch::new(GRAD, launch::grid_blocks("student", grad_blocks)?));
    }

    // Workspace (f32 words): the doubles first (moments, pixel_rho, class_rho), then the coefficients.
    let moments_floats = 2 * MOMENTS * c * stats_blocks;
    let pixel_rho = moments_floats;
    let class_rho = pixel_rho + 2 * stats_blocks;
    let coefs = class_rho + 2 * c;
    let bytes = |floats: usize| (floats * 4) as u64;
    Ok(DistPlan {
        params,
        launches,
        workspace_floats: coefs + COEFS * c,
        offsets: [bytes(pixel_rho), bytes(class_rho), bytes(coefs)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: OutputSet =
        OutputSet { loss: true, grad_student: true, grad_teacher: false, device_upstream: false, accumulate: false };

    /// Every block of dist_stats has a tile, the tiles cover the pixels, and the moments stay within their
    /// bound at every class and SM count.
    #[test]
    fn blocks_cover_the_pixels_within_the_bound() {
        for c in [1, 19, 150, 1000, MAX_CLASSES] {
            for sms in [1, 2, 132, 1024] {
                for dims in [[1, c, 1, 1], [8, c, 128, 256], [2, c, 17, 13], [16, c, 512, 1024]] {
                    let shape = Nchw::from_dims("student", &dims).unwrap();
                    let p = plan(&DistConfig::default(), &shape, sms, ALL, 1.0).unwrap();
                    let blocks = p.params.stats_blocks as usize;
                    let pixels = shape.n * shape.plane();
                    assert!(blocks >= 1 && (blocks - 1) * TILE_PIXELS < pixels, "{dims:?} {sms}: idle block");
                    assert!(MOMENTS * c * blocks <= MAX_MOMENT_DOUBLES.max(MOMENTS * c), "{dims:?} {sms}");
                    assert_eq!(p.launches.len(), 3);
                    assert_eq!(p.launches[1].grid as usize, c);
                    assert_eq!(p.workspace_floats, 2 * MOMENTS * c * blocks + 2 * blocks + 2 * c + COEFS * c);
                }
            }
        }
    }

    #[test]
    fn forward_has_no_gradient_launch() {
        let shape = Nchw::from_dims("student", &[2, 5, 3, 3]).unwrap();
        let forward = OutputSet { grad_student: false, ..ALL };
        let p = plan(&DistConfig::default(), &shape, 132, forward, 1.0).unwrap();
        assert_eq!(p.launches.iter().map(|l| l.kernel).collect::<Vec<_>>(), [STATS, FINISH]);
    }

    #[test]
    fn too_many_classes_is_an_error() {
        let shape = Nchw::from_dims("student", &[1, MAX_CLASSES + 1, 2, 2]).unwrap();
        assert!(matches!(plan(&DistConfig::default(), &shape, 132, ALL, 1.0), Err(KdError::TooLarge { .. })));
    }

    #[test]
    fn unrepresentable_scales_are_errors() {
        let shape = Nchw::from_dims("student", &[1, 3, 2, 2]).unwrap();
        let config = DistConfig { loss_weight: 1e30, tau: 1e10, ..DistConfig::default() };
        assert!(matches!(plan(&config, &shape, 132, ALL, 1.0), Err(KdError::InvalidParameter { .. })));
    }
}
