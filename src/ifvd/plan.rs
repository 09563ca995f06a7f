//! Launch geometry of the IFVD kernels (kernels/ifvd.cu): the pixel chunks, the grids, the parameter block
//! and the workspace layout. Pure; shared by the CUDA wrapper and the host emulation.

use super::labels::IfvdShapes;
use super::IfvdConfig;
use crate::dtype::LabelDType;
use crate::error::{KdError, Result};
use crate::ffi::KdIfvdParams;
use crate::launch::{self, Launch, OutputSet, BLOCK_THREADS};
use crate::validate;

pub(crate) const SUMS: &str = "ifvd_sums";
pub(crate) const PROTOS: &str = "ifvd_protos";
pub(crate) const COSINES: &str = "ifvd_cosines";
pub(crate) const PROTO_GRAD: &str = "ifvd_proto_grad";
pub(crate) const GRAD: &str = "ifvd_grad";
pub(crate) const KERNELS: [&str; 5] = [SUMS, PROTOS, COSINES, PROTO_GRAD, GRAD];

/// Pixels of a tile: one per lane of a warp; chunks are whole tiles.
const TILE: usize = 32;
/// Pixels of a row one `ifvd_grad` block writes (four per thread).
const GRAD_PIXELS: usize = 4 * BLOCK_THREADS as usize;

/// Everything a call needs besides the buffers.
#[derive(Debug, Clone)]
pub(crate) struct IfvdPlan {
    pub params: KdIfvdParams,
    pub launches: Vec<Launch>,
    pub workspace_floats: usize,
    /// Byte offsets in the workspace, in the order of `KdIfvdArgs`: pixel classes, counts, sums, prototypes,
    /// their norms, moments, coefficients, prototype gradients, loss partials.
    pub offsets: [u64; 9],
}

fn too_large(what: &'static str, detail: String) -> KdError {
    KdError::TooLarge { what, detail }
}

fn int32(what: &'static str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| too_large(what, format!("{n} does not fit the kernels' 32-bit field")))
}

/// The chunk length: enough chunks per image for about four blocks per SM, whole tiles, and at least
/// `2 * classes` pixels so that the chunks' dense class partials (`chunks * classes` slots per image) stay
/// within half the features.
fn chunk_pixels(plane: usize, batch: usize, classes: usize, sm_count: usize) -> usize {
    let target_chunks = (4 * sm_count.max(1)).div_ceil(batch).max(1);
    let chunk = plane.div_ceil(target_chunks).max(2 * classes);
    chunk.div_ceil(TILE).min(plane.div_ceil(TILE)) * TILE
}

