//! Caller buffers (anything cudarc's `DevicePtr`/`DevicePtrMut` accept) checked and turned into device
//! addresses for the kernels' argument blocks.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};

use crate::error::{KdError, Result};

/// cudarc's guards of the buffers of one call: while they live, cudarc orders other streams' use of the
/// buffers after this call's launches.
pub(crate) type Guards<'a> = Vec<SyncOnDrop<'a>>;

fn check_buffer(what: &'static str, len: usize, owner: &CudaStream, needed: usize, stream: &CudaStream) -> Result<()> {
    if owner.context().cu_ctx() != stream.context().cu_ctx() {
        return Err(KdError::ContextMismatch { what });
    }
    if len < needed {
        return Err(KdError::BufferTooSmall { what, needed, len });
    }
    Ok(())
}

/// Validates an input buffer (length, context) and returns its device address.
pub(crate) fn input<'a, T>(
    what: &'static str,
    buffer: &'a dyn DevicePtr<T>,
    needed: usize,
    stream: &'a CudaStream,
    guards: &mut Guards<'a>,
) -> Result<u64> {
    check_buffer(what, buffer.len(), buffer.stream(), needed, stream)?;
    let (ptr, guard) = buffer.device_ptr(stream);
    guards.push(guard);
    Ok(ptr)
}

/// Validates an output buffer (length, context) and returns its device address.
pub(crate) fn output<'a, T>(
    what: &'static str,
    buffer: &'a mut dyn DevicePtrMut<T>,
    needed: usize,
    stream: &'a CudaStream,
    guards: &mut Guards<'a>,
) -> Result<u64> {
    check_buffer(what, buffer.len(), buffer.stream(), needed, stream)?;
    let (ptr, guard) = buffer.device_ptr_mut(stream);
    guards.push(guard);
    Ok(ptr)
}

/// [`output`] for an optional buffer: the null address when absent (the kernels' flags then skip it).
pub(crate) fn optional_output<'a, 'b: 'a, T>(
    what: &'static str,
    buffer: Option<&'a mut (dyn DevicePtrMut<T> + 'b)>,
    needed: usize,
    stream: &'a CudaStream,
    guards: &mut Guards<'a>,
) -> Result<u64> {
    buffer.map_or(Ok(0), |b| output(what, b, needed, stream, guards))
}

/// [`input`] for an optional buffer: the null address when absent.
pub(crate) fn optional_input<'a, 'b: 'a, T>(
    what: &'static str,
    buffer: Option<&'a (dyn DevicePtr<T> + 'b)>,
    needed: usize,
    stream: &'a CudaStream,
    guards: &mut Guards<'a>,
) -> Result<u64> {
    buffer.map_or(Ok(0), |b| input(what, b, needed, stream, guards))
}

/// Turns the typed buffers of one call into checked device addresses on the loss object's stream, holding
/// cudarc's guards (which order other streams' use of the buffers after this call) until the call is queued.
/// `'s` is the borrow of the stream; the buffers may live longer.
pub struct Binder<'s> {
    stream: &'s CudaStream,
    guards: Guards<'s>,
}

impl<'s> Binder<'s> {
    pub(crate) fn new(stream: &'s CudaStream) -> Self {
        Binder { stream, guards: Vec::with_capacity(8) }
    }

    /// A required input of at least `needed` elements.
    pub(crate) fn input<'a: 's, T>(
        &mut self,
        what: &'static str,
        buffer: &'a dyn DevicePtr<T>,
        needed: usize,
    ) -> Result<u64> {
        input(what, buffer, needed, self.stream, &mut self.guards)
    }

    /// An optional input (the null address when absent).
    pub(crate) fn optional_input<'a: 's, T>(
        &mut self,
        what: &'static str,
        buffer: Option<&'a dyn DevicePtr<T>>,
        needed: usize,
    ) -> Result<u64> {
        optional_input(what, buffer, needed, self.stream, &mut self.guards)
    }

    /// An optional output (the null address when absent, which tells the kernels not to write it).
    pub(crate) fn output<'a: 's, T>(
        &mut self,
        what: &'static str,
        buffer: Option<&'a mut dyn DevicePtrMut<T>>,
        needed: usize,
    ) -> Result<u64> {
        optional_output(what, buffer, needed, self.stream, &mut self.guards)
    }
}
