//! Launch geometry of the CIRKD kernels (`kernels/cirkd.cu`): the parameter block, the grids and the
//! workspace. Pure: it depends on the shapes and the outputs only (no device facts), so the blocks, and with
//! them the results, are the same on every GPU.

use super::CirkdConfig;
use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::ffi::{self, KdCirkdParams};
use crate::launch::{self, Launch, OutputSet, BLOCK_THREADS};
use crate::relation::RelationShapes;
use crate::validate;

/// The entry points of kernels/cirkd.cu, in launch order (the forward and the gradient passes once per anchor).
pub(crate) const NORMS: &str = "cirkd_norms";
pub(crate) const FORWARD: &str = "cirkd_forward";
pub(crate) const GRAD_ROWS: &str = "cirkd_grad_rows";
pub(crate) const GRAD_COLUMNS: &str = "cirkd_grad_columns";
pub(crate) const FINISH: &str = "cirkd_finish";
pub(crate) const KERNELS: [&str; 5] = [NORMS, FORWARD, GRAD_ROWS, GRAD_COLUMNS, FINISH];

/// Pixels of one image a block of the forward and gradient kernels owns.
pub(crate) const OWNED: usize = ffi::KD_CIRKD_OWNED as usize;

/// The workspace arrays, in f32 words from the workspace's start; `None` for an array the call does not keep
/// there (the pooled copies without pooling; d loss / d S_hat when it lives in the gradient buffer, or when
/// there is no gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offsets {
    pub inv_norms: usize,
    pub pooled_student: Option<usize>,
    pub pooled_teacher: Option<usize>,
    pub lse: usize,
    pub d_hat: Option<usize>,
    pub loss_partials: usize,
    pub anchor_losses: usize,
}

/// Everything a CIRKD call needs besides the buffers.
#[derive(Debug, Clone)]
pub(crate) struct CirkdPlan {
    /// The parameters of every launch but the anchor's (`anchor` is 0; the driver sets it per group).
    pub params: KdCirkdParams,
    /// The norms (and pooled copies), launched once before the anchors' groups.
    pub norms: Launch,
    /// One anchor's group, launched for every anchor in order: the forward; then, for a gradient, the two
    /// gradient passes.
    pub per_anchor: Vec<Launch>,
    /// After the groups, for a gradient: the finish.
    pub finish: Option<Launch>,
    pub offsets: Offsets,
    /// d loss / d S_hat is accumulated in the gradient buffer itself (f32, unpooled, overwriting), not in the
    /// workspace.
    pub d_hat_in_grad: bool,
    pub workspace_floats: usize,
}

fn too_large(detail: String) -> KdError {
    KdError::TooLarge { what: "CIRKD call", detail }
}

fn int32(what: &str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| too_large(format!("{what} is {value}; the kernels take at most 2^31 - 1")))
}

