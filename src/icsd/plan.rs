//! Launch geometry of the ICSD kernels (kernels/icsd.cu): tiles, grids, the parameter block and the
//! workspace layout. Pure; shared by the CUDA wrapper and the host emulation.

use super::{IcsdConfig, IcsdVariant};
use crate::error::{KdError, Result};
use crate::ffi::{self, KdIcsdParams};
use crate::launch::{self, Launch, OutputSet, BLOCK_THREADS};
use crate::shape::Nchw;
use crate::validate;

pub(crate) const STATS: &str = "icsd_stats";
pub(crate) const GRAM: &str = "icsd_gram";
pub(crate) const EPILOGUE: &str = "icsd_epilogue";
pub(crate) const DOT: &str = "icsd_dot";
pub(crate) const GRAD: &str = "icsd_grad";
pub(crate) const MIX: &str = "icsd_mix";
pub(crate) const KERNELS: [&str; 6] = [STATS, GRAM, EPILOGUE, DOT, GRAD, MIX];

const THREADS: usize = BLOCK_THREADS as usize;
/// The most classes ICSD takes (every segmentation benchmark's: VOC 21, Cityscapes 19, ADE20K 150,
/// COCO-Stuff 171, Mapillary 124). `icsd_gram` stages tiles of about `4096 / C` pixels and adds each tile's
/// `C^2 + C` class statistics into its block's double partials, so its memory traffic a pixel grows as `C^3`:
/// about 130 KB at 256 classes (0.3 s on an H100 for both inputs at 8 x 512 x 1024), 1 MB at
/// 512, 64 MB at 2048 (hours). Beyond this, a call is `KdError::TooLarge` (docs/losses.md §3.3).
pub(crate) const MAX_CLASSES: usize = 256;
/// Entries of a gradient tile at most: `C * grad_cols <= 256 * KD_ICSD_MAX_ENTRIES`.
const GRAD_TILE_ENTRIES: usize = THREADS * ffi::KD_ICSD_MAX_ENTRIES as usize;
/// The most doubles `icsd_gram`'s partials take (64 MiB): with many classes, fewer blocks, each over more
/// tiles, so that the workspace stays bounded and `icsd_epilogue`'s one block sums few partials.
pub(crate) const MAX_PARTIAL_DOUBLES: usize = 8 << 20;
/// Blocks per image of the paper variant's gradient kernels at most (their partials are summed serially).
const MAX_PAPER_GROUPS: usize = 32;

/// Everything a call needs besides the buffers.
#[derive(Debug, Clone)]
pub(crate) struct IcsdPlan {
    pub params: KdIcsdParams,
    pub launches: Vec<Launch>,
    pub workspace_floats: usize,
    /// Byte offsets in the workspace of `mats`, `stats`, `coef`, `dots` (`partials` is at 0).
    pub offsets: [u64; 4],
}

fn prev_pow2(x: usize) -> usize {
    if x == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - x.leading_zeros())
    }
}

