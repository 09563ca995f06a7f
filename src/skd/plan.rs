//! Launch geometry of the SKD kernels (`kernels/skd.cu`): the Gram path, the stacked rows, the Gram chunks and
//! tiles, the grids and the workspace. Pure: it depends on the dtype, the shapes and the outputs only (no
//! device facts), so the blocks, and with them the results, are the same on every GPU.

use super::{GramPath, RelationShapes, SkdConfig, NORM_EPS};
use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::ffi::{self, KdSkdParams};
use crate::launch::{self, Launch, OutputSet, BLOCK_THREADS};
use crate::validate;

/// The entry points of kernels/skd.cu, in launch order.
pub(crate) const NORMS: &str = "skd_norms";
pub(crate) const GRAM: &str = "skd_gram";
pub(crate) const GRAM_TC: &str = "skd_gram_tc";
pub(crate) const MERGE: &str = "skd_merge";
pub(crate) const LOSS: &str = "skd_loss";
pub(crate) const GRAD: &str = "skd_grad";
pub(crate) const KERNELS: [&str; 6] = [NORMS, GRAM, GRAM_TC, MERGE, LOSS, GRAD];

/// The Gram tile's side (one entry per thread).
pub(crate) const TILE: usize = ffi::KD_SKD_TILE as usize;
/// The tensor-core Gram's tile side (a block's entries; eight warps of 16 x 32).
const TC_TILE: usize = ffi::KD_SKD_TC_TILE as usize;
const CHUNK_PIXELS: usize = ffi::KD_SKD_CHUNK_PIXELS as usize;
const MAX_CHUNKS: usize = ffi::KD_SKD_MAX_CHUNKS as usize;

/// Everything an SKD call needs besides the buffers.
#[derive(Debug, Clone)]
pub(crate) struct SkdPlan {
    pub params: KdSkdParams,
    /// The launches in order: norms, Gram partials, merge, then the loss and the gradient where wanted.
    pub launches: Vec<Launch>,
    /// Offsets in f32 words of the pixels' inverse norms, the Gram partials, the Gram matrices (doubles) and the
    /// loss partials.
    pub offsets: [usize; 4],
    pub workspace_floats: usize,
}

fn too_large(detail: String) -> KdError {
    KdError::TooLarge { what: "SKD call", detail }
}

/// `a * b`, or a [`KdError::TooLarge`] naming `what`.
fn mul(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| too_large(format!("{what} overflows the address space")))
}

/// The Gram path of a call on `shapes` in `dtype`: tensor cores for 16-bit inputs with `Cs = Ct`, whose loss and
/// gradient are written through `D` (every term of the size of the difference, so that the split-f16 products
/// keep the tolerance, `kernels/skd.cu`); CUDA cores for f32 inputs and for `Cs != Ct`, where the loss is a
/// difference of large Frobenius terms.
pub(crate) fn gram_path(shapes: &RelationShapes, dtype: DType) -> GramPath {
    match dtype {
        DType::F16 | DType::BF16 if shapes.student.c == shapes.ct => GramPath::TensorCores,
        _ => GramPath::CudaCores,
    }
}

