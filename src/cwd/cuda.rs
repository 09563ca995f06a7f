//! CWD on the GPU: launches `cwd_stats_{dtype}` then `cwd_finish_{dtype}` (kernels/cwd.cu) on the caller's
//! stream, reading and writing caller-owned buffers. No host synchronisation; no allocation once the
//! workspace has grown to the largest shape seen.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop};

use super::CwdConfig;
use crate::cuda::{self, Family, Kernels, Workspace, BLOCK_THREADS};
use crate::dtype::KdFloat;
use crate::error::{KdError, Result};
use crate::ffi::{self, KdCwdParams};
use crate::shape::Nchw;
use crate::validate;

const OP_STATS: usize = 0;
const OP_FINISH: usize = 1;
/// Floats per (row, chunk) statistic: student max and sum, teacher max and sum, and `a` (see cwd.cu).
const PARTIAL_FLOATS: usize = 5;
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

/// CWD on the GPU, with the same surface as [`super::CwdCpu`].
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use kd_kernels::cwd::{CwdConfig, CwdCuda};
/// let stream = kd_kernels::cuda::default_stream(0)?;
/// let shape = [8, 19, 64, 128];
/// let numel: usize = shape.iter().product();
/// let student = stream.alloc_zeros::<f32>(numel)?; // the student's logits, from your model
/// let teacher = stream.alloc_zeros::<f32>(numel)?;
/// let mut grad = stream.alloc_zeros::<f32>(numel)?;
/// let mut loss = stream.alloc_zeros::<f32>(1)?;
/// let mut cwd = CwdCuda::new(stream.clone(), CwdConfig::default())?;
/// cwd.forward_backward(&shape, &student, &teacher, &mut loss, &mut grad, None)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CwdCuda {
    config: CwdConfig,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    workspace: Workspace,
}

