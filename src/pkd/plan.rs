//! Launch geometry of the PKD kernels (`kernels/pkd.cu`): the level table, the grids and the workspace.
//! Pure: it depends on the shapes and the outputs only (no device facts), so the blocks, and with them the
//! results, are the same on every GPU.

use super::{PkdConfig, PkdLevels, MAX_LEVELS, PKD_EPS};
use crate::error::{KdError, Result};
use crate::ffi::{self, KdPkdLevel, KdPkdParams};
use crate::launch::{self, Launch, OutputSet, BLOCK_THREADS};
use crate::validate;

/// The entry points of kernels/pkd.cu, in launch order.
pub(crate) const STATS: &str = "pkd_stats";
pub(crate) const FINISH: &str = "pkd_finish";
pub(crate) const APPLY: &str = "pkd_apply";
pub(crate) const KERNELS: [&str; 3] = [STATS, FINISH, APPLY];

/// Values of one channel per block of `pkd_stats` and `pkd_apply`.
pub(crate) const CHUNK: usize = ffi::KD_PKD_CHUNK as usize;
/// Channels per block of `pkd_finish` (a warp each).
const FINISH_CHANNELS_PER_BLOCK: usize = BLOCK_THREADS as usize / 32;

/// Everything a PKD call needs besides the buffers.
#[derive(Debug, Clone)]
pub(crate) struct PkdPlan {
    pub params: KdPkdParams,
    /// `pkd_stats`, `pkd_finish`, `pkd_apply`.
    pub launches: [Launch; 3],
    /// Offsets in f32 words of the per-block moments (doubles), the per-channel coefficients and the
    /// per-block loss partials.
    pub offsets: [usize; 3],
    pub workspace_floats: usize,
}

fn too_large(what: &'static str, detail: String) -> KdError {
    KdError::TooLarge { what, detail }
}

/// Plans a call on `levels` writing `outputs`, with the gradients scaled by `scale`.
pub(crate) fn plan(config: &PkdConfig, levels: &PkdLevels, outputs: OutputSet, scale: f64) -> Result<PkdPlan> {
    let shapes = levels.shapes();
    if shapes.len() > MAX_LEVELS {
        return Err(too_large(
            "PKD levels",
            format!(
                "{} levels; one call takes at most {MAX_LEVELS}: split the levels over several calls",
                shapes.len()
            ),
        ));
    }
    validate::representable_f32("loss_weight", config.loss_weight)?;
    // SAFETY: plain old data (integers and floats); all-zero is a valid value.
    let mut p: KdPkdParams = unsafe { std::mem::zeroed() };
    let mut blocks = 0usize;
    let mut channels = 0usize;
    for (l, shape) in shapes.iter().enumerate() {
        let values = shape.n * shape.plane();
        let chunks = values.div_ceil(CHUNK);
        let numel = shape.numel() as f64;
        let grad_scale = config.loss_weight / numel * scale;
        validate::representable_f32("loss_weight / (N*C*H*W) * GradOptions::scale", grad_scale)?;
        let level_blocks = shape.c.saturating_mul(chunks);
        let fits = |v: usize| i32::try_from(v).is_ok();
        if !fits(shape.c) || !fits(chunks) || !fits(blocks.saturating_add(level_blocks)) {
            return Err(too_large(
                "PKD level",
                format!("level {l} of shape {:?} needs more than 2^31 - 1 thread blocks", shape.dims()),
            ));
        }
        p.level[l] = KdPkdLevel {
            plane: shape.plane() as i64,
            values: values as i64,
            channels: shape.c as i32,
            chunks: chunks as i32,
            block_first: blocks as i32,
            channel_first: channels as i32,
            loss_scale: (0.5 / numel) as f32,
            grad_scale: grad_scale as f32,
        };
        blocks += level_blocks;
        channels += shape.c;
    }
    if i32::try_from(channels).is_err() {
        return Err(too_large("PKD levels", format!("{channels} channels in all; at most 2^31 - 1")));
    }
    p.levels = shapes.len() as i32;
    p.channels = channels as i32;
    p.flags = outputs.flags();
    p.loss_weight = config.loss_weight as f32;
    p.eps = PKD_EPS as f32;
    let grid = launch::grid_blocks("PKD levels", blocks)?;
    let finish = launch::grid_blocks("PKD channels", channels.div_ceil(FINISH_CHANNELS_PER_BLOCK))?;
    let sizes = [blocks * 2 * ffi::KD_PKD_STAT_DOUBLES as usize, channels * ffi::KD_PKD_COEF_FLOATS as usize, blocks];
    let mut offsets = [0usize; 3];
    let mut at = 0usize;
    for (o, size) in offsets.iter_mut().zip(sizes) {
        *o = at;
        at += size.next_multiple_of(64);
    }
    Ok(PkdPlan {
        params: p,
        launches: [Launch::new(STATS, grid), Launch::new(FINISH, finish), Launch::new(APPLY, grid)],
        offsets,
        workspace_floats: at,
    })
}