/// Plans a call on `shapes` in `dtype` writing `outputs`, with the gradient scaled by `scale`.
pub(crate) fn plan(
    config: &CirkdConfig,
    shapes: &RelationShapes,
    dtype: DType,
    outputs: OutputSet,
    scale: f64,
) -> Result<CirkdPlan> {
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
    let student_features = words("student features", &[b, cs, pixels])?;
    let inv_norms = words("reciprocal norms", &[2, b, pixels])?;
    // The kernels normalise the inputs where they read them; only pooled features are copied (see cirkd.cu).
    let pooled = pooling.k > 1;
    let pooled_student = if pooled { student_features } else { 0 };
    let pooled_teacher = if pooled { words("teacher features", &[b, ct, pixels])? } else { 0 };
    let lse = words("row statistics", &[2, b, pixels])?;
    // An f32 gradient that is overwritten and has d_hat's layout (no pooling) holds d_hat until the finish.
    let d_hat_in_grad = outputs.grad_student && dtype == DType::F32 && !pooled && !outputs.accumulate;
    let d_hat = if outputs.grad_student && !d_hat_in_grad { student_features } else { 0 };
    let forward_blocks = words("loss partials", &[b, tiles])?;
    // One f64 per anchor.
    let anchor_losses = words("anchor losses", &[2, b])?;
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
        anchor: 0,
        inv_tau: (1.0 / tau) as f32,
        loss_scale: loss_scale as f32,
        logit_grad_scale: (loss_scale / tau) as f32,
        grad_scale: scale as f32,
    };
    let per_thread =
        |what: &'static str, threads: usize| launch::grid_blocks(what, threads.div_ceil(BLOCK_THREADS as usize));
    let norms = Launch::new(NORMS, per_thread("CIRKD pixels (both sides)", 2 * b * pixels)?);
    let mut per_anchor =
        vec![Launch::new(FORWARD, launch::grid_blocks("CIRKD row tiles of an anchor's image pairs", forward_blocks)?)];
    let mut finish = None;
    if outputs.grad_student {
        per_anchor.push(Launch::new(GRAD_ROWS, launch::grid_blocks("CIRKD pixel tiles of an image", tiles)?));
        per_anchor.push(Launch::new(GRAD_COLUMNS, launch::grid_blocks("CIRKD pixel tiles", forward_blocks)?));
        finish = Some(Launch::new(FINISH, per_thread("CIRKD pixels", b * pixels)?));
    }
    let sizes = [inv_norms, pooled_student, pooled_teacher, lse, d_hat, forward_blocks, anchor_losses];
    let mut at = 0usize;
    let mut starts = [0usize; 7];
    for (start, size) in starts.iter_mut().zip(sizes) {
        *start = at;
        at = at
            .checked_add(size.next_multiple_of(64))
            .filter(|&v| v <= (i64::MAX / 8) as usize)
            .ok_or_else(|| too_large("the workspace does not fit the address space".into()))?;
    }
    let kept = |start: usize, size: usize| (size > 0).then_some(start);
    let offsets = Offsets {
        inv_norms: starts[0],
        pooled_student: kept(starts[1], pooled_student),
        pooled_teacher: kept(starts[2], pooled_teacher),
        lse: starts[3],
        d_hat: kept(starts[4], d_hat),
        loss_partials: starts[5],
        anchor_losses: starts[6],
    };
    Ok(CirkdPlan { params, norms, per_anchor, finish, offsets, d_hat_in_grad, workspace_floats: at })
}

impl CirkdPlan {
    /// Every launch of the call with the anchor it runs for, in stream order.
    pub(crate) fn launches(&self) -> impl Iterator<Item = (&Launch, i32)> + '_ {
        let anchors = self.params.batch;
        std::iter::once((&self.norms, 0))
            .chain((0..anchors).flat_map(move |i| self.per_anchor.iter().map(move |l| (l, i))))
            .chain(self.finish.iter().map(|l| (l, 0)))
    }
}

