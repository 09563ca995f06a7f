//! Launch geometry of the CWT kernels: pixel chunks, weight-gradient splits, grids, workspace layout.
//! Pure; shared by the CUDA wrapper and the host emulation.

use super::{CwtConfig, CwtShapes};
use crate::error::{KdError, Result};
use crate::ffi::KdCwtParams;
use crate::launch::{self, Launch, OutputSet, BLOCK_THREADS};
use crate::shape::Nchw;
use crate::validate;

pub(crate) const HIDDEN: &str = "cwt_hidden";
pub(crate) const OUTPUT: &str = "cwt_output";
pub(crate) const GRAD_W2: &str = "cwt_grad_w2";
pub(crate) const GRAD_HIDDEN: &str = "cwt_grad_hidden";
pub(crate) const GRAD_W1: &str = "cwt_grad_w1";
pub(crate) const GRAD_STUDENT: &str = "cwt_grad_student";
pub(crate) const COMBINE: &str = "cwt_combine";
pub(crate) const FORWARD_FUSED: &str = "cwt_forward_fused";
pub(crate) const KERNELS: [&str; 8] =
    [HIDDEN, OUTPUT, GRAD_W2, GRAD_HIDDEN, GRAD_W1, GRAD_STUDENT, COMBINE, FORWARD_FUSED];
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
    /// `cwt_combine`, after every chunk (gradients only).
    pub combine: Option<Launch>,
    /// Workspace floats, and the byte offsets of its parts: hidden at 0, then these.
    pub workspace_floats: usize,
    pub out_grad_offset: u64,
    pub partials_offset: u64,
    pub loss_partials_offset: u64,
}

/// The pixels of one chunk: everything at once for a forward (the workspace holds `A` only), else as many as
/// keep `A` and `dY` of the chunk within one hidden-activation tensor (`P * Ch` floats), in whole tiles.
/// `limit` caps it (tests force several chunks with it).
pub(crate) fn chunk_pixels(pixels: usize, shapes: &CwtShapes, grads: bool, limit: Option<usize>) -> usize {
    let natural = if grads {
        let fit = (pixels as u128 * shapes.ch as u128 / (shapes.ch + shapes.ct) as u128) as usize;
        (fit / TILE * TILE).max(TILE)
    } else {
        pixels
    };
    natural.min(limit.unwrap_or(usize::MAX).max(1)).min(pixels)
}

