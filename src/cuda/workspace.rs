//! The device scratch a loss object owns: partial results and counters.

use std::sync::Arc;

use cudarc::driver::sys::{CUevent_flags, CUevent_wait_flags, CUstream, CUstreamCaptureStatus};
use cudarc::driver::{result, CudaSlice, CudaStream, DevicePtrMut};

use super::growth::{Growth, Kind, Memory, StreamId};
use crate::error::{KdError, Result};
use crate::launch::Scratch;

/// Partial results (f32 words, 256-byte aligned, so doubles fit) and counters (the "last block done" ticket,
/// CWD's per-row arrival counters), which every kernel leaves at zero when it returns.
///
/// It grows to the largest call seen, then is reused, so steady-state calls allocate nothing; a growth frees
/// the old buffers only after the work queued on the growing call's stream (see `growth.rs`). It never grows
/// while the loss's stream is being captured into a CUDA graph: a graph keeps the addresses it was captured
/// with, so a reallocation behind it would leave the graph pointing at freed memory. Such a call returns
/// [`KdError::WorkspaceTooSmall`]; `reserve` on the loss before capturing sizes it up front.
pub(crate) struct Workspace {
    /// The stream of the call being prepared (the loss's own, or the raw layer's): the one whose capture
    /// status matters.
    launch_stream: CUstream,
    growth: Growth<CudaMemory>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (floats, counters) = self.growth.lens();
        f.debug_struct("Workspace").field("floats", &floats).field("counters", &counters).finish()
    }
}

// SAFETY: `launch_stream` is the handle of a stream of the workspace's context (the raw layer's contract), and
// every driver call on it is preceded by binding that context to the calling thread (`capturing` and
// `order_after` here, the launcher in `module.rs`); a CUDA stream handle may be used from any thread. The
// other fields are `Send`. So a loss object can move to another thread (a framework's op, kept behind a
// `Mutex`, runs on the caller's).
unsafe impl Send for Workspace {}

fn address<T>(slice: &mut CudaSlice<T>, stream: &CudaStream) -> u64 {
    // The workspace is used only by this crate's kernels, in the order of the calls, so cudarc's event
    // tracking is not needed for it: take the address once.
    let (ptr, _record) = slice.device_ptr_mut(stream);
    ptr
}