/// Plans a call. `grad_factor` is `GradOptions::scale`.
pub(crate) fn plan(
    config: &IcsdConfig,
    shape: &Nchw,
    sm_count: usize,
    outputs: OutputSet,
    grad_factor: f64,
) -> Result<IcsdPlan> {
    let (b, c, h, w) = (shape.n, shape.c, shape.h, shape.w);
    if c > MAX_CLASSES {
        return Err(KdError::TooLarge {
            what: "student",
            detail: format!(
                "{c} classes; ICSD takes at most {MAX_CLASSES} (its class statistics cost C^3 memory traffic a \
                 pixel; see docs/losses.md §3.3)"
            ),
        });
    }
    let paper = config.variant == IcsdVariant::Paper;
    let loss_scale = config.loss_scale(b, c);
    let grad_scale = 2.0 * loss_scale * grad_factor;
    validate::representable_f32("loss_weight / (C^2 * B)", loss_scale)?;
    validate::representable_f32("2 * loss_weight / (C^2 * B) * GradOptions::scale", grad_scale)?;
    let plane = shape.plane();
    let pixels = b * plane;
    let entries = c * c + c;
    let target = 2 * sm_count.max(1);

    // icsd_gram: tiles of P and log P in shared memory, rows padded by one float (bank conflicts).
    let tile_pixels = prev_pow2((ffi::KD_ICSD_TILE_FLOATS as usize / (2 * c)).saturating_sub(1).min(THREADS)).max(1);
    let tiles = pixels.div_ceil(tile_pixels);
    let partial_slots = (MAX_PARTIAL_DOUBLES / (2 * entries)).max(1);
    let tiles_per_block = tiles.div_ceil(tiles.min(target).min(partial_slots));
    let gram_blocks = tiles.div_ceil(tiles_per_block);

    // icsd_dot / icsd_grad.
    let max_cols = prev_pow2((GRAD_TILE_ENTRIES / c).min(32));
    let (grad_cols, grad_groups, steps_per_block) = if paper {
        let cols = max_cols;
        let tiles = plane.div_ceil(cols);
        let steps = tiles.div_ceil(tiles.min(MAX_PAPER_GROUPS));
        (cols, tiles.div_ceil(steps), steps)
    } else {
        let mut cols = max_cols;
        while cols > 1 && cols / 2 >= w {
            cols /= 2;
        }
        while cols > 8 && b * w.div_ceil(cols) < target {
            cols /= 2;
        }
        (cols, w.div_ceil(cols), 0)
    };

    let segments = if paper { b * c } else { b * c * w };
    let too_large = |what: &'static str, n: usize| -> Result<i32> {
        i32::try_from(n).map_err(|_| KdError::TooLarge { what, detail: format!("{n} blocks; at most 2^31 - 1") })
    };
    let params = KdIcsdParams {
        batch: b as i64,
        plane: plane as i64,
        height: h as i64,
        width: w as i64,
        tiles_per_block: tiles_per_block as i64,
        steps_per_block: steps_per_block as i64,
        classes: c as i32,
        flags: outputs.flags(),
        paper: paper as i32,
        gram_blocks: too_large("student", gram_blocks)?,
        tile_pixels: tile_pixels as i32,
        grad_cols: grad_cols as i32,
        grad_groups: too_large("student", grad_groups)?,
        inv_tau: (1.0 / config.tau) as f32,
        loss_scale: loss_scale as f32,
        grad_scale: grad_scale as f32,
    };

    let stats_blocks = if paper { 2 * segments } else { (2 * segments).div_ceil(THREADS) };
    let mut launches = vec![
        Launch::new(STATS, launch::grid_blocks("student", stats_blocks)?),
        Launch::new(GRAM, launch::grid_blocks("student", 2 * gram_blocks)?),
        Launch::new(EPILOGUE, 1),
    ];
    if outputs.grad_student {
        let blocks = launch::grid_blocks("student", b * grad_groups)?;
        launches.push(Launch::new(DOT, blocks));
        launches.push(Launch::new(GRAD, blocks));
    }

    // Workspace (f32 words): partials and mats (doubles) first, then stats, coef, dots.
    let partial_floats = 2 * 2 * gram_blocks * entries;
    let mats_floats = 2 * (2 * entries + 5 * c * c + 2 * c);
    let stats_floats = 2 * 2 * segments;
    let coef_floats = c * c + 2 * c;
    let dots_floats = if paper { b * grad_groups * c } else { b * c * w };
    let bytes = |floats: usize| (floats * 4) as u64;
    let mats = partial_floats;
    let stats = mats + mats_floats;
    let coef = stats + stats_floats;
    let dots = coef + coef_floats;
    Ok(IcsdPlan {
        params,
        launches,
        workspace_floats: dots + dots_floats,
        offsets: [bytes(mats), bytes(stats), bytes(coef), bytes(dots)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: OutputSet =
        OutputSet { loss: true, grad_student: true, grad_teacher: false, device_upstream: false, accumulate: false };

    #[test]
    fn tiles_cover_the_work() {
        for variant in [IcsdVariant::Official, IcsdVariant::Paper] {
            let config = IcsdConfig { variant, ..IcsdConfig::default() };
            for dims in
                [[6, 21, 513, 513], [8, 19, 512, 1024], [1, 3, 1, 8], [2, 256, 3, 5], [8, 256, 512, 1024], [3, 1, 7, 1]]
            {
                let shape = Nchw::from_dims("student", &dims).unwrap();
                let p = plan(&config, &shape, 132, ALL, 1.0).unwrap().params;
                let c = dims[1] as i64;
                assert!(2 * c * (p.tile_pixels as i64 + 1) <= ffi::KD_ICSD_TILE_FLOATS as i64);
                assert!(c * p.grad_cols as i64 <= GRAD_TILE_ENTRIES as i64);
                assert!(p.gram_blocks as i64 * p.tiles_per_block * p.tile_pixels as i64 >= p.batch * p.plane);
                if variant == IcsdVariant::Paper {
                    assert!(p.grad_groups as i64 * p.steps_per_block * p.grad_cols as i64 >= p.plane);
                } else {
                    assert!(p.grad_groups as i64 * p.grad_cols as i64 >= p.width);
                }
            }
        }
    }

    /// The partials stay within their bound at every class count and SM count (unbounded they took
    /// 2 x 2 SMs x (C^2 + C) doubles); the rest of the workspace is the matrices and about 5 floats per
    /// (image, class, column), a fraction of the input.
    #[test]
    fn the_workspace_is_bounded() {
        for c in [1, 19, 150, 181, 255, MAX_CLASSES] {
            for sms in [1, 132, 1024] {
                let (b, w) = (8, 1024);
                let shape = Nchw::from_dims("student", &[b, c, 512, w]).unwrap();
                let p = plan(&IcsdConfig::default(), &shape, sms, ALL, 1.0).unwrap();
                let partial_doubles = 2 * p.params.gram_blocks as usize * (c * c + c);
                assert!(partial_doubles <= MAX_PARTIAL_DOUBLES.max(2 * (c * c + c)), "C = {c}, {sms} SMs");
                let matrices = 2 * (2 * (c * c + c) + 5 * c * c + 2 * c) + c * c + 2 * c;
                let bound = 2 * partial_doubles + matrices + 5 * b * c * w;
                assert!(p.workspace_floats <= bound, "C = {c}, {sms} SMs: {} floats > {bound}", p.workspace_floats);
            }
        }
    }

    #[test]
    fn too_many_classes_is_an_error() {
        let shape = Nchw::from_dims("student", &[1, MAX_CLASSES + 1, 2, 2]).unwrap();
        assert!(matches!(plan(&IcsdConfig::default(), &shape, 132, ALL, 1.0), Err(KdError::TooLarge { .. })));
    }
}
