//! Launch geometry of the CWD kernels: how rows are split across blocks, the parameter block, the grid
//! sizes and the workspace layout. Shared by the CUDA wrapper and the host emulation of the kernels.

use super::CwdConfig;
use crate::cuda;
use crate::error::Result;
use crate::ffi::KdCwdParams;
use crate::outputs::OutputSet;
use crate::shape::Nchw;
use crate::validate;

/// Workspace floats per (row, chunk) statistic: five doubles (maxima, sums and `a`; see cwd.cu).
const PARTIAL_FLOATS: usize = 10;
/// A block reduces at least this many elements of a row: below it, the merge and launch costs dominate.
const MIN_CHUNK_ELEMS: usize = 4096;
/// More chunks than this only lengthens the serial merge in `cwd_finish`.
const MAX_CHUNKS: usize = 256;
/// Resident 256-thread blocks per SM to aim for (2048 threads per SM on sm_80..sm_90).
const BLOCKS_PER_SM: usize = 8;

/// How rows are split across blocks.
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

/// Everything a CWD launch pair needs besides the buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CwdPlan {
    pub params: KdCwdParams,
    pub stats_blocks: u32,
    pub finish_blocks: u32,
    /// Workspace floats: the (row, chunk) statistics, then one KL value per row.
    pub workspace_floats: usize,
    /// Byte offset of the per-row KL values in the workspace.
    pub row_kl_offset_bytes: u64,
}

/// Plans the two launches for `shape` on a GPU with `sm_count` SMs.
pub(crate) fn plan(config: &CwdConfig, shape: &Nchw, sm_count: usize, outputs: OutputSet) -> Result<CwdPlan> {
    let rows = shape.n * shape.c;
    let row_len = shape.plane();
    let split = split_rows(rows, row_len, sm_count);
    let stats_blocks = cuda::grid_blocks("student", rows.saturating_mul(split.chunks))?;
    let finish_blocks = if outputs.any_grad() { stats_blocks } else { cuda::grid_blocks("student", rows)? };
    let loss_scale = config.loss_scale(rows);
    let grad_scale = config.grad_scale(rows);
    validate::representable_f32("loss_weight * tau^2 / (N*C)", loss_scale)?;
    validate::representable_f32("loss_weight * tau / (N*C)", grad_scale)?;
    let partial_floats = rows * split.chunks * PARTIAL_FLOATS;
    let params = KdCwdParams {
        rows: rows as i64,
        row_len: row_len as i64,
        chunk_len: split.chunk_len as i64,
        chunks: split.chunks as i32,
        flags: outputs.flags(),
        log2e_over_tau: (std::f64::consts::LOG2_E / config.tau) as f32,
        loss_scale: loss_scale as f32,
        grad_scale: grad_scale as f32,
        reserved: 0.0,
    };
    Ok(CwdPlan {
        params,
        stats_blocks,
        finish_blocks,
        workspace_floats: partial_floats + rows,
        row_kl_offset_bytes: (partial_floats * std::mem::size_of::<f32>()) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
