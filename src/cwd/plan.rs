//! Launch geometry of the CWD kernels: which path a call takes, how rows are split across blocks, the
//! parameter block, the grid sizes and the workspace layout. Shared by the CUDA wrapper and the host
//! emulation of the kernels.

use super::{CwdConfig, CwdPath};
use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::ffi::{self, KdCwdParams};
use crate::launch::{self, DeviceInfo, Launch, OutputSet, BLOCK_THREADS};
use crate::shape::Nchw;
use crate::validate;

/// The entry points of kernels/cwd.cu.
pub(crate) const FUSED: &str = "cwd_fused";
pub(crate) const STATS: &str = "cwd_stats";
pub(crate) const FINISH: &str = "cwd_finish";
pub(crate) const KERNELS: [&str; 3] = [FUSED, STATS, FINISH];

/// Workspace floats per (row, chunk) statistic: `KD_CWD_STAT_DOUBLES` doubles.
const PARTIAL_FLOATS: usize = 2 * ffi::KD_CWD_STAT_DOUBLES as usize;
/// A block of the two-pass kernels reduces at least this many elements of a row: below it, the merge and
/// launch costs dominate.
const MIN_CHUNK_ELEMS: usize = 4096;
/// More chunks than this only lengthens the serial merge in `cwd_finish`.
const MAX_CHUNKS: usize = 256;
/// Resident 256-thread blocks per SM the two-pass split aims for (2048 threads per SM on sm_80..sm_90).
const BLOCKS_PER_SM: usize = 8;

/// Elements of a row one block of the single-pass kernel holds in registers: `KD_BLOCK_THREADS *
/// KD_CWD_FUSED_VECS` 16-byte vectors (4096 f32 or 8192 f16/bf16 elements).
pub(crate) fn single_pass_chunk_len(dtype: DType) -> usize {
    BLOCK_THREADS as usize * ffi::KD_CWD_FUSED_VECS as usize * (16 / dtype.size())
}

/// Chunks per row of the single-pass kernel: the row padded in front to the 16-byte boundary at or below its
/// start (`lead` elements at most, see [`single_pass_lead`]) and cut into register chunks.
pub(crate) fn single_pass_chunks(row_len: usize, lead: usize, dtype: DType) -> usize {
    (row_len + lead).div_ceil(single_pass_chunk_len(dtype))
}

/// The most padding elements any row needs in front in the single-pass kernel, from the buffers' device
/// addresses (`addresses[0]` the student's; absent outputs left out), as the kernel computes it per row: the
/// row start's distance above a 16-byte boundary where every buffer sits at the same distance (vector
/// path), else 0 (scalar path).
pub(crate) fn single_pass_lead(addresses: &[u64], row_len: usize, dtype: DType) -> usize {
    let size = dtype.size();
    let vector = 16 / size;
    let same_alignment = addresses.iter().all(|&a| (a ^ addresses[0]) & 15 == 0);
    if !same_alignment {
        0
    } else if (row_len * size) % 16 == 0 {
        (addresses[0] & 15) as usize / size // every row starts where the first does
    } else {
        vector - 1
    }
}

/// The longest row the single-pass kernel takes when `resident_blocks` blocks fit on the device at once
/// (for 16-byte aligned buffers; a misaligned start can cost one element a vector less).
pub(crate) fn single_pass_max_row_len(dtype: DType, resident_blocks: usize) -> usize {
    resident_blocks * single_pass_chunk_len(dtype)
}

/// How rows are split across blocks by the two-pass kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    pub chunks: usize,
    pub chunk_len: usize,
}

/// Splits rows so the grid has about `sm_count * BLOCKS_PER_SM` blocks, with chunks of at least
/// `MIN_CHUNK_ELEMS` elements, rounded to a multiple of 8 (one 128-bit vector of 16-bit values).
pub(crate) fn split_rows(rows: usize, row_len: usize, sm_count: usize) -> Split {
    let target_blocks = sm_count * BLOCKS_PER_SM;
    let wanted = target_blocks.div_ceil(rows).max(1);
    let useful = row_len.div_ceil(MIN_CHUNK_ELEMS).max(1);
    let chunks = wanted.min(useful).min(MAX_CHUNKS);
    let chunk_len = row_len.div_ceil(chunks).next_multiple_of(8);
    Split { chunks: row_len.div_ceil(chunk_len), chunk_len }
}