/// Plans a call on student shape `student` (the teacher is checked by the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan(
    config: &CwtConfig,
    shapes: &CwtShapes,
    student: &Nchw,
    teacher: &Nchw,
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
    if !grads {
        if let Some(tile) = fused_tile(ch, device.max_dynamic_smem) {
            let blocks = launch::grid_blocks("student", pixels.div_ceil(tile))?;
            let params = KdCwtParams {
                plane: student.plane() as i64,
                pixel_begin: 0,
                chunk_pixels: pixels as i64,
                split_len: 0,
                cs: cs as i32,
                ch: ch as i32,
                ct: ct as i32,
                splits: 0,
                slot_base: 0,
                slots: 0,
                loss_block_base: 0,
                loss_blocks: blocks as i32,
                flags: outputs.flags(),
                loss_scale: loss_scale as f32,
                grad_scale: grad_scale as f32,
                tile_pixels: tile as i32,
            };
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
    let pc = chunk_pixels(pixels, shapes, grads, chunk_limit);
    let chunk_count = pixels.div_ceil(pc);
    let w2_part = ct * (ch + 1);
    let w1_part = ch * (cs + 1);
    let part = w2_part + w1_part;
    let too_large = |what: &'static str, detail: String| KdError::TooLarge { what, detail };

    // Splits per chunk: enough weight-gradient blocks to fill the device, partial slots within one hidden
    // tensor (at least one slot per chunk), no split shorter than a tile.
    let weight_tiles = tiles(ct) * tiles(ch + 1);
    let wanted = (sm_count * BLOCKS_PER_SM).div_ceil(weight_tiles).max(1);
    let memory = ((pixels * ch) / (chunk_count * part)).max(1);
    let splits_target = wanted.min(memory).min(tiles(pc)).max(1);
    let split_len = pc.div_ceil(splits_target).next_multiple_of(16);
    let splits = if grads { pc.div_ceil(split_len) } else { 0 };
    let slots = splits * chunk_count;
    let slots_i32 = i32::try_from(slots).map_err(|_| too_large("student", format!("{slots} gradient slots")))?;

    let mut chunks = Vec::with_capacity(chunk_count);
    let mut loss_blocks = 0usize;
    for k in 0..chunk_count {
        let begin = k * pc;
        let len = pc.min(pixels - begin);
        let grid = |blocks: usize| launch::grid_blocks("student", blocks);
        let mut launches = vec![Launch::new(HIDDEN, grid(tiles(ch) * tiles(len))?)];
        let output_blocks = tiles(ct) * tiles(len);
        launches.push(Launch::new(OUTPUT, grid(output_blocks)?));
        // Every chunk has `splits` splits (a short last chunk's trailing ones are empty and write zeros), so every
        // slot the combine reads is written.
        let chunk_splits = splits;
        if grads {
            launches.push(Launch::new(GRAD_W2, grid(chunk_splits * weight_tiles)?));
            launches.push(Launch::new(GRAD_HIDDEN, grid(tiles(ch) * tiles(len))?));
            launches.push(Launch::new(GRAD_W1, grid(chunk_splits * tiles(ch) * tiles(cs + 1))?));
            launches.push(Launch::new(GRAD_STUDENT, grid(tiles(cs) * tiles(len))?));
        }
        let params = KdCwtParams {
            plane: student.plane() as i64,
            pixel_begin: begin as i64,
            chunk_pixels: len as i64,
            split_len: split_len as i64,
            cs: cs as i32,
            ch: ch as i32,
            ct: ct as i32,
            splits: chunk_splits as i32,
            slot_base: (k * splits) as i32,
            slots: slots_i32,
            loss_block_base: loss_blocks as i32,
            loss_blocks: 0, // set below
            flags: outputs.flags(),
            loss_scale: loss_scale as f32,
            grad_scale: grad_scale as f32,
            tile_pixels: 0,
        };
        loss_blocks += output_blocks;
        chunks.push(Chunk { params, launches });
    }
    let loss_blocks_i32 =
        i32::try_from(loss_blocks).map_err(|_| too_large("student", format!("{loss_blocks} loss blocks")))?;
    for c in &mut chunks {
        c.params.loss_blocks = loss_blocks_i32;
        if !outputs.loss {
            c.params.loss_blocks = 0;
        }
    }
    let combine = if grads {
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
        workspace_floats: hidden + out_grad + partial_floats + loss_blocks,
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

    fn plan_for(dims: [usize; 4], shapes: CwtShapes, outputs: OutputSet) -> CwtPlan {
        let s = Nchw::from_dims("student", &dims).unwrap();
        let t = Nchw { c: shapes.ct, ..s };
        plan(&CwtConfig::default(), &shapes, &s, &t, Device { sm_count: 132, max_dynamic_smem: 0 }, outputs, 1.0, None)
            .unwrap()
    }

    #[test]
    fn workspace_stays_near_one_hidden_tensor() {
        for (dims, shapes) in [
            ([8, 512, 64, 64], CwtShapes::new(512, 2048)),
            ([2, 256, 100, 152], CwtShapes::new(256, 256)),
            ([64, 512, 7, 7], CwtShapes::new(512, 512)),
            ([1, 3, 20, 30], CwtShapes { cs: 3, ch: 4, ct: 2 }),
        ] {
            let p = plan_for(dims, shapes, GRADS);
            let pixels = dims[0] * dims[2] * dims[3];
            let hidden_tensor = pixels * shapes.ch;
            let part = shapes.ct * (shapes.ch + 1) + shapes.ch * (shapes.cs + 1);
            // A and dY of a chunk within one hidden tensor (a tile's worth of rounding), the partial slots
            // within another (at least one slot per chunk).
            let chunk = p.chunks[0].params.chunk_pixels as usize;
            assert!(chunk * (shapes.ch + shapes.ct) <= hidden_tensor + 64 * (shapes.ch + shapes.ct), "{dims:?}");
            let slots = p.chunks[0].params.slots as usize;
            assert!(slots * part <= hidden_tensor.max(p.chunks.len() * part), "{dims:?}");
            assert!(p.combine.is_some());
            let covered: i64 = p.chunks.iter().map(|c| c.params.chunk_pixels).sum();
            assert_eq!(covered as usize, pixels);
            // A forward keeps A only, in one chunk.
            let f = plan_for(dims, shapes, OutputSet { loss: true, ..OutputSet::default() });
            assert_eq!(f.chunks.len(), 1);
            assert_eq!(f.workspace_floats, hidden_tensor + f.chunks[0].launches[1].grid as usize);
        }
    }

    #[test]
    fn forward_takes_one_pass_where_the_hidden_tile_fits() {
        assert_eq!(fused_tile(512, 227 * 1024), Some(64));
        assert_eq!(fused_tile(2048, 227 * 1024), Some(16));
        assert_eq!(fused_tile(8192, 227 * 1024), None);
        let s = Nchw::from_dims("student", &[2, 256, 100, 152]).unwrap();
        let shapes = CwtShapes::new(256, 256);
        let t = Nchw { c: 256, ..s };
        let forward = OutputSet { loss: true, ..OutputSet::default() };
        let device = Device { sm_count: 132, max_dynamic_smem: 227 * 1024 };
        let p = plan(&CwtConfig::default(), &shapes, &s, &t, device, forward, 1.0, None).unwrap();
        assert_eq!(p.chunks.len(), 1);
        assert_eq!(p.chunks[0].launches.len(), 1);
        assert_eq!(p.chunks[0].launches[0].kernel, FORWARD_FUSED);
        assert_eq!(p.chunks[0].params.tile_pixels, 64);
    }

    #[test]
    fn few_channels_many_pixels_split_the_weight_gradients() {
        let p = plan_for([1, 3, 20, 30], CwtShapes { cs: 3, ch: 4, ct: 2 }, GRADS);
        assert_eq!(p.chunks.len(), 2);
        assert!(p.chunks[0].params.splits > 1);
        assert_eq!(p.chunks[1].params.slot_base, p.chunks[0].params.splits);
    }
}
