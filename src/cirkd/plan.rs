//! Launch geometry of the CIRKD kernels (`kernels/cirkd.cu`): the parameter block, the grids and the
//! workspace. Pure: it depends on the shapes and the outputs only (no device facts), so the blocks, and with
//! them the results, are the same on every GPU.

use super::CirkdConfig;
use crate::error::{KdError, Result};
use crate::ffi::{self, KdCirkdParams};
use crate::launch::{self, Launch, OutputSet, BLOCK_THREADS};
use crate::relation::RelationShapes;
use crate::validate;

/// The entry points of kernels/cirkd.cu, in launch order.
pub(crate) const NORMALIZE: &str = "cirkd_normalize";
pub(crate) const FORWARD: &str = "cirkd_forward";
pub(crate) const GRAD_ROWS: &str = "cirkd_grad_rows";
pub(crate) const GRAD_COLUMNS: &str = "cirkd_grad_columns";
pub(crate) const FINISH: &str = "cirkd_finish";
pub(crate) const KERNELS: [&str; 5] = [NORMALIZE, FORWARD, GRAD_ROWS, GRAD_COLUMNS, FINISH];

/// Pixels of one image a block of the forward and gradient kernels owns.
pub(crate) const OWNED: usize = ffi::KD_CIRKD_OWNED as usize;

/// The workspace arrays, in f32 words from the workspace's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offsets {
    pub hat_student: usize,
    pub hat_teacher: usize,
    pub lse: usize,
    pub d_hat: usize,
    pub loss_partials: usize,
}

/// Everything a CIRKD call needs besides the buffers.
#[derive(Debug, Clone)]
pub(crate) struct CirkdPlan {
    pub params: KdCirkdParams,
    /// Normalisation and forward; then, for a gradient, the two gradient passes and the finish.
    pub launches: Vec<Launch>,
    pub offsets: Offsets,
    pub workspace_floats: usize,
}

fn too_large(detail: String) -> KdError {
    KdError::TooLarge { what: "CIRKD call", detail }
}

fn int32(what: &str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| too_large(format!("{what} is {value}; the kernels take at most 2^31 - 1")))
}

/// Plans a call on `shapes` writing `outputs`, with the gradient scaled by `scale`.
pub(crate) fn plan(config: &CirkdConfig, shapes: &RelationShapes, outputs: OutputSet, scale: f64) -> Result<CirkdPlan> {
    config.validate()?;
    let s = shapes.student;
    let (b, cs, ct) = (s.n, s.c, shapes.ct);
    let pooling = config.pool.pooling(s.h, s.w);
    let (ph, pw) = pooling.pooled(s.h, s.w);
    let pixels = ph * pw;
    let tiles = pixels.div_ceil(OWNED);
    let pairs = b.checked_mul(b).ok_or_else(|| too_large(format!("batch {b}: B^2 overflows")))?;
    let words = |what: &str, factors: &[usize]| -> Result<usize> {
        factors
            .iter()
            .try_fold(1usize, |acc, &f| acc.checked_mul(f))
            .filter(|&v| v <= (i64::MAX / 8) as usize)
            .ok_or_else(|| too_large(format!("the workspace's {what} does not fit the address space")))
    };
    let hat_student = words("student features", &[b, cs, pixels])?;
    let hat_teacher = words("teacher features", &[b, ct, pixels])?;
    let lse = words("row statistics", &[2, pairs, pixels])?;
    let d_hat = if outputs.grad_student { hat_student } else { 0 };
    let forward_blocks = words("loss partials", &[pairs, tiles])?;
    let tau = config.tau;
    let loss_scale = config.loss_weight / (pixels as f64 * pairs as f64);
    validate::representable_f32("1 / tau", 1.0 / tau)?;
    validate::representable_f32("loss_weight / (P * B^2)", loss_scale)?;
    validate::representable_f32("loss_weight / (P * B^2 * tau)", loss_scale / tau)?;
    validate::representable_f32("GradOptions::scale", scale)?;
    let params = KdCirkdParams {
        pixels: pixels as i64,
        batch: int32("the batch", b)?,
        student_channels: int32("the student's channel count", cs)?,
        teacher_channels: int32("the teacher's channel count", ct)?,
        height: int32("H", s.h)?,
        width: int32("W", s.w)?,
        pool: int32("the pooling window", pooling.k)?,
        pooled_height: int32("H after pooling", ph)?,
        pooled_width: int32("W after pooling", pw)?,
        tiles: int32("the pixel tiles per image", tiles)?,
        flags: outputs.flags(),
        inv_tau: (1.0 / tau) as f32,
        loss_scale: loss_scale as f32,
        logit_grad_scale: (loss_scale / tau) as f32,
        grad_scale: scale as f32,
    };
    let per_thread =
        |what: &'static str, threads: usize| launch::grid_blocks(what, threads.div_ceil(BLOCK_THREADS as usize));
    let mut launches = vec![
        Launch::new(NORMALIZE, per_thread("CIRKD pixels (both sides)", 2 * b * pixels)?),
        Launch::new(FORWARD, launch::grid_blocks("CIRKD row tiles of every image pair", forward_blocks)?),
    ];
    if outputs.grad_student {
        let owners = launch::grid_blocks("CIRKD pixel tiles", b * tiles)?;
        launches.push(Launch::new(GRAD_ROWS, owners));
        launches.push(Launch::new(GRAD_COLUMNS, owners));
        launches.push(Launch::new(FINISH, per_thread("CIRKD pixels", b * pixels)?));
    }
    let sizes = [hat_student, hat_teacher, lse, d_hat, forward_blocks];
    let mut at = 0usize;
    let mut starts = [0usize; 5];
    for (start, size) in starts.iter_mut().zip(sizes) {
        *start = at;
        at = at
            .checked_add(size.next_multiple_of(64))
            .filter(|&v| v <= (i64::MAX / 8) as usize)
            .ok_or_else(|| too_large("the workspace does not fit the address space".into()))?;
    }
    let [hat_student, hat_teacher, lse, d_hat, loss_partials] = starts;
    Ok(CirkdPlan {
        params,
        launches,
        offsets: Offsets { hat_student, hat_teacher, lse, d_hat, loss_partials },
        workspace_floats: at,
    })
}

