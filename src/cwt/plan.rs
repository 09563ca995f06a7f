//! Launch geometry of the CWT kernels: pixel chunks, weight-gradient splits, fused or per-tile kernels, grids,
//! workspace layout. Pure; shared by the CUDA wrapper and the host emulation.
//!
//! The workspace (the hidden layer `A` and `dY` of one chunk, the weight-gradient slots, the loss partials) is
//! planned within one hidden-activation tensor, `N*H*W*Ch` elements of the input dtype ([`budget_floats`]);
//! the chunk never drops below one 64-pixel tile, so inputs of fewer than about `64 * (Ch + Ct) / Ch` pixels
//! (under a megabyte of workspace) may exceed it.

use super::{CwtConfig, CwtShapes};
use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::ffi::KdCwtParams;
use crate::launch::{self, Launch, OutputSet, BLOCK_THREADS};
use crate::shape::Nchw;
use crate::validate;

pub(crate) const HIDDEN: &str = "cwt_hidden";
pub(crate) const OUTPUT: &str = "cwt_output";
pub(crate) const FORWARD_STORE: &str = "cwt_forward_store";
pub(crate) const GRAD_W2: &str = "cwt_grad_w2";
pub(crate) const GRAD_HIDDEN: &str = "cwt_grad_hidden";
pub(crate) const GRAD_INPUT: &str = "cwt_grad_input";
pub(crate) const GRAD_W1: &str = "cwt_grad_w1";
pub(crate) const GRAD_STUDENT: &str = "cwt_grad_student";
pub(crate) const COMBINE: &str = "cwt_combine";
pub(crate) const FORWARD_FUSED: &str = "cwt_forward_fused";
pub(crate) const KERNELS: [&str; 10] =
    [HIDDEN, OUTPUT, FORWARD_STORE, GRAD_W2, GRAD_HIDDEN, GRAD_INPUT, GRAD_W1, GRAD_STUDENT, COMBINE, FORWARD_FUSED];
/// The kernels whose blocks may have more than 48 KiB of shared memory (the launcher opts them in).
pub(crate) const OPT_IN_SMEM: [&str; 1] = [FORWARD_FUSED];
/// The static shared memory of the kernels launched with dynamic shared memory (`KernelFile::static_smem`):
/// `cwt_forward_fused`'s f16/bf16 instances' (two instances of the tensor-core tile, 19456 bytes each, one per
/// operand combination, and the loss's block sum: 38977 bytes); the f32 instance's SIMT tile needs 8257.
pub(crate) const STATIC_SMEM: [(&str, usize); 1] = [(FORWARD_FUSED, 38992)];
/// Pixels per block of `cwt_forward_fused`, widest first: its hidden tile is `Ch x tile` floats of shared
/// memory.
const FUSED_TILES: [usize; 3] = [64, 32, 16];

/// What the device offers the planner.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Device {
    pub sm_count: usize,
    /// The dynamic shared memory `cwt_forward_fused` may have.
    pub max_dynamic_smem: usize,
}

impl Device {
    pub(crate) fn of(info: &dyn crate::launch::DeviceInfo) -> Self {
        Device { sm_count: info.sm_count(), max_dynamic_smem: info.max_dynamic_smem(FORWARD_FUSED) }
    }
}

/// The pixels per block of the one-pass forward for hidden width `ch`, if its hidden tile fits.
pub(crate) fn fused_tile(ch: usize, max_dynamic_smem: usize) -> Option<usize> {
    FUSED_TILES.into_iter().find(|&t| ch.saturating_mul(t).saturating_mul(4) <= max_dynamic_smem)
}

/// The output tile of every CWT kernel (`kTile` in cwt.cu).
const TILE: usize = 64;
/// Weight-gradient blocks per SM the splits aim for.
const BLOCKS_PER_SM: usize = 2;

fn tiles(len: usize) -> usize {
    len.div_ceil(TILE)
}

/// The workspace budget in f32 words: one hidden-activation tensor, `pixels * ch` elements of `dtype`.
pub(crate) fn budget_floats(pixels: usize, ch: usize, dtype: DType) -> usize {
    (pixels as u128 * ch as u128 * dtype.size() as u128 / 4).min(usize::MAX as u128) as usize
}