/// A workspace buffer of either kind.
pub(crate) enum CudaBuffer {
    Floats(#[allow(dead_code)] CudaSlice<f32>),
    Counters(#[allow(dead_code)] CudaSlice<u32>),
}

/// The device side of [`Growth`]: cudarc allocations on the loss's stream.
pub(crate) struct CudaMemory {
    stream: Arc<CudaStream>,
}

impl CudaMemory {
    fn bind(&self) -> Result<()> {
        self.stream.context().bind_to_thread().map_err(|e| KdError::cuda("cuCtxSetCurrent", e))
    }
}

impl Memory for CudaMemory {
    type Buffer = CudaBuffer;

    fn own_stream(&self) -> StreamId {
        self.stream.cu_stream() as StreamId
    }

    fn alloc(&mut self, kind: Kind, len: usize) -> Result<(CudaBuffer, u64)> {
        let stream = self.stream.clone();
        let failed = |e| KdError::cuda("cuMemAlloc (workspace)", e);
        Ok(match kind {
            Kind::Floats => {
                // SAFETY: every float is written by a kernel before it is read within the same call.
                let mut fresh = unsafe { stream.alloc::<f32>(len) }.map_err(failed)?;
                let at = address(&mut fresh, &stream);
                (CudaBuffer::Floats(fresh), at)
            }
            Kind::Counters => {
                let mut fresh = stream.alloc_zeros::<u32>(len).map_err(failed)?;
                let at = address(&mut fresh, &stream);
                (CudaBuffer::Counters(fresh), at)
            }
        })
    }

    fn order_after(&mut self, stream: StreamId) -> Result<()> {
        self.bind()?;
        let event = result::event::create(CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|e| KdError::cuda("cuEventCreate (workspace)", e))?;
        // SAFETY: `stream` is the live stream of the call being prepared (the raw layer's contract), of this
        // context; the event is ours, and destroying it after the wait is queued is allowed (its resources
        // go once the wait is done).
        let ordered = unsafe {
            result::event::record(event, stream as CUstream).and_then(|()| {
                result::stream::wait_event(self.stream.cu_stream(), event, CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
            })
        };
        // SAFETY: as above.
        let destroyed = unsafe { result::event::destroy(event) };
        ordered.map_err(|e| KdError::cuda("cuEventRecord/cuStreamWaitEvent (workspace)", e))?;
        destroyed.map_err(|e| KdError::cuda("cuEventDestroy (workspace)", e))
    }

    fn synchronize_all(&mut self) -> Result<()> {
        self.stream.context().synchronize().map_err(|e| KdError::cuda("cuCtxSynchronize (workspace)", e))
    }

    fn publish(&mut self) -> Result<()> {
        // The allocations and the zeroing are queued on the loss's own stream; calls may come on other streams
        // of the context (the raw layer), so let them finish here, once per growth.
        self.stream.synchronize().map_err(|e| KdError::cuda("cuStreamSynchronize (workspace)", e))
    }

    fn free(&mut self, buffer: CudaBuffer) {
        // cudarc frees with `cuMemFreeAsync` on the loss's stream, after what `order_after` made it wait for.
        drop(buffer);
    }
}

impl Workspace {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let mut growth = Growth::new(CudaMemory { stream: stream.clone() });
        // The first counter now: a loss that cannot get one fails at construction.
        growth.reserve(0, 1)?;
        Ok(Workspace { launch_stream: stream.cu_stream(), growth })
    }

    /// Sets the stream the next calls launch on.
    pub(crate) fn launch_on(&mut self, stream: CUstream) {
        self.launch_stream = stream;
    }

    fn capturing(&self) -> Result<bool> {
        let own = &self.growth.memory().stream;
        let capturing = |s: CUstream| -> Result<bool> {
            own.context().bind_to_thread().map_err(|e| KdError::cuda("cuCtxSetCurrent", e))?;
            // SAFETY: both streams belong to the loss's context (the raw layer's contract).
            let status =
                unsafe { result::stream::is_capturing(s) }.map_err(|e| KdError::cuda("cuStreamIsCapturing", e))?;
            Ok(status != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
        };
        Ok(capturing(self.launch_stream)? || capturing(own.cu_stream())?)
    }

    /// Grows to at least `floats` floats and `counters` zeroed counters (no-op when large enough).
    pub(crate) fn reserve(&mut self, floats: usize, counters: usize) -> Result<()> {
        if self.growth.must_grow(floats, counters) && self.capturing()? {
            return Err(self.too_small(floats, counters));
        }
        self.growth.reserve(floats, counters)
    }

    fn too_small(&self, floats: usize, counters: usize) -> KdError {
        let (have_floats, have_counters) = self.growth.lens();
        KdError::WorkspaceTooSmall {
            needed: format!("{floats} floats and {counters} counters"),
            have: format!("{have_floats} floats and {have_counters} counters"),
        }
    }
}

impl Scratch for Workspace {
    fn prepare(&mut self, floats: usize, counters: usize) -> Result<(u64, u64)> {
        if self.growth.must_grow(floats, counters) && self.capturing()? {
            return Err(self.too_small(floats, counters));
        }
        self.growth.prepare(floats, counters, self.launch_stream as StreamId)
    }

    fn reset_counters(&mut self) -> Result<()> {
        let Some((address, len)) = self.growth.counters() else {
            return Ok(());
        };
        self.growth.memory().bind()?;
        let bytes = len * std::mem::size_of::<u32>();
        // SAFETY: the counters are this workspace's allocation; on the launch stream, the memset follows the
        // call's launches that did queue.
        unsafe { result::memset_d8_async(address, 0, bytes, self.launch_stream) }
            .map_err(|e| KdError::cuda("cuMemsetD8Async (workspace counters)", e))
    }
}