/// The workspace floats any call on `shapes` needs (the loss and the gradient).
pub(crate) fn workspace_bound(config: &CirkdConfig, shapes: &RelationShapes) -> Result<usize> {
    let outputs = OutputSet { loss: true, grad_student: true, ..OutputSet::default() };
    Ok(plan(config, shapes, outputs, 1.0)?.workspace_floats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cirkd::CirkdPool;
    use crate::relation::check_shapes;

    fn both() -> OutputSet {
        OutputSet { loss: true, grad_student: true, ..OutputSet::default() }
    }

    #[test]
    fn the_issue_shape_needs_row_statistics_and_feature_copies_only() {
        // B = 8, C = 256, 128 x 256 unpooled (below the auto rule's 256 x 256): P = 32768.
        let shapes = check_shapes(&[8, 256, 128, 256], &[8, 256, 128, 256]).unwrap();
        let p = plan(&CirkdConfig::default(), &shapes, both(), 1.0).unwrap();
        assert_eq!(p.params.pixels, 32768);
        assert_eq!(p.params.pool, 1);
        let inputs = 2 * 8 * 256 * 32768usize;
        // Three feature-sized arrays (both sides normalised, the student's gradient) and 2 B^2 P LSEs: about
        // 1.6 GB, where the official's B^2 logit matrices alone would be 275 GB per side.
        assert!(p.workspace_floats < inputs * 3 / 2 + 2 * 64 * 32768 + 64 * 1024 + 1024, "{}", p.workspace_floats);
        assert_eq!(p.launches.iter().map(|l| l.grid).collect::<Vec<_>>(), [2048, 65536, 8192, 8192, 1024]);
    }

    #[test]
    fn the_auto_rule_pools_from_256_on_with_ceil_edges() {
        let shapes = check_shapes(&[1, 2, 257, 258], &[1, 3, 257, 258]).unwrap();
        let p = plan(&CirkdConfig::default(), &shapes, both(), 1.0).unwrap().params;
        assert_eq!((p.pool, p.pooled_height, p.pooled_width, p.pixels), (4, 65, 65, 65 * 65));
        let shapes = check_shapes(&[1, 2, 255, 300], &[1, 3, 255, 300]).unwrap();
        let p = plan(&CirkdConfig::default(), &shapes, both(), 1.0).unwrap().params;
        assert_eq!((p.pool, p.pixels), (1, 255 * 300));
        let config = CirkdConfig { pool: CirkdPool::Avg(3), ..CirkdConfig::default() };
        let shapes = check_shapes(&[2, 2, 10, 7], &[2, 3, 10, 7]).unwrap();
        let p = plan(&config, &shapes, both(), 1.0).unwrap().params;
        assert_eq!((p.pooled_height, p.pooled_width, p.tiles), (4, 3, 1));
    }

    #[test]
    fn a_forward_launches_no_gradient_pass_and_needs_no_gradient_workspace() {
        let shapes = check_shapes(&[2, 3, 9, 11], &[2, 5, 9, 11]).unwrap();
        let loss = OutputSet { loss: true, ..OutputSet::default() };
        let f = plan(&CirkdConfig::default(), &shapes, loss, 1.0).unwrap();
        assert_eq!(f.launches.iter().map(|l| l.kernel).collect::<Vec<_>>(), [NORMALIZE, FORWARD]);
        let g = plan(&CirkdConfig::default(), &shapes, both(), 1.0).unwrap();
        assert_eq!(g.launches.iter().map(|l| l.kernel).collect::<Vec<_>>(), KERNELS);
        assert!(f.workspace_floats < g.workspace_floats);
        // 99 pixels: 4 tiles of 32 rows; 4 pairs.
        assert_eq!(g.launches[1].grid, 16);
        assert_eq!(g.launches[2].grid, 8);
    }

    #[test]
    fn scales_that_vanish_in_f32_are_refused() {
        let shapes = check_shapes(&[2, 3, 4, 5], &[2, 3, 4, 5]).unwrap();
        let config = CirkdConfig { loss_weight: 1e-60, ..CirkdConfig::default() };
        assert!(matches!(plan(&config, &shapes, both(), 1.0), Err(KdError::InvalidParameter { .. })));
    }

    #[test]
    fn argument_block_fits_the_portable_limit() {
        assert!(std::mem::size_of::<ffi::KdCirkdArgs>() <= 4096);
    }
}