/// Everything a CWD call needs besides the buffers.
#[derive(Debug, Clone)]
pub(crate) struct CwdPlan {
    pub params: KdCwdParams,
    /// [`CwdPath::SinglePass`] or [`CwdPath::TwoPass`], never `Auto`.
    pub path: CwdPath,
    /// `cwd_fused` (cooperative), or `cwd_stats` then `cwd_finish`.
    pub launches: Vec<Launch>,
    /// Workspace floats: the (row, chunk) statistics, then one KL value per row.
    pub workspace_floats: usize,
    /// Byte offset of the per-row KL values in the workspace.
    pub row_kl_offset_bytes: u64,
    /// Workspace counters: the loss's ticket, then (single pass) two per row.
    pub counters: usize,
}

/// What the device offers the planner.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Device {
    pub sm_count: usize,
    /// Blocks of the single-pass kernel (for the dtype at hand) that fit on the device at once; 0 when it
    /// cannot be launched cooperatively.
    pub single_pass_resident: usize,
}

impl Device {
    pub(crate) fn of(info: &dyn DeviceInfo, dtype: DType) -> Result<Self> {
        let single_pass_resident = if info.cooperative() { info.resident_blocks(FUSED, dtype, 0)? } else { 0 };
        Ok(Device { sm_count: info.sm_count(), single_pass_resident })
    }
}

/// Plans a call: the single-pass kernel where `path` allows it and a row's chunks fit in the resident grid,
/// else the two passes. `CwdPath::SinglePass` where the single pass does not apply is an error. `lead` is
/// [`single_pass_lead`] of the call's buffers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan(
    config: &CwdConfig,
    shape: &Nchw,
    dtype: DType,
    device: Device,
    path: CwdPath,
    outputs: OutputSet,
    grad_factor: f64,
    lead: usize,
) -> Result<CwdPlan> {
    let rows = shape.n * shape.c;
    let row_len = shape.plane();
    let loss_scale = config.loss_scale(rows);
    let grad_scale = config.grad_scale(rows) * grad_factor;
    validate::representable_f32("loss_weight * tau^2 / (N*C)", loss_scale)?;
    validate::representable_f32("loss_weight * tau / (N*C) * GradOptions::scale", grad_scale)?;
    let mut params = KdCwdParams {
        rows: rows as i64,
        row_len: row_len as i64,
        chunk_len: 0,
        chunks: 0,
        flags: outputs.flags(),
        log2e_over_tau: (std::f64::consts::LOG2_E / config.tau) as f32,
        loss_scale: loss_scale as f32,
        grad_scale: grad_scale as f32,
        reserved: 0.0,
    };

    let single_chunks = single_pass_chunks(row_len, lead, dtype);
    let single_fits = single_chunks <= device.single_pass_resident;
    let (chunks, chunk_len, resolved, launches, counters) = match path {
        CwdPath::SinglePass if !single_fits => {
            return Err(single_pass_refusal(dtype, row_len, device.single_pass_resident));
        }
        CwdPath::Auto | CwdPath::SinglePass if single_fits => {
            // A grid that is a multiple of the chunks per row, so that rows never straddle two rounds of the
            // persistent grid (see cwd.cu), and no larger than the work.
            let rows_per_round = (device.single_pass_resident / single_chunks).min(rows);
            let blocks = launch::grid_blocks("student", rows_per_round * single_chunks)?;
            let fused = Launch { cooperative: true, ..Launch::new(FUSED, blocks) };
            (single_chunks, single_pass_chunk_len(dtype), CwdPath::SinglePass, vec![fused], 1 + 2 * rows)
        }
        _ => {
            let split = split_rows(rows, row_len, device.sm_count);
            let stats_blocks = launch::grid_blocks("student", rows.saturating_mul(split.chunks))?;
            let finish_blocks = if outputs.any_grad() { stats_blocks } else { launch::grid_blocks("student", rows)? };
            let launches = vec![Launch::new(STATS, stats_blocks), Launch::new(FINISH, finish_blocks)];
            (split.chunks, split.chunk_len, CwdPath::TwoPass, launches, 1)
        }
    };
    params.chunks = i32::try_from(chunks).map_err(|_| KdError::TooLarge {
        what: "student",
        detail: format!("rows of {row_len} elements need {chunks} chunks; at most 2^31 - 1"),
    })?;
    params.chunk_len = chunk_len as i64;
    let partial_floats = rows * chunks * PARTIAL_FLOATS;
    Ok(CwdPlan {
        params,
        path: resolved,
        launches,
        workspace_floats: partial_floats + rows,
        row_kl_offset_bytes: (partial_floats * std::mem::size_of::<f32>()) as u64,
        counters,
    })
}