/// Whether a chunk of `chunk_pixels` takes the fused kernels (`cwt_forward_store`, `cwt_grad_input`: a block
/// per 64 pixels) rather than one block per 64 x 64 tile: where their grid fills the device at least once.
pub(crate) fn fused_backward(chunk_pixels: usize, sm_count: usize) -> bool {
    tiles(chunk_pixels) >= sm_count.max(1)
}

/// One chunk of pixels: its parameter block and its launches, in order.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub params: KdCwtParams,
    pub launches: Vec<Launch>,
}

/// Everything a CWT call needs besides the buffers.
#[derive(Debug, Clone)]
pub(crate) struct CwtPlan {
    pub chunks: Vec<Chunk>,
    /// `cwt_combine`, after every chunk (gradients with several splits only).
    pub combine: Option<Launch>,
    /// Workspace floats, and the byte offsets of its parts: hidden at 0, then these.
    pub workspace_floats: usize,
    pub out_grad_offset: u64,
    pub partials_offset: u64,
    pub loss_partials_offset: u64,
}

/// The loss partials of a call in chunks of `chunk` pixels: one per block of the kernel that sums the loss.
fn loss_blocks(pixels: usize, chunk: usize, ct: usize, fused: bool) -> usize {
    let per = |len: usize| if fused { tiles(len) } else { tiles(ct) * tiles(len) };
    let rest = pixels % chunk;
    pixels / chunk * per(chunk) + if rest > 0 { per(rest) } else { 0 }
}