/// Plans a call. `grad_factor` is `GradOptions::scale`.
pub(crate) fn plan(
    config: &IfvdConfig,
    shapes: &IfvdShapes,
    labels: LabelDType,
    sm_count: usize,
    outputs: OutputSet,
    grad_factor: f64,
) -> Result<IfvdPlan> {
    let s = &shapes.student;
    let (n, cs, ct, k) = (s.n, s.c, shapes.ct, config.num_classes);
    let plane = s.plane();
    let loss_scale = config.loss_scale(shapes.pixels());
    let grad_scale = 2.0 * loss_scale * grad_factor;
    validate::representable_f32("loss_weight / (N*H*W)", loss_scale)?;
    validate::representable_f32("2 * loss_weight / (N*H*W) * GradOptions::scale", grad_scale)?;

    let chunk = chunk_pixels(plane, n, k, sm_count);
    let chunks = plane.div_ceil(chunk);
    let grad_blocks = plane.div_ceil(GRAD_PIXELS);
    let width = cs.checked_add(ct).ok_or_else(|| too_large("teacher", "Cs + Ct overflows".into()))?;

    // Workspace, in f32 words (every array is 4-byte: int32 classes, u32 counts, f32 values).
    let product = |what: &'static str, factors: &[usize]| -> Result<usize> {
        factors
            .iter()
            .try_fold(1usize, |acc, &f| acc.checked_mul(f))
            .filter(|&v| v <= i64::MAX as usize / 4)
            .ok_or_else(|| too_large(what, format!("the workspace of {factors:?} does not fit 64-bit indexing")))
    };
    let slots = product("num_classes", &[n, chunks, k])?;
    let sizes = [
        product("student", &[n, plane])?,         // pixel classes
        slots,                                    // counts
        product("num_classes", &[slots, width])?, // sums (the gradient's [.., Cs] sums reuse them)
        product("num_classes", &[n, k, width])?,  // prototypes
        product("num_classes", &[n, k, 2])?,      // prototype norms
        slots,                                    // moments
        product("student", &[2, n, plane])?,      // coefficients
        product("num_classes", &[n, k, cs])?,     // prototype gradients
        n * chunks,                               // loss partials
    ];
    let mut offsets = [0u64; 9];
    let mut total = 0usize;
    for (offset, size) in offsets.iter_mut().zip(sizes) {
        *offset = (total * 4) as u64;
        total = total.checked_add(size).ok_or_else(|| too_large("num_classes", "workspace overflows".into()))?;
    }

    let params = KdIfvdParams {
        plane: plane as i64,
        chunk_pixels: chunk as i64,
        grad_pixels: GRAD_PIXELS as i64,
        batch: int32("student", n)?,
        student_channels: int32("student", cs)?,
        teacher_channels: int32("teacher", ct)?,
        classes: int32("num_classes", k)?,
        chunks: int32("student", chunks)?,
        grad_blocks: int32("student", grad_blocks)?,
        height: int32("student", s.h)?,
        width: int32("student", s.w)?,
        label_height: int32("labels", shapes.hl)?,
        label_width: int32("labels", shapes.wl)?,
        label_bytes: labels.size() as i32,
        flags: outputs.flags(),
        scale_h: shapes.hl as f32 / s.h as f32,
        scale_w: shapes.wl as f32 / s.w as f32,
        loss_scale: loss_scale as f32,
        grad_scale: grad_scale as f32,
    };
    let chunk_grid = launch::grid_blocks("student", n * chunks)?;
    let class_grid = launch::grid_blocks("num_classes", product("num_classes", &[n, k])?)?;
    let mut launches =
        vec![Launch::new(SUMS, chunk_grid), Launch::new(PROTOS, class_grid), Launch::new(COSINES, chunk_grid)];
    if outputs.grad_student {
        launches.push(Launch::new(PROTO_GRAD, class_grid));
        launches.push(Launch::new(GRAD, launch::grid_blocks("student", product("student", &[n, cs, grad_blocks])?)?));
    }
    Ok(IfvdPlan { params, launches, workspace_floats: total, offsets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ifvd::check_shapes;

    const ALL: OutputSet =
        OutputSet { loss: true, grad_student: true, grad_teacher: false, device_upstream: false, accumulate: false };

    fn shapes(s: [usize; 4], ct: usize, labels: [usize; 2]) -> IfvdShapes {
        check_shapes(&s, &[s[0], ct, s[2], s[3]], &[s[0], labels[0], labels[1]]).unwrap()
    }

    #[test]
    fn chunks_cover_every_pixel_in_whole_tiles() {
        for (dims, k) in [([8, 256, 64, 128], 19), ([2, 6, 9, 11], 5), ([1, 3, 1, 1], 1), ([8, 512, 128, 256], 150)] {
            for sms in [1, 2, 132] {
                let p = plan(&IfvdConfig::new(k), &shapes(dims, 7, [5, 5]), LabelDType::I64, sms, ALL, 1.0).unwrap();
                let q = p.params;
                assert_eq!(q.chunk_pixels % TILE as i64, 0);
                assert!(q.chunks as i64 * q.chunk_pixels >= q.plane);
                assert!((q.chunks as i64 - 1) * q.chunk_pixels < q.plane, "no empty chunk");
                assert!(q.grad_blocks as i64 * q.grad_pixels >= q.plane);
                assert_eq!(p.launches.len(), 5);
            }
        }
    }

    /// The chunks' class partials stay within half the features (plus one chunk per image), whatever the
    /// class count: many classes means longer chunks.
    #[test]
    fn the_partials_are_bounded_by_the_features() {
        for k in [1, 19, 150, 1000, 4096] {
            let dims = [8, 256, 64, 128];
            let p = plan(&IfvdConfig::new(k), &shapes(dims, 256, [64, 128]), LabelDType::U8, 132, ALL, 1.0).unwrap();
            let (n, plane, width) = (8usize, 64 * 128usize, 512usize);
            let partials = n * p.params.chunks as usize * k * width;
            assert!(partials <= n * plane * width / 2 + n * k * width, "K = {k}: {partials}");
        }
    }

    #[test]
    fn forward_only_skips_the_gradient_kernels() {
        let outputs = OutputSet { grad_student: false, ..ALL };
        let p = plan(&IfvdConfig::new(3), &shapes([2, 4, 5, 6], 4, [5, 6]), LabelDType::I32, 2, outputs, 1.0).unwrap();
        assert_eq!(p.launches.iter().map(|l| l.kernel).collect::<Vec<_>>(), [SUMS, PROTOS, COSINES]);
        assert_eq!(p.params.label_bytes, 4);
    }
}