fn single_pass_refusal(dtype: DType, row_len: usize, resident: usize) -> KdError {
    if resident == 0 {
        return KdError::Unsupported {
            what: "CwdPath::SinglePass",
            detail: "this device cannot launch cooperatively (or refused the grid); use CwdPath::Auto or TwoPass"
                .into(),
        };
    }
    KdError::Unsupported {
        what: "CwdPath::SinglePass",
        detail: format!(
            "rows of {row_len} {dtype} elements are longer than the single-pass kernel takes on this device \
             ({} elements: {resident} resident blocks of {}); use CwdPath::Auto or TwoPass",
            single_pass_max_row_len(dtype, resident),
            single_pass_chunk_len(dtype)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: OutputSet =
        OutputSet { loss: true, grad_student: true, grad_teacher: false, device_upstream: false, accumulate: false };

    #[test]
    fn split_covers_rows_with_aligned_chunks() {
        for &(rows, len, sms) in &[(152, 524_288, 132), (2048, 8192, 132), (1, 35, 132), (3, 4097, 8), (1, 1, 1)] {
            let split = split_rows(rows, len, sms);
            assert!(split.chunks >= 1 && split.chunks <= MAX_CHUNKS);
            assert_eq!(split.chunk_len % 8, 0);
            assert!(split.chunks * split.chunk_len >= len, "chunks must cover the row");
            assert!((split.chunks - 1) * split.chunk_len < len, "no empty chunk");
        }
    }

    #[test]
    fn long_rows_are_split_to_fill_the_gpu() {
        let split = split_rows(152, 524_288, 132);
        assert!(152 * split.chunks >= 132 * BLOCKS_PER_SM, "{split:?}");
    }

    #[test]
    fn single_pass_chunks_cover_the_padded_row() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let chunk = single_pass_chunk_len(dtype);
            let vector = 16 / dtype.size();
            for len in [1, 2, vector, chunk - vector + 1, chunk, chunk + 1, 524_288, 4_000_037] {
                for lead in 0..vector {
                    let chunks = single_pass_chunks(len, lead, dtype);
                    assert!(chunks * chunk >= len + lead, "{dtype} {len} {lead}: the padded row must fit");
                    assert!((chunks - 1) * chunk < len + lead, "{dtype} {len} {lead}: no chunk beyond the padded row");
                }
            }
        }
    }

    #[test]
    fn lead_follows_the_kernel() {
        let f32_rows_aligned = 1024; // 4096 bytes: every row starts at the first row's alignment
        assert_eq!(single_pass_lead(&[0x1000, 0x2000, 0x3000], f32_rows_aligned, DType::F32), 0);
        assert_eq!(single_pass_lead(&[0x1004, 0x2004], f32_rows_aligned, DType::F32), 1);
        assert_eq!(single_pass_lead(&[0x100c, 0x200c, 0x300c], f32_rows_aligned, DType::F32), 3);
        assert_eq!(single_pass_lead(&[0x1006, 0x2006], 64, DType::BF16), 3);
        // Rows whose byte length is not a multiple of 16 start at every distance: the worst is a vector less one.
        assert_eq!(single_pass_lead(&[0x1000, 0x2000], 35, DType::F32), 3);
        assert_eq!(single_pass_lead(&[0x1000, 0x2000], 35, DType::F16), 7);
        // Buffers at different distances take the scalar path, which needs no padding.
        assert_eq!(single_pass_lead(&[0x1004, 0x2008], 35, DType::F32), 0);
        assert_eq!(single_pass_lead(&[0x1000, 0x2000, 0x3002], 64, DType::BF16), 0);
    }

    #[test]
    fn single_pass_grid_is_whole_rows_of_resident_blocks() {
        let config = CwdConfig::default();
        let device = Device { sm_count: 132, single_pass_resident: 396 };
        for (dims, dtype) in
            [([8, 19, 512, 1024], DType::F32), ([8, 19, 64, 128], DType::BF16), ([8, 256, 64, 128], DType::F32)]
        {
            let shape = Nchw::from_dims("student", &dims).unwrap();
            let plan = plan(&config, &shape, dtype, device, CwdPath::Auto, ALL, 1.0, 0).unwrap();
            assert_eq!(plan.path, CwdPath::SinglePass, "{dims:?}: expected the single pass");
            assert!(plan.launches[0].cooperative);
            let blocks = plan.launches[0].grid;
            let chunks = plan.params.chunks as u32;
            assert_eq!(blocks % chunks, 0, "{dims:?}");
            assert!(blocks as usize <= device.single_pass_resident && blocks >= chunks);
            assert_eq!(plan.counters, 1 + 2 * dims[0] * dims[1]);
        }
        // The H100 case of the issue: 152 rows of 2^19 f32 elements, 128 chunks each, 3 rows per round.
        let shape = Nchw::from_dims("student", &[8, 19, 512, 1024]).unwrap();
        let plan = plan(&config, &shape, DType::F32, device, CwdPath::Auto, ALL, 1.0, 0).unwrap();
        assert_eq!(plan.params.chunks, 128);
        assert_eq!(plan.launches, vec![Launch { cooperative: true, ..Launch::new(FUSED, 384) }]);
    }

    /// `cwd_fused` stops with `__trap()` (which kills the context) unless its grid is a whole number of rows'
    /// chunks, since a row's blocks wait for each other and must all be resident. Over random shapes, dtypes,
    /// alignments, outputs and device facts (SM count, resident blocks; MPS-like limits and no cooperative
    /// launch included), no single-pass plan the planner returns can reach it.
    #[test]
    fn single_pass_grid_is_whole_rows_for_random_shapes_and_devices() {
        let mut rng = crate::testing::SplitMix64::new(0xc0d);
        let mut single_passes = 0;
        for _ in 0..20_000 {
            let dtype = [DType::F32, DType::F16, DType::BF16][rng.below(3)];
            // Row lengths log-uniform from 1 to ~4M elements, rows from 1 to ~600.
            let row_len = (2f64.powf(rng.uniform() * 22.0) as usize).max(1);
            let (h, w) = if rng.below(2) == 0 { (1, row_len) } else { (row_len.div_ceil(64), 64) };
            let dims = [1 + rng.below(8), 1 + rng.below(80), h, w];
            let shape = Nchw::from_dims("student", &dims).unwrap();
            let sm_count = 1 + rng.below(200);
            let single_pass_resident = match rng.below(3) {
                0 => 0,                             // no cooperative launch
                1 => sm_count * (1 + rng.below(4)), // blocks per SM times SMs
                _ => rng.below(3000),               // any limit (MPS)
            };
            let device = Device { sm_count, single_pass_resident };
            let lead = rng.below(16 / dtype.size());
            let path = [CwdPath::Auto, CwdPath::SinglePass, CwdPath::TwoPass][rng.below(3)];
            let outputs = OutputSet {
                loss: rng.below(2) == 0,
                grad_student: rng.below(2) == 0,
                grad_teacher: rng.below(2) == 0,
                device_upstream: false,
                accumulate: rng.below(2) == 0,
            };
            let case = format!("{dims:?} {dtype} lead {lead} {device:?} {path:?}");
            let chunks = single_pass_chunks(shape.plane(), lead, dtype);
            let fits = chunks <= single_pass_resident;
            let planned = plan(&CwdConfig::default(), &shape, dtype, device, path, outputs, 1.0, lead);
            let planned = match (path, fits) {
                (CwdPath::SinglePass, false) => {
                    assert!(matches!(planned, Err(KdError::Unsupported { .. })), "{case}: {planned:?}");
                    continue;
                }
                _ => planned.unwrap_or_else(|e| panic!("{case}: {e}")),
            };
            let expect_single = fits && path != CwdPath::TwoPass;
            assert_eq!(planned.path == CwdPath::SinglePass, expect_single, "{case}");
            if !expect_single {
                assert!(planned.launches.iter().all(|l| !l.cooperative), "{case}");
                continue;
            }
            single_passes += 1;
            let [fused] = &planned.launches[..] else { panic!("{case}: {:?}", planned.launches) };
            assert!(fused.cooperative && fused.kernel == FUSED, "{case}: {fused:?}");
            let grid = fused.grid as usize;
            let plan_chunks = planned.params.chunks as usize;
            assert_eq!(plan_chunks, chunks, "{case}");
            // The kernel's condition for `__trap()`: `gridDim.x % p.chunks != 0`.
            assert_eq!(grid % plan_chunks, 0, "{case}: grid {grid} is not whole rows of {plan_chunks} chunks");
            assert!(grid >= plan_chunks && grid <= single_pass_resident, "{case}: grid {grid}");
            assert!(grid / plan_chunks <= shape.n * shape.c, "{case}: more rows per round than rows");
            assert!(plan_chunks * single_pass_chunk_len(dtype) >= shape.plane() + lead, "{case}: row not covered");
        }
        assert!(single_passes > 1000, "too few single-pass plans drawn: {single_passes}");
    }

    #[test]
    fn rows_too_long_for_the_resident_grid_take_two_passes() {
        let config = CwdConfig::default();
        let device = Device { sm_count: 132, single_pass_resident: 10 };
        let shape = Nchw::from_dims("student", &[1, 2, 256, 256]).unwrap();
        let auto = plan(&config, &shape, DType::F32, device, CwdPath::Auto, ALL, 1.0, 0).unwrap();
        assert_eq!(auto.path, CwdPath::TwoPass);
        let forced = plan(&config, &shape, DType::F32, device, CwdPath::SinglePass, ALL, 1.0, 0);
        assert!(matches!(forced, Err(KdError::Unsupported { .. })), "{forced:?}");
        let none = Device { sm_count: 132, single_pass_resident: 0 };
        let small = Nchw::from_dims("student", &[1, 2, 3, 4]).unwrap();
        assert_eq!(plan(&config, &small, DType::F32, none, CwdPath::Auto, ALL, 1.0, 3).unwrap().path, CwdPath::TwoPass);
        assert!(matches!(
            plan(&config, &small, DType::F32, none, CwdPath::SinglePass, ALL, 1.0, 3),
            Err(KdError::Unsupported { .. })
        ));
        let two = plan(
            &config,
            &small,
            DType::F32,
            Device { sm_count: 132, single_pass_resident: 396 },
            CwdPath::TwoPass,
            ALL,
            1.0,
            3,
        );
        assert_eq!(two.unwrap().path, CwdPath::TwoPass);
    }

    #[test]
    fn max_row_len_is_the_boundary() {
        for dtype in [DType::F32, DType::BF16] {
            let resident = 37;
            let max = single_pass_max_row_len(dtype, resident);
            assert!(single_pass_chunks(max, 0, dtype) <= resident);
            assert!(single_pass_chunks(max + 1, 0, dtype) > resident);
        }
    }
}