impl CwdCuda {
    /// Validates `config`, probes for a driver, and loads the kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, config: CwdConfig) -> Result<Self> {
        config.validate()?;
        let kernels = Kernels::load(&stream, Family::Cwd, &["cwd_stats", "cwd_finish"])?;
        let workspace = Workspace::new(&stream)?;
        Ok(CwdCuda { config, stream, kernels, workspace })
    }

    /// The configuration.
    pub fn config(&self) -> &CwdConfig {
        &self.config
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Writes the loss into `loss[0]` (f32).
    pub fn forward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), None, None, None)
    }

    /// The training-step call: the loss into `loss[0]` and d loss / d student into `grad_student`, in two
    /// launches. `grad_teacher` must be `Some` exactly when `config.teacher_grad` is set.
    pub fn forward_backward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        grad_teacher: Option<&mut dyn DevicePtrMut<T>>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), Some(grad_student), grad_teacher, None)
    }

    /// Gradients times the upstream gradient `upstream[0]` (a device f32, d total / d loss), without
    /// the loss. `grad_teacher` must be `Some` exactly when `config.teacher_grad` is set.
    pub fn backward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        upstream: &dyn DevicePtr<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
        grad_teacher: Option<&mut dyn DevicePtrMut<T>>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, None, Some(grad_student), grad_teacher, Some(upstream))
    }

    #[allow(clippy::too_many_arguments)]
    fn launch<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: Option<&mut dyn DevicePtrMut<f32>>,
        grad_student: Option<&mut dyn DevicePtrMut<T>>,
        grad_teacher: Option<&mut dyn DevicePtrMut<T>>,
        upstream: Option<&dyn DevicePtr<f32>>,
    ) -> Result<()> {
        let shape = Nchw::from_dims("student", shape)?;
        let wants_grad = grad_student.is_some();
        if wants_grad && grad_teacher.is_some() != self.config.teacher_grad {
            return Err(if self.config.teacher_grad {
                KdError::OutputMismatch {
                    what: "grad_teacher",
                    fix: "config.teacher_grad is set: pass a buffer for the teacher's gradient",
                }
            } else {
                KdError::OutputMismatch {
                    what: "grad_teacher",
                    fix: "a buffer was passed but config.teacher_grad is off: set it, or pass None",
                }
            });
        }
        let rows = shape.n * shape.c;
        let row_len = shape.plane();
        let numel = shape.numel();
        let split = split_rows(rows, row_len, self.kernels.sm_count as usize);
        let stats_blocks = cuda::grid_blocks("student", rows.saturating_mul(split.chunks))?;
        let finish_blocks = if wants_grad { stats_blocks } else { cuda::grid_blocks("student", rows)? };
        let loss_scale = self.config.loss_scale(rows);
        let grad_scale = self.config.grad_scale(rows);
        validate::representable_f32("loss_weight * tau^2 / (N*C)", loss_scale)?;
        validate::representable_f32("loss_weight * tau / (N*C)", grad_scale)?;

        let mut flags = 0;
        if loss.is_some() {
            flags |= ffi::KdOutputFlags_KD_WANT_LOSS;
        }
        if wants_grad {
            flags |= ffi::KdOutputFlags_KD_WANT_GRAD_STUDENT;
        }
        if grad_teacher.is_some() {
            flags |= ffi::KdOutputFlags_KD_WANT_GRAD_TEACHER;
        }
        if upstream.is_some() {
            flags |= ffi::KdOutputFlags_KD_SCALE_BY_UPSTREAM;
        }
        let params = KdCwdParams {
            rows: rows as i64,
            row_len: row_len as i64,
            chunk_len: split.chunk_len as i64,
            chunks: split.chunks as i32,
            flags: flags as i32,
            log2e_over_tau: (std::f64::consts::LOG2_E / self.config.tau) as f32,
            loss_scale: loss_scale as f32,
            grad_scale: grad_scale as f32,
            reserved: 0.0,
        };

        let stream = &self.stream;
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::with_capacity(10);
        let (s, t) = cuda::input_pair(student, teacher, numel, stream, &mut guards)?;
        let loss_ptr = match loss {
            Some(l) => cuda::output("loss", l, 1, stream, &mut guards)?,
            None => 0,
        };
        let gs = match grad_student {
            Some(g) => cuda::output("grad_student", g, numel, stream, &mut guards)?,
            None => 0,
        };
        let gt = match grad_teacher {
            Some(g) => cuda::output("grad_teacher", g, numel, stream, &mut guards)?,
            None => 0,
        };
        let up = match upstream {
            Some(u) => cuda::input("upstream", u, 1, stream, &mut guards)?,
            None => 0,
        };
        let partial_floats = rows * split.chunks * PARTIAL_FLOATS;
        let (ws, counter) = self.workspace.floats_and_counter(stream, partial_floats + rows, &mut guards)?;
        let partials = ws;
        let row_kl = ws + (partial_floats * std::mem::size_of::<f32>()) as u64;

        let cfg = |blocks: u32| LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let stats = self.kernels.get(OP_STATS, T::DTYPE);
        let finish = self.kernels.get(OP_FINISH, T::DTYPE);
        // SAFETY: the argument lists match `cwd_stats_*` / `cwd_finish_*` in kernels/cwd.cu; every pointer was
        // checked to hold the elements the kernels touch (numel inputs and gradients, one loss and upstream
        // value, the workspace sized above); null pointers are only passed for outputs the flags turn off.
        unsafe {
            stream
                .launch_builder(stats)
                .arg(&s)
                .arg(&t)
                .arg(&partials)
                .arg(&params)
                .launch(cfg(stats_blocks))
                .map_err(|e| KdError::cuda("launch cwd_stats", e))?;
            stream
                .launch_builder(finish)
                .arg(&s)
                .arg(&t)
                .arg(&partials)
                .arg(&row_kl)
                .arg(&counter)
                .arg(&loss_ptr)
                .arg(&gs)
                .arg(&gt)
                .arg(&up)
                .arg(&params)
                .launch(cfg(finish_blocks))
                .map_err(|e| KdError::cuda("launch cwd_finish", e))?;
        }
        drop(guards);
        Ok(())
    }
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
