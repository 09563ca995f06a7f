//! The device scratch a loss object owns: partial results and counters.

use std::sync::Arc;

use cudarc::driver::sys::{CUstream, CUstreamCaptureStatus};
use cudarc::driver::{result, CudaSlice, CudaStream, DevicePtrMut};

use crate::error::{KdError, Result};
use crate::launch::Scratch;

/// Partial results (f32 words, 256-byte aligned, so doubles fit) and counters (the "last block done" ticket,
/// CWD's per-row arrival counters), which every kernel leaves at zero when it returns.
///
/// It grows to the largest call seen, then is reused, so steady-state calls allocate nothing. It never grows
/// while the loss's stream is being captured into a CUDA graph: a graph keeps the addresses it was captured
/// with, so a reallocation behind it would leave the graph pointing at freed memory. Such a call returns
/// [`KdError::WorkspaceTooSmall`]; `reserve` on the loss before capturing sizes it up front.
#[derive(Debug)]
pub(crate) struct Workspace {
    stream: Arc<CudaStream>,
    /// The stream of the call being prepared (the loss's own, or the raw layer's): the one whose capture
    /// status matters.
    launch_stream: CUstream,
    floats: Option<(CudaSlice<f32>, u64)>,
    counters: (CudaSlice<u32>, u64),
}

// SAFETY: `launch_stream` is the handle of a stream of the workspace's context (the raw layer's contract), and
// every driver call on it is preceded by binding that context to the calling thread (`capturing` here, the
// launcher in `module.rs`); a CUDA stream handle may be used from any thread. The other fields are `Send`. So a
// loss object can move to another thread (a framework's op, kept behind a `Mutex`, runs on the caller's).
unsafe impl Send for Workspace {}

fn address<T>(slice: &mut CudaSlice<T>, stream: &CudaStream) -> u64 {
    // The workspace is used only by this crate's kernels, in the order of the calls, so cudarc's event
    // tracking is not needed for it: take the address once.
    let (ptr, _record) = slice.device_ptr_mut(stream);
    ptr
}

impl Workspace {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let mut counters = stream.alloc_zeros::<u32>(1).map_err(|e| KdError::cuda("cuMemAlloc (workspace)", e))?;
        let at = address(&mut counters, stream);
        Ok(Workspace {
            stream: stream.clone(),
            launch_stream: stream.cu_stream(),
            floats: None,
            counters: (counters, at),
        })
    }

    /// Sets the stream the next calls launch on.
    pub(crate) fn launch_on(&mut self, stream: CUstream) {
        self.launch_stream = stream;
    }

    fn capturing(&self) -> Result<bool> {
        let capturing = |s: CUstream| -> Result<bool> {
            self.stream.context().bind_to_thread().map_err(|e| KdError::cuda("cuCtxSetCurrent", e))?;
            // SAFETY: both streams belong to the loss's context (the raw layer's contract).
            let status =
                unsafe { result::stream::is_capturing(s) }.map_err(|e| KdError::cuda("cuStreamIsCapturing", e))?;
            Ok(status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
        };
        Ok(capturing(self.launch_stream)? || capturing(self.stream.cu_stream())?)
    }

    /// Grows to at least `floats` floats and `counters` zeroed counters (no-op when large enough).
    pub(crate) fn reserve(&mut self, floats: usize, counters: usize) -> Result<()> {
        let grow_floats = self.floats.as_ref().is_none_or(|(f, _)| f.len() < floats);
        let grow_counters = self.counters.0.len() < counters;
        if !grow_floats && !grow_counters {
            return Ok(());
        }
        if self.capturing()? {
            let have_floats = self.floats.as_ref().map_or(0, |(f, _)| f.len());
            return Err(KdError::WorkspaceTooSmall {
                needed: format!("{floats} floats and {counters} counters"),
                have: format!("{have_floats} floats and {} counters", self.counters.0.len()),
            });
        }
        let stream = self.stream.clone();
        if grow_floats {
            // SAFETY: every float is written by a kernel before it is read within the same call.
            let mut fresh = unsafe { stream.alloc::<f32>(floats.max(1)) }
                .map_err(|e| KdError::cuda("cuMemAlloc (workspace)", e))?;
            let at = address(&mut fresh, &stream);
            self.floats = Some((fresh, at));
        }
        if grow_counters {
            let mut fresh =
                stream.alloc_zeros::<u32>(counters).map_err(|e| KdError::cuda("cuMemAlloc (workspace)", e))?;
            let at = address(&mut fresh, &stream);
            self.counters = (fresh, at);
        }
        // The zeroing is queued on the loss's own stream; calls may come on other streams of the context
        // (the raw layer), so let it finish here, once per growth.
        stream.synchronize().map_err(|e| KdError::cuda("cuStreamSynchronize (workspace)", e))
    }
}

impl Scratch for Workspace {
    fn prepare(&mut self, floats: usize, counters: usize) -> Result<(u64, u64)> {
        self.reserve(floats, counters)?;
        let floats = self.floats.as_ref().map_or(0, |(_, at)| *at);
        Ok((floats, self.counters.1))
    }

    fn reset_counters(&mut self) -> Result<()> {
        self.stream.context().bind_to_thread().map_err(|e| KdError::cuda("cuCtxSetCurrent", e))?;
        let bytes = self.counters.0.len() * std::mem::size_of::<u32>();
        // SAFETY: the counters are this workspace's allocation; on the launch stream, the memset follows the
        // call's launches that did queue.
        unsafe { result::memset_d8_async(self.counters.1, 0, bytes, self.launch_stream) }
            .map_err(|e| KdError::cuda("cuMemsetD8Async (workspace counters)", e))
    }
}
