//! Caller buffers (anything cudarc's `DevicePtr`/`DevicePtrMut` accept) checked and turned into device
//! addresses for the kernels' argument blocks.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop};

use crate::error::{KdError, Result};

/// Turns the typed buffers of one call into checked device addresses on the loss object's stream, holding
/// cudarc's guards (which order other streams' use of the buffers after this call) until the call is queued.
/// `'s` is the borrow of the stream; the buffers may live longer.
pub struct Binder<'s> {
    stream: &'s CudaStream,
    guards: Vec<SyncOnDrop<'s>>,
}

impl<'s> Binder<'s> {
    pub(crate) fn new(stream: &'s CudaStream) -> Self {
        Binder { stream, guards: Vec::with_capacity(8) }
    }

    /// Checks that `buffer` lives in this stream's context and holds at least `needed` elements.
    fn check<T, B: DeviceSlice<T> + ?Sized>(&self, what: &'static str, buffer: &B, needed: usize) -> Result<()> {
        if buffer.stream().context().cu_ctx() != self.stream.context().cu_ctx() {
            return Err(KdError::ContextMismatch { what });
        }
        let len = buffer.len();
        if len < needed {
            return Err(KdError::BufferTooSmall { what, needed, len });
        }
        Ok(())
    }

    /// A required input of at least `needed` elements.
    pub(crate) fn input<'a: 's, T>(
        &mut self,
        what: &'static str,
        buffer: &'a dyn DevicePtr<T>,
        needed: usize,
    ) -> Result<u64> {
        self.check(what, buffer, needed)?;
        let (ptr, guard) = buffer.device_ptr(self.stream);
        self.guards.push(guard);
        Ok(ptr)
    }

    /// An optional input (the null address when absent).
    pub(crate) fn optional_input<'a: 's, T>(
        &mut self,
        what: &'static str,
        buffer: Option<&'a dyn DevicePtr<T>>,
        needed: usize,
    ) -> Result<u64> {
        buffer.map_or(Ok(0), |buffer| self.input(what, buffer, needed))
    }

    /// An optional output (the null address when absent, which tells the kernels not to write it).
    pub(crate) fn output<'a: 's, T>(
        &mut self,
        what: &'static str,
        buffer: Option<&'a mut dyn DevicePtrMut<T>>,
        needed: usize,
    ) -> Result<u64> {
        let Some(buffer) = buffer else { return Ok(0) };
        self.check(what, buffer, needed)?;
        let (ptr, guard) = buffer.device_ptr_mut(self.stream);
        self.guards.push(guard);
        Ok(ptr)
    }
}