/// Plans a call on `shapes` in `dtype` writing `outputs`, with the gradients scaled by `scale`.
pub(crate) fn plan(
    config: &SkdConfig,
    shapes: &RelationShapes,
    dtype: DType,
    outputs: OutputSet,
    scale: f64,
) -> Result<SkdPlan> {
    validate::representable_f32("loss_weight", config.loss_weight)?;
    let s = shapes.student;
    let (cs, ct) = (s.c, shapes.ct);
    let (ph, pw) = config.pooled_dims(s.h, s.w);
    let pixels = ph * pw;
    // With Cs = Ct the loss and the gradient are written through D = S_hat - T_hat: its rows follow.
    let rows = if cs == ct { 3 * cs } else { cs + ct };
    let fits_i32 = |v: usize| i32::try_from(v).is_ok();
    if !fits_i32(mul(rows, rows, "the Gram matrix (R x R, R = Cs + Ct, + Cs when Cs = Ct)")?)
        || !fits_i32(s.n)
        || !fits_i32(s.h)
        || !fits_i32(s.w)
    {
        return Err(too_large(format!(
            "student {:?} and {ct} teacher channels: the stacked Gram matrix of {rows} rows needs at most 2^31 - 1 \
             entries; use fewer channels",
            s.dims()
        )));
    }
    // The per-pixel kernels index the batch's pooled pixels in 32 bits.
    if !fits_i32(mul(s.n, pixels, "the pooled pixels")?) {
        return Err(too_large(format!(
            "student {:?}: {} pooled pixels in the batch; at most 2^31 - 1: split the batch",
            s.dims(),
            s.n * pixels
        )));
    }
    let chunks = pixels.div_ceil(CHUNK_PIXELS).clamp(1, MAX_CHUNKS);
    let chunk_pixels = pixels.div_ceil(chunks).next_multiple_of(TILE);
    let chunks = pixels.div_ceil(chunk_pixels);
    // The Gram launch is the plan's record of its path.
    let (gram_kernel, tiles) = match gram_path(shapes, dtype) {
        GramPath::CudaCores => (GRAM, rows.div_ceil(TILE)),
        GramPath::TensorCores => (GRAM_TC, rows.div_ceil(TC_TILE)),
    };
    let loss_rows = cs.max(ct);
    let p2 = pixels as f64 * pixels as f64;
    let loss_scale = config.loss_weight / (s.n as f64 * p2);
    let grad_scale = 4.0 * loss_scale * scale;
    validate::representable_f32("loss_weight / (N*P^2)", loss_scale)?;
    validate::representable_f32("4 * loss_weight / (N*P^2) * GradOptions::scale", grad_scale)?;

    // One float per pooled pixel and side (the reciprocal of its clamped norm): the stacked rows themselves are
    // formed from the inputs wherever they are needed.
    let norms = mul(mul(s.n, 2, "the norms")?, pixels, "the norms")?;
    let gram = mul(mul(s.n, rows, "the Gram matrices")?, rows, "the Gram matrices")?;
    let partials = mul(gram, chunks, "the Gram partials")?;
    let loss_blocks = mul(s.n, loss_rows, "the loss blocks")?;
    let pixel_grid =
        launch::grid_blocks("SKD pooled pixels", mul(s.n, pixels, "the pixels")?.div_ceil(BLOCK_THREADS as usize))?;
    let gram_grid = launch::grid_blocks(
        "SKD Gram tiles",
        mul(mul(s.n, chunks, "the Gram tiles")?, tiles * tiles, "the Gram tiles")?,
    )?;
    let merge_grid = launch::grid_blocks("SKD Gram entries", gram.div_ceil(BLOCK_THREADS as usize))?;
    let loss_grid = launch::grid_blocks("SKD loss rows", loss_blocks)?;

    let sizes = [norms, partials, mul(gram, 2, "the Gram matrices")?, loss_blocks];
    let mut offsets = [0usize; 4];
    let mut at = 0usize;
    for (o, size) in offsets.iter_mut().zip(sizes) {
        *o = at;
        at = at
            .checked_add(size.next_multiple_of(64))
            .ok_or_else(|| too_large("the workspace overflows the address space".into()))?;
    }

    // SAFETY: plain old data (integers and floats); all-zero is a valid value.
    let mut p: KdSkdParams = unsafe { std::mem::zeroed() };
    p.plane = s.plane() as i64;
    p.pixels = pixels as i64;
    p.chunk_pixels = chunk_pixels as i64;
    p.batch = s.n as i32;
    p.student_channels = cs as i32;
    p.teacher_channels = ct as i32;
    p.rows = rows as i32;
    p.height = s.h as i32;
    p.width = s.w as i32;
    p.pooled_height = ph as i32;
    p.pooled_width = pw as i32;
    p.window = config.pool.window() as i32;
    p.chunks = chunks as i32;
    p.tiles = tiles as i32;
    p.loss_rows = loss_rows as i32;
    p.flags = outputs.flags();
    p.loss_scale = loss_scale as f32;
    p.grad_scale = grad_scale as f32;
    debug_assert_eq!(ffi::KD_SKD_NORM_EPS, NORM_EPS);

    let mut launches =
        vec![Launch::new(NORMS, pixel_grid), Launch::new(gram_kernel, gram_grid), Launch::new(MERGE, merge_grid)];
    if outputs.loss {
        launches.push(Launch::new(LOSS, loss_grid));
    }
    if outputs.grad_student {
        launches.push(Launch::new(GRAD, pixel_grid));
    }
    Ok(SkdPlan { params: p, launches, offsets, workspace_floats: at })
}