/// Plans a call on student shape `student` in `dtype` (the teacher is checked by the caller). `chunk_limit`
/// caps the pixels of a chunk (tests force several chunks with it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan(
    config: &CwtConfig,
    shapes: &CwtShapes,
    student: &Nchw,
    teacher: &Nchw,
    dtype: DType,
    device: Device,
    outputs: OutputSet,
    grad_factor: f64,
    chunk_limit: Option<usize>,
) -> Result<CwtPlan> {
    let (cs, ch, ct) = (shapes.cs, shapes.ch, shapes.ct);
    let d = config.divisor(teacher);
    let loss_scale = config.loss_weight / d;
    let grad_scale = 2.0 * config.loss_weight / d * grad_factor;
    validate::representable_f32("loss_weight / D", loss_scale)?;
    validate::representable_f32("2 * loss_weight / D * GradOptions::scale", grad_scale)?;
    let grads = outputs.grad_student;
    let sm_count = device.sm_count;
    let pixels = student.n * student.plane();
    let too_large = |what: &'static str, detail: String| KdError::TooLarge { what, detail };
    // The kernels split a pixel index into image and offset with a 32-bit division (cwt.cu, `nchw`).
    if u32::try_from(pixels).is_err() {
        return Err(too_large("student", format!("{pixels} pixels (N*H*W); at most 2^32 - 1, split the batch")));
    }
    let base_params = KdCwtParams {
        plane: student.plane() as i64,
        pixel_begin: 0,
        chunk_pixels: pixels as i64,
        split_len: 0,
        cs: cs as i32,
        ch: ch as i32,
        ct: ct as i32,
        splits: 0,
        accumulate_slots: 0,
        slots: 0,
        loss_block_base: 0,
        loss_blocks: 0,
        flags: outputs.flags(),
        loss_scale: loss_scale as f32,
        grad_scale: grad_scale as f32,
        tile_pixels: 0,
    };
    if !grads {
        if let Some(tile) = fused_tile(ch, device.max_dynamic_smem) {
            let blocks = launch::grid_blocks("student", pixels.div_ceil(tile))?;
            let params = KdCwtParams { loss_blocks: blocks as i32, tile_pixels: tile as i32, ..base_params };
            let launch = Launch { dynamic_smem: (ch * tile * 4) as u32, ..Launch::new(FORWARD_FUSED, blocks) };
            return Ok(CwtPlan {
                chunks: vec![Chunk { params, launches: vec![launch] }],
                combine: None,
                workspace_floats: blocks as usize,
                out_grad_offset: 0,
                partials_offset: 0,
                loss_partials_offset: 0,
            });
        }
    }

    // Splits: enough weight-gradient blocks to fill the device, their slots within a quarter of the budget.
    // One split needs no slot: it writes the gradients.
    let budget = budget_floats(pixels, ch, dtype);
    let per_pixel = ch + if grads { ct } else { 0 };
    let part = ct * (ch + 1) + ch * (cs + 1);
    let slots_of = |splits: usize| if splits > 1 { splits } else { 0 };
    let weight_tiles = tiles(ct) * tiles(ch + 1);
    let wanted = (sm_count * BLOCKS_PER_SM).div_ceil(weight_tiles).max(1);
    let mut splits = if grads { wanted.min(budget / 4 / part.max(1)).max(1) } else { 0 };

    // The chunk: what the budget leaves for A and dY, in whole tiles, then smaller while the loss partials
    // push the total over; never below one tile.
    let limit = chunk_limit.unwrap_or(usize::MAX).max(1);
    let room = budget.saturating_sub(slots_of(splits) * part) / per_pixel;
    let mut pc = if room >= TILE { room / TILE * TILE } else { TILE };
    pc = pc.min(pixels).min(limit);
    loop {
        splits = splits.min(tiles(pc));
        let fused = fused_backward(pc, sm_count);
        let total = pc * per_pixel + slots_of(splits) * part + loss_blocks(pixels, pc, ct, fused);
        if total <= budget || pc <= TILE {
            break;
        }
        let over = (total - budget).div_ceil(per_pixel).next_multiple_of(TILE);
        pc = pc.saturating_sub(over).max(TILE);
    }
    // Chunks of equal size (in whole tiles) rather than full ones and a short last one: no more memory, and no
    // chunk too short to fill the device.
    let balanced = pixels.div_ceil(pixels.div_ceil(pc)).next_multiple_of(TILE).min(pc);
    if balanced < pc {
        let fused = fused_backward(balanced, sm_count);
        let total = balanced * per_pixel + slots_of(splits) * part + loss_blocks(pixels, balanced, ct, fused);
        if total <= budget {
            pc = balanced;
        }
    }
    let split_len = if grads { pc.div_ceil(splits).next_multiple_of(16) } else { 0 };
    let splits = if grads { pc.div_ceil(split_len) } else { 0 };
    let slots = slots_of(splits);
    let slots_i32 = i32::try_from(slots).map_err(|_| too_large("student", format!("{slots} gradient slots")))?;
    let fused = fused_backward(pc, sm_count);
    let chunk_count = pixels.div_ceil(pc);

    let grid = |blocks: usize| launch::grid_blocks("student", blocks);
    let mut chunks = Vec::with_capacity(chunk_count);
    let mut loss_base = 0usize;
    for k in 0..chunk_count {
        let begin = k * pc;
        let len = pc.min(pixels - begin);
        let mut launches = Vec::with_capacity(6);
        let chunk_loss_blocks = if fused {
            launches.push(Launch::new(FORWARD_STORE, grid(tiles(len))?));
            tiles(len)
        } else {
            launches.push(Launch::new(HIDDEN, grid(tiles(ch) * tiles(len))?));
            launches.push(Launch::new(OUTPUT, grid(tiles(ct) * tiles(len))?));
            tiles(ct) * tiles(len)
        };
        if grads {
            // Every chunk has `splits` splits (a short last chunk's trailing ones are empty and add zeros), so
            // every slot the combine reads is written.
            launches.push(Launch::new(GRAD_W2, grid(splits * weight_tiles)?));
            if fused {
                launches.push(Launch::new(GRAD_INPUT, grid(tiles(len))?));
            } else {
                launches.push(Launch::new(GRAD_HIDDEN, grid(tiles(ch) * tiles(len))?));
            }
            launches.push(Launch::new(GRAD_W1, grid(splits * tiles(ch) * tiles(cs + 1))?));
            if !fused {
                launches.push(Launch::new(GRAD_STUDENT, grid(tiles(cs) * tiles(len))?));
            }
        }
        let params = KdCwtParams {
            pixel_begin: begin as i64,
            chunk_pixels: len as i64,
            split_len: split_len as i64,
            splits: splits as i32,
            accumulate_slots: i32::from(k > 0),
            slots: slots_i32,
            loss_block_base: loss_base as i32,
            ..base_params
        };
        loss_base += chunk_loss_blocks;
        chunks.push(Chunk { params, launches });
    }
    let loss_blocks_i32 =
        i32::try_from(loss_base).map_err(|_| too_large("student", format!("{loss_base} loss blocks")))?;
    for c in &mut chunks {
        c.params.loss_blocks = if outputs.loss { loss_blocks_i32 } else { 0 };
    }
    let combine = if slots > 0 {
        Some(Launch::new(COMBINE, launch::grid_blocks("student", part.div_ceil(BLOCK_THREADS as usize))?))
    } else {
        None
    };
    let hidden = ch * pc;
    let out_grad = if grads { ct * pc } else { 0 };
    let partial_floats = slots * part;
    let f = std::mem::size_of::<f32>() as u64;
    Ok(CwtPlan {
        chunks,
        combine,
        workspace_floats: hidden + out_grad + partial_floats + loss_base,
        out_grad_offset: hidden as u64 * f,
        partials_offset: (hidden + out_grad) as u64 * f,
        loss_partials_offset: (hidden + out_grad + partial_floats) as u64 * f,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRADS: OutputSet =
        OutputSet { loss: true, grad_student: true, grad_teacher: false, device_upstream: false, accumulate: false };
    const FORWARD: OutputSet =
        OutputSet { loss: true, grad_student: false, grad_teacher: false, device_upstream: false, accumulate: false };
    const H100: Device = Device { sm_count: 132, max_dynamic_smem: 227 * 1024 - 20 * 1024 };
    const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    fn plan_on(dims: [usize; 4], shapes: CwtShapes, dtype: DType, device: Device, outputs: OutputSet) -> CwtPlan {
        let s = Nchw::from_dims("student", &dims).unwrap();
        let t = Nchw { c: shapes.ct, ..s };
        plan(&CwtConfig::default(), &shapes, &s, &t, dtype, device, outputs, 1.0, None).unwrap()
    }

    fn check_cover(p: &CwtPlan, pixels: usize) {
        let mut next = 0;
        for c in &p.chunks {
            assert_eq!(c.params.pixel_begin as usize, next);
            next += c.params.chunk_pixels as usize;
        }
        assert_eq!(next, pixels);
    }

    /// The bound, on the benchmarked shapes: forward + backward in every dtype asks for no more
    /// workspace than one hidden-activation tensor (`N*H*W*Ch` elements of the input dtype).
    #[test]
    fn bench_shapes_need_at_most_one_hidden_tensor() {
        for (dims, shapes) in [
            ([8, 512, 64, 64], CwtShapes::new(512, 2048)),  // segmentation, hidden 2048
            ([2, 256, 100, 152], CwtShapes::new(256, 256)), // detection FPN
            ([64, 512, 7, 7], CwtShapes::new(512, 512)),    // classification
        ] {
            let pixels = dims[0] * dims[2] * dims[3];
            for dtype in DTYPES {
                let hidden_bytes = pixels * shapes.ch * dtype.size();
                for (device, outputs) in
                    [(H100, GRADS), (H100, FORWARD), (Device { max_dynamic_smem: 0, ..H100 }, FORWARD)]
                {
                    let p = plan_on(dims, shapes, dtype, device, outputs);
                    let bytes = p.workspace_floats * 4;
                    assert!(bytes <= hidden_bytes, "{dims:?} {dtype}: {bytes} B of workspace > {hidden_bytes} B");
                    check_cover(&p, pixels);
                    if outputs.grad_student {
                        // The table of docs/losses.md 5.8 (`cargo test --lib bench_shapes -- --nocapture`).
                        let mib = |b: usize| b as f64 / (1 << 20) as f64;
                        let c = &p.chunks[0];
                        let kernels: Vec<_> = c.launches.iter().map(|l| l.kernel).collect();
                        println!(
                            "| {dims:?} -> {} ({}) | {dtype} | {:.1} MiB | {:.1} MiB | {} x {} | {} |",
                            shapes.ct,
                            shapes.ch,
                            mib(hidden_bytes),
                            mib(bytes),
                            p.chunks.len(),
                            c.params.chunk_pixels,
                            kernels.join(", ")
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn small_inputs_exceed_the_bound_by_at_most_one_tile() {
        for (dims, shapes) in [
            ([1, 3, 20, 30], CwtShapes { cs: 3, ch: 4, ct: 2 }),
            ([2, 7, 5, 6], CwtShapes { cs: 7, ch: 13, ct: 5 }),
            ([3, 1, 1, 1], CwtShapes { cs: 1, ch: 1, ct: 2 }),
            ([1, 64, 7, 7], CwtShapes::new(64, 2048)),
        ] {
            let pixels = dims[0] * dims[2] * dims[3];
            for dtype in DTYPES {
                let p = plan_on(dims, shapes, dtype, H100, GRADS);
                check_cover(&p, pixels);
                let chunk = p.chunks[0].params.chunk_pixels as usize;
                assert!(
                    p.workspace_floats <= budget_floats(pixels, shapes.ch, dtype) || chunk == TILE.min(pixels),
                    "{dims:?} {dtype}"
                );
            }
        }
    }

    #[test]
    fn more_pixels_than_32_bits_index_is_a_typed_error() {
        let s = Nchw::from_dims("student", &[1 << 16, 1, 1 << 8, 1 << 8]).unwrap();
        let shapes = CwtShapes::new(1, 1);
        let t = Nchw { c: 1, ..s };
        let r = plan(&CwtConfig::default(), &shapes, &s, &t, DType::BF16, H100, GRADS, 1.0, None);
        assert!(matches!(r, Err(KdError::TooLarge { what: "student", .. })), "{r:?}");
    }

    #[test]
    fn forward_takes_one_pass_where_the_hidden_tile_fits() {
        assert_eq!(fused_tile(512, 227 * 1024), Some(64));
        assert_eq!(fused_tile(2048, 227 * 1024), Some(16));
        assert_eq!(fused_tile(8192, 227 * 1024), None);
        let p = plan_on([2, 256, 100, 152], CwtShapes::new(256, 256), DType::BF16, H100, FORWARD);
        assert_eq!(p.chunks.len(), 1);
        assert_eq!(p.chunks[0].launches.len(), 1);
        assert_eq!(p.chunks[0].launches[0].kernel, FORWARD_FUSED);
        assert_eq!(p.chunks[0].params.tile_pixels, 64);
    }

    #[test]
    fn backward_fuses_where_the_pixel_tiles_fill_the_device() {
        let kernels = |p: &CwtPlan| p.chunks[0].launches.iter().map(|l| l.kernel).collect::<Vec<_>>();
        // Segmentation in f32: chunks of 16384 pixels, 256 tiles >= 132 SMs.
        let p = plan_on([8, 512, 64, 64], CwtShapes::new(512, 2048), DType::F32, H100, GRADS);
        assert_eq!(kernels(&p), [FORWARD_STORE, GRAD_W2, GRAD_INPUT, GRAD_W1]);
        assert!(p.combine.is_none(), "one split per chunk writes the gradients");
        assert_eq!(p.chunks[1].params.accumulate_slots, 1);
        // Classification: chunks of a few tiles take one block per tile.
        let p = plan_on([64, 512, 7, 7], CwtShapes::new(512, 512), DType::BF16, H100, GRADS);
        assert_eq!(kernels(&p), [HIDDEN, OUTPUT, GRAD_W2, GRAD_HIDDEN, GRAD_W1, GRAD_STUDENT]);
        assert!(fused_backward(64 * 132, 132) && !fused_backward(64 * 131, 132));
    }

    /// What `tests/emulator/cwt.rs` (`fused_backward_with_split_slots`) relies on.
    #[test]
    fn two_sms_fuse_and_split_the_emulator_shape() {
        for dtype in DTYPES {
            let device = Device { sm_count: 2, ..H100 };
            let p = plan_on([1, 3, 20, 30], CwtShapes { cs: 3, ch: 4, ct: 2 }, dtype, device, GRADS);
            assert!(p.chunks.len() >= 2, "{dtype}");
            assert_eq!(p.chunks[0].launches[0].kernel, FORWARD_STORE, "{dtype}");
            assert!(p.chunks[0].params.slots > 1 && p.combine.is_some(), "{dtype}");
        }
    }

    #[test]
    fn few_channels_many_pixels_split_the_weight_gradients() {
        let p = plan_on([1, 3, 20, 30], CwtShapes { cs: 3, ch: 4, ct: 2 }, DType::F32, H100, GRADS);
        assert!(p.chunks.len() >= 2);
        assert!(p.chunks[0].params.splits > 1);
        assert_eq!(p.chunks[0].params.slots, p.chunks[0].params.splits);
        assert_eq!(p.chunks[0].params.accumulate_slots, 0);
        assert_eq!(p.chunks[1].params.accumulate_slots, 1);
        assert!(p.combine.is_some());
    }
}