/// The workspace floats any call on `levels` needs (the outputs do not change it).
pub(crate) fn workspace_bound(config: &PkdConfig, levels: &PkdLevels) -> Result<usize> {
    Ok(plan(config, levels, OutputSet::TRAINING, 1.0)?.workspace_floats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RetinaNet / RTMDet: 8 images of 800 x 1216, 256 channels, strides 8 to 128.
    fn fpn() -> PkdLevels {
        let planes = [[100, 152], [50, 76], [25, 38], [13, 19], [7, 10]];
        PkdLevels::same(&planes.map(|[h, w]| [8, 256, h, w])).unwrap()
    }

    fn both() -> OutputSet {
        OutputSet { loss: true, grad_student: true, ..OutputSet::default() }
    }

    #[test]
    fn every_level_in_three_launches() {
        let p = plan(&PkdConfig::default(), &fpn(), both(), 1.0).unwrap();
        let chunks = [121_600usize, 30_400, 7_600, 1_976, 560].map(|m| m.div_ceil(CHUNK));
        assert_eq!(chunks, [30, 8, 2, 1, 1]);
        let blocks: usize = chunks.iter().map(|c| 256 * c).sum();
        assert_eq!(p.launches.map(|l| l.grid), [blocks as u32, 160, blocks as u32]);
        let mut first = 0;
        for (l, &c) in chunks.iter().enumerate() {
            assert_eq!(p.params.level[l].block_first as usize, first);
            assert_eq!(p.params.level[l].channel_first as usize, 256 * l);
            assert_eq!(p.params.level[l].chunks as usize, c);
            first += 256 * c;
        }
        assert_eq!(p.params.channels, 1280);
        // Moments (7 doubles a block), coefficients (12 floats a channel), loss partials: under 1 MiB, against
        // 160 MiB of f32 inputs.
        assert!(p.workspace_floats * 4 < 1 << 20, "{}", p.workspace_floats);
    }

    #[test]
    fn chunks_cover_every_value_and_no_more() {
        for values in [1usize, 2, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7] {
            let levels = PkdLevels::same(&[[1, 3, 1, values.max(2)]]).unwrap();
            let p = plan(&PkdConfig::default(), &levels, both(), 1.0).unwrap();
            let d = p.params.level[0];
            assert!(d.chunks as i64 * CHUNK as i64 >= d.values && (d.chunks as i64 - 1) * (CHUNK as i64) < d.values);
            assert_eq!(p.launches[0].grid, 3 * d.chunks as u32);
        }
    }

    #[test]
    fn more_than_max_levels_is_too_large() {
        let levels = PkdLevels::same(&[[2, 3, 4, 5]; MAX_LEVELS + 1]).unwrap();
        let r = plan(&PkdConfig::default(), &levels, both(), 1.0);
        assert!(matches!(r, Err(KdError::TooLarge { .. })), "{r:?}");
        let levels = PkdLevels::same(&[[2, 3, 4, 5]; MAX_LEVELS]).unwrap();
        assert!(plan(&PkdConfig::default(), &levels, both(), 1.0).is_ok());
    }

    #[test]
    fn scales_fold_the_weight_the_mean_and_the_options() {
        let levels = PkdLevels::same(&[[2, 3, 4, 5], [1, 1, 1, 2]]).unwrap();
        let p = plan(&PkdConfig { loss_weight: 6.0 }, &levels, both(), 0.5).unwrap();
        assert_eq!(p.params.level[0].loss_scale, (0.5 / 120.0) as f32);
        assert_eq!(p.params.level[0].grad_scale, (6.0 / 120.0 * 0.5) as f32);
        assert_eq!(p.params.level[1].grad_scale, (6.0 / 2.0 * 0.5) as f32);
        assert_eq!(p.params.loss_weight, 6.0);
    }

    #[test]
    fn argument_block_fits_the_portable_limit() {
        assert!(std::mem::size_of::<ffi::KdPkdArgs>() <= 4096, "{}", std::mem::size_of::<ffi::KdPkdArgs>());
    }
}