/// The workspace floats any call on `shapes` needs (neither the outputs nor the dtype, hence the Gram path,
/// change it: both paths write the same partials).
pub(crate) fn workspace_bound(config: &SkdConfig, shapes: &RelationShapes) -> Result<usize> {
    Ok(plan(config, shapes, DType::F32, OutputSet::TRAINING, 1.0)?.workspace_floats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skd::{check_shapes, SkdPool};

    fn both() -> OutputSet {
        OutputSet { loss: true, grad_student: true, ..OutputSet::default() }
    }

    fn shapes(s: [usize; 4], ct: usize) -> RelationShapes {
        check_shapes(&s, &[s[0], ct, s[2], s[3]]).unwrap()
    }

    #[test]
    fn chunks_cover_every_pooled_pixel_and_no_more() {
        for (h, w) in [(1, 1), (3, 5), (64, 64), (65, 129), (128, 256), (512, 1024)] {
            for pool in [SkdPool::Max2x2, SkdPool::None] {
                let config = SkdConfig { pool, ..SkdConfig::default() };
                let p = plan(&config, &shapes([2, 3, h, w], 5), DType::F32, both(), 1.0).unwrap().params;
                let (chunks, len) = (p.chunks as i64, p.chunk_pixels);
                assert!(chunks >= 1 && chunks as usize <= MAX_CHUNKS, "{h}x{w}: {chunks}");
                assert_eq!(len % TILE as i64, 0);
                assert!(chunks * len >= p.pixels && (chunks - 1) * len < p.pixels, "{h}x{w} {pool:?}");
                let k = pool.window();
                assert_eq!(p.pixels as usize, h.div_ceil(k) * w.div_ceil(k));
            }
        }
    }

    #[test]
    fn rows_of_the_difference_only_for_equal_channels() {
        let p = plan(&SkdConfig::default(), &shapes([2, 6, 9, 7], 8), DType::F32, both(), 1.0).unwrap();
        assert_eq!((p.params.rows, p.params.loss_rows, p.params.tiles), (14, 8, 1));
        let p = plan(&SkdConfig::default(), &shapes([2, 6, 9, 7], 6), DType::F32, both(), 1.0).unwrap();
        assert_eq!((p.params.rows, p.params.loss_rows, p.params.tiles), (18, 6, 2));
    }

    /// Tensor cores for f16 and bf16 with `Cs = Ct` (64-entry tiles, the same chunks and workspace), CUDA
    /// cores for f32 and for `Cs != Ct`; the plan's Gram launch says which.
    #[test]
    fn sixteen_bit_inputs_with_equal_channels_take_the_tensor_cores() {
        for (cs, ct) in [(1, 1), (5, 5), (70, 70), (512, 512), (6, 9), (512, 256), (1, 2)] {
            let s = shapes([2, cs, 9, 7], ct);
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let p = plan(&SkdConfig::default(), &s, dtype, both(), 1.0).unwrap();
                let tensor_cores = cs == ct && dtype != DType::F32;
                let (want_path, want_kernel, tile) = if tensor_cores {
                    (GramPath::TensorCores, GRAM_TC, TC_TILE)
                } else {
                    (GramPath::CudaCores, GRAM, TILE)
                };
                assert_eq!((gram_path(&s, dtype), p.launches[1].kernel), (want_path, want_kernel), "{cs} {ct} {dtype}");
                assert_eq!(p.params.tiles as usize, (p.params.rows as usize).div_ceil(tile), "{cs} {ct} {dtype}");
                let f32_plan = plan(&SkdConfig::default(), &s, DType::F32, both(), 1.0).unwrap();
                assert_eq!(p.workspace_floats, f32_plan.workspace_floats);
                assert_eq!(
                    (p.params.chunks, p.params.chunk_pixels),
                    (f32_plan.params.chunks, f32_plan.params.chunk_pixels)
                );
            }
        }
    }

    #[test]
    fn launches_follow_the_outputs() {
        let s = shapes([2, 4, 6, 5], 4);
        let kernels = |outputs: OutputSet| -> Vec<&str> {
            plan(&SkdConfig::default(), &s, DType::F32, outputs, 1.0)
                .unwrap()
                .launches
                .iter()
                .map(|l| l.kernel)
                .collect()
        };
        assert_eq!(kernels(both()), [NORMS, GRAM, MERGE, LOSS, GRAD]);
        assert_eq!(kernels(OutputSet { loss: true, ..OutputSet::default() }), [NORMS, GRAM, MERGE, LOSS]);
        assert_eq!(kernels(OutputSet { grad_student: true, ..OutputSet::default() }), [NORMS, GRAM, MERGE, GRAD]);
    }

    #[test]
    fn scales_fold_the_weight_the_mean_and_the_options() {
        let config = SkdConfig { loss_weight: 3.0, pool: SkdPool::Max2x2 };
        let p = plan(&config, &shapes([2, 3, 7, 9], 5), DType::F32, both(), 0.5).unwrap().params;
        let p2 = (4.0f64 * 5.0).powi(2);
        assert_eq!(p.loss_scale, (3.0 / (2.0 * p2)) as f32);
        assert_eq!(p.grad_scale, (4.0 * 3.0 / (2.0 * p2) * 0.5) as f32);
    }

    /// The workspace is docs/losses.md §9.5's formula: Grams and their chunk partials, `O(N R^2)`, and one float
    /// per pooled pixel and side; between two spatial sizes with the same chunk count it grows by those floats
    /// alone (no copy of the pooled features).
    #[test]
    fn workspace_is_the_grams_and_one_float_per_pooled_pixel_and_side() {
        let a = |x: usize| x.next_multiple_of(64);
        let documented = |n: usize, cs: usize, ct: usize, p: usize| {
            let r = if cs == ct { 3 * cs } else { cs + ct };
            let k = p.div_ceil(1024).clamp(1, 8);
            let chunks = p.div_ceil(p.div_ceil(k).next_multiple_of(16));
            4 * (a(2 * n * p) + a(chunks * n * r * r) + a(2 * n * r * r) + a(n * cs.max(ct))) + 4
        };
        let n = 2;
        for pool in [SkdPool::Max2x2, SkdPool::None] {
            for (cs, ct) in [(5, 5), (6, 9), (40, 17)] {
                let config = SkdConfig { pool, ..SkdConfig::default() };
                let bytes = |h: usize, w: usize| config.workspace_bytes(&shapes([n, cs, h, w], ct)).unwrap();
                let pixels = |h: usize, w: usize| {
                    let (ph, pw) = config.pooled_dims(h, w);
                    ph * pw
                };
                for (h, w) in [(1, 1), (3, 5), (9, 7), (33, 65), (64, 128), (255, 257), (256, 512)] {
                    assert_eq!(bytes(h, w), documented(n, cs, ct, pixels(h, w)), "{pool:?} {cs} {ct} {h}x{w}");
                }
                // 8 chunks at both sizes (their pooled pixels multiples of 64): the norms make the difference.
                let (small, large) = ((128, 256), (256, 512));
                assert_eq!(
                    bytes(large.0, large.1) - bytes(small.0, small.1),
                    4 * 2 * n * (pixels(large.0, large.1) - pixels(small.0, small.1)),
                    "{pool:?} {cs} {ct}"
                );
            }
        }
    }

    #[test]
    fn a_gram_matrix_too_large_is_a_typed_error() {
        let r = plan(&SkdConfig::default(), &shapes([1, 20_000, 2, 2], 20_000), DType::F16, both(), 1.0);
        assert!(matches!(r, Err(KdError::TooLarge { .. })), "{r:?}");
    }
}