/// The workspace floats any call on `shapes` in `dtype` needs: the loss and an accumulated gradient, whose
/// d_hat never lives in the gradient buffer.
pub(crate) fn workspace_bound(config: &CirkdConfig, shapes: &RelationShapes, dtype: DType) -> Result<usize> {
    let outputs = OutputSet { loss: true, grad_student: true, accumulate: true, ..OutputSet::default() };
    Ok(plan(config, shapes, dtype, outputs, 1.0)?.workspace_floats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cirkd::CirkdPool;
    use crate::relation::check_shapes;

    fn both() -> OutputSet {
        OutputSet { loss: true, grad_student: true, ..OutputSet::default() }
    }

    /// Every launch's kernel and grid, in stream order.
    fn launches(p: &CirkdPlan) -> Vec<(&'static str, u32, i32)> {
        p.launches().map(|(l, anchor)| (l.kernel, l.grid, anchor)).collect()
    }

    /// The workspace the module docs state, in f32 words: each array rounded up to 64 words; `pooled`: the
    /// pooled copies are kept; `accumulator`: d loss / d S_hat is kept in the workspace.
    fn stated_floats(b: usize, cs: usize, ct: usize, pixels: usize, pooled: bool, accumulator: bool) -> usize {
        let r = |x: usize| x.next_multiple_of(64);
        let pooled_copies = if pooled { r(b * cs * pixels) + r(b * ct * pixels) } else { 0 };
        r(2 * b * pixels)
            + pooled_copies
            + r(2 * b * pixels)
            + if accumulator { r(b * cs * pixels) } else { 0 }
            + r(b * pixels.div_ceil(32))
            + r(2 * b)
    }

    fn gradient(accumulate: bool) -> OutputSet {
        OutputSet { accumulate, ..both() }
    }

    #[test]
    fn the_issue_shape_needs_row_statistics_only() {
        // B = 8, C = 256, 128 x 256 unpooled (below the auto rule's 256 x 256): P = 32768.
        let shapes = check_shapes(&[8, 256, 128, 256], &[8, 256, 128, 256]).unwrap();
        let config = CirkdConfig::default();
        let p = plan(&config, &shapes, DType::F32, both(), 1.0).unwrap();
        assert_eq!(p.params.pixels, 32768);
        assert_eq!(p.params.pool, 1);
        // An f32 gradient holds d_hat: the norms (2 B P), the row statistics (2 B P) and B * 1024 loss partials,
        // 4 MiB, where the official's B^2 logit matrices alone would be 275 GB per side.
        assert!(p.d_hat_in_grad);
        assert_eq!((p.offsets.pooled_student, p.offsets.pooled_teacher, p.offsets.d_hat), (None, None, None));
        assert_eq!(p.workspace_floats, stated_floats(8, 256, 256, 32768, false, false));
        assert_eq!(4 * p.workspace_floats, 4_227_328);
        // bf16 (and f16) gradients, and accumulating calls, add the fp32 accumulator: 256 MiB more.
        for (dtype, outputs) in [(DType::BF16, both()), (DType::F16, both()), (DType::F32, gradient(true))] {
            let p = plan(&config, &shapes, dtype, outputs, 1.0).unwrap();
            assert!(!p.d_hat_in_grad && p.offsets.d_hat.is_some(), "{dtype:?} {outputs:?}");
            assert_eq!(p.workspace_floats, stated_floats(8, 256, 256, 32768, false, true));
            assert_eq!(4 * p.workspace_floats, 272_662_784);
        }
        assert_eq!(workspace_bound(&config, &shapes, DType::F32).unwrap(), 272_662_784 / 4);
        // The bench's 8x256x64x128 with the 4x4 pool (P = 512): pooled copies and the accumulator, in any dtype.
        let bench = check_shapes(&[8, 256, 64, 128], &[8, 256, 64, 128]).unwrap();
        let pooled = CirkdConfig { pool: CirkdPool::Avg(4), ..config };
        for dtype in [DType::F32, DType::BF16] {
            assert_eq!(4 * plan(&pooled, &bench, dtype, both(), 1.0).unwrap().workspace_floats, 12_649_216);
        }
        let mut expected = vec![(NORMS, 2048, 0)];
        for i in 0..8 {
            expected.extend([(FORWARD, 8192, i), (GRAD_ROWS, 1024, i), (GRAD_COLUMNS, 8192, i)]);
        }
        expected.push((FINISH, 1024, 0));
        assert_eq!(launches(&p), expected);
    }

    #[test]
    fn the_workspace_grows_like_b_times_p_not_b_squared() {
        // A fixed map and channels, B = 2 and B = 8: every array is linear in B, so four times the images take
        // four times the workspace, up to the 64-word rounding; with B^2 P row statistics it would be far more.
        let floats = |b: usize, cs: usize, ct: usize, h: usize, w: usize, pool: CirkdPool, dtype: DType| {
            let shapes = check_shapes(&[b, cs, h, w], &[b, ct, h, w]).unwrap();
            let config = CirkdConfig { pool, ..CirkdConfig::default() };
            let call = plan(&config, &shapes, dtype, both(), 1.0).unwrap().workspace_floats;
            // The bound: the most any call takes, an accumulating one.
            let pooled = matches!(pool, CirkdPool::Avg(k) if k > 1);
            let (ph, pw) = if pooled { (h.div_ceil(2), w.div_ceil(2)) } else { (h, w) };
            let bound = stated_floats(b, cs, ct, ph * pw, pooled, true);
            assert_eq!(workspace_bound(&config, &shapes, dtype).unwrap(), bound, "{b} {cs} {ct} {h}x{w} {pool:?}");
            call
        };
        for (cs, ct, h, w) in [(1, 1, 128, 256), (3, 5, 97, 131), (256, 256, 64, 128)] {
            let p = h * w;
            for (dtype, accumulator) in [(DType::F32, false), (DType::BF16, true)] {
                let (two, eight) =
                    (floats(2, cs, ct, h, w, CirkdPool::None, dtype), floats(8, cs, ct, h, w, CirkdPool::None, dtype));
                assert_eq!(two, stated_floats(2, cs, ct, p, false, accumulator), "B = 2, {cs} {ct} {h}x{w}");
                assert_eq!(eight, stated_floats(8, cs, ct, p, false, accumulator), "B = 8, {cs} {ct} {h}x{w}");
                assert!(eight <= 4 * two, "B = 8 takes {eight} words, B = 2 {two}");
                assert!(eight + 6 * 256 >= 4 * two, "B = 8 takes {eight} words, B = 2 {two}");
            }
            // Unpooled with an f32 gradient: a few words a pixel and image, whatever the channels.
            let beyond = floats(8, cs, ct, h, w, CirkdPool::None, DType::F32);
            assert!(beyond <= 5 * 8 * p, "{beyond} words for {cs} {ct} {h}x{w}");
            // A 2 x 2 pool keeps the pooled copies and the accumulator, a quarter of the inputs' size each.
            let (ph, pw) = (h.div_ceil(2), w.div_ceil(2));
            let pooled = floats(8, cs, ct, h, w, CirkdPool::Avg(2), DType::F32);
            assert_eq!(pooled, stated_floats(8, cs, ct, ph * pw, true, true), "pooled {cs} {ct} {h}x{w}");
        }
    }

    #[test]
    fn the_auto_rule_pools_from_256_on_with_ceil_edges() {
        let shapes = check_shapes(&[1, 2, 257, 258], &[1, 3, 257, 258]).unwrap();
        let p = plan(&CirkdConfig::default(), &shapes, DType::F32, both(), 1.0).unwrap().params;
        assert_eq!((p.pool, p.pooled_height, p.pooled_width, p.pixels), (4, 65, 65, 65 * 65));
        let shapes = check_shapes(&[1, 2, 255, 300], &[1, 3, 255, 300]).unwrap();
        let p = plan(&CirkdConfig::default(), &shapes, DType::F32, both(), 1.0).unwrap().params;
        assert_eq!((p.pool, p.pixels), (1, 255 * 300));
        let config = CirkdConfig { pool: CirkdPool::Avg(3), ..CirkdConfig::default() };
        let shapes = check_shapes(&[2, 2, 10, 7], &[2, 3, 10, 7]).unwrap();
        let p = plan(&config, &shapes, DType::F32, both(), 1.0).unwrap().params;
        assert_eq!((p.pooled_height, p.pooled_width, p.tiles), (4, 3, 1));
    }

    #[test]
    fn a_forward_launches_no_gradient_pass_and_needs_no_gradient_workspace() {
        let shapes = check_shapes(&[2, 3, 9, 11], &[2, 5, 9, 11]).unwrap();
        let loss = OutputSet { loss: true, ..OutputSet::default() };
        let f = plan(&CirkdConfig::default(), &shapes, DType::F32, loss, 1.0).unwrap();
        assert_eq!(launches(&f), [(NORMS, 2, 0), (FORWARD, 8, 0), (FORWARD, 8, 1)]);
        let g = plan(&CirkdConfig::default(), &shapes, DType::F32, both(), 1.0).unwrap();
        // An overwritten f32 gradient holds d_hat itself; a bf16 one needs the fp32 accumulator.
        assert_eq!(f.workspace_floats, g.workspace_floats);
        let bf16 = plan(&CirkdConfig::default(), &shapes, DType::BF16, both(), 1.0).unwrap();
        assert_eq!(bf16.workspace_floats, f.workspace_floats + (2 * 3 * 99usize).next_multiple_of(64));
        // 99 pixels: 4 tiles of 32 rows; 2 pairs per anchor.
        assert_eq!(
            launches(&g),
            [
                (NORMS, 2, 0),
                (FORWARD, 8, 0),
                (GRAD_ROWS, 4, 0),
                (GRAD_COLUMNS, 8, 0),
                (FORWARD, 8, 1),
                (GRAD_ROWS, 4, 1),
                (GRAD_COLUMNS, 8, 1),
                (FINISH, 1, 0)
            ]
        );
    }

    #[test]
    fn scales_that_vanish_in_f32_are_refused() {
        let shapes = check_shapes(&[2, 3, 4, 5], &[2, 3, 4, 5]).unwrap();
        let config = CirkdConfig { loss_weight: 1e-60, ..CirkdConfig::default() };
        assert!(matches!(plan(&config, &shapes, DType::F32, both(), 1.0), Err(KdError::InvalidParameter { .. })));
    }

    #[test]
    fn argument_block_fits_the_portable_limit() {
        assert!(std::mem::size_of::<ffi::KdCirkdArgs>() <= 4096);
    }
}
