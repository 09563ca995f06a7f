//! `kd_context`: one device's loss objects (loaded kernels, workspaces), kept across calls so repeated
//! calls neither reload modules nor reallocate.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use kd::cuda::LossCuda;
use kd::cudarc::driver::sys::CUstream;
use kd::cudarc::driver::CudaStream;
use kd::family::Family;
use kd::{DType, GradOptions, KdError};

use crate::{guard, Failure, KdStatus, KD_ERR_NULL_POINTER, KD_ERR_PARAMETER};

/// How many loss objects of one family (one per distinct configuration) a context keeps. A caller that
/// changes a parameter every step (a temperature schedule) would otherwise grow without bound; the oldest
/// is dropped after a context-wide synchronisation, so no queued kernel loses its workspace.
const LOSSES_PER_FAMILY: usize = 16;

/// Loss objects of one family, one per configuration.
struct LossCache<F: Family> {
    losses: Vec<LossCuda<F>>,
}

pub(crate) struct Inner {
    pub(crate) stream: Arc<CudaStream>,
    /// One [`LossCache`] per family that has been called, by the family's type: a registered family gets its
    /// cache by being called, with nothing to list here.
    caches: HashMap<TypeId, Box<dyn Any + Send>>,
}

impl Inner {
    fn new(stream: Arc<CudaStream>) -> Self {
        Inner { stream, caches: HashMap::new() }
    }

    /// The loss object of family `F` made for `config` (loaded kernels, grown workspace), created on first use.
    pub(crate) fn loss<F: Family>(&mut self, config: &F::Config) -> Result<&mut LossCuda<F>, Failure>
    where
        LossCuda<F>: Send,
    {
        let cache = self
            .caches
            .entry(TypeId::of::<F>())
            .or_insert_with(|| Box::new(LossCache::<F> { losses: Vec::new() }))
            .downcast_mut::<LossCache<F>>()
            .expect("the caches are keyed by their family's type");
        let index = match cache.losses.iter().position(|loss| loss.config() == config) {
            Some(index) => index,
            None => {
                let loss = LossCuda::<F>::new(self.stream.clone(), config.clone())?;
                if cache.losses.len() >= LOSSES_PER_FAMILY {
                    self.stream
                        .context()
                        .synchronize()
                        .map_err(|e| KdError::Cuda { op: "cuCtxSynchronize", error: e.to_string() })?;
                    cache.losses.remove(0);
                }
                cache.losses.push(loss);
                cache.losses.len() - 1
            }
        };
        Ok(&mut cache.losses[index])
    }
}

/// Owns one device's loaded kernels and workspaces, so repeated calls neither reload nor reallocate.
/// Calls through one context are serialised (a lock); use one context per device.
pub struct KdContext {
    inner: Mutex<Inner>,
}

/// Runs `body` on the context behind `ctx`, under its lock.
///
/// # Safety
/// `ctx` is null or a pointer returned by [`kd_context_create`] and not yet destroyed.
pub(crate) unsafe fn with_context(
    ctx: *mut KdContext, body: impl FnOnce(&mut Inner) -> crate::Outcome,
) -> crate::Outcome {
    if ctx.is_null() {
        return Err(Failure::new(KD_ERR_NULL_POINTER, "ctx: a null kd_context; create one with kd_context_create"));
    }
    // SAFETY: forwarded from the caller.
    let context = unsafe { &*ctx };
    // A panic under the lock was already reported as KD_ERR_PANIC; the objects themselves stay usable.
    let mut inner = context.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    body(&mut inner)
}

/// One call of family `F` on device addresses, queued on the caller's `stream` by the context's loss object for
/// `config` (made on first use): the body every `kd_*_cuda` entry point shares.
///
/// # Safety
/// As [`with_context`]; `stream` is null or a stream of the context's device; the non-zero addresses of
/// `buffers` are device memory of that context holding what `F`'s raw buffers document for `shape` and `dtype`.
pub(crate) unsafe fn launch<F: Family>(
    ctx: *mut KdContext, config: &F::Config, shape: &F::Shape, dtype: DType, buffers: &F::RawBuffers,
    options: GradOptions, stream: *mut c_void,
) -> crate::Outcome {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_context(ctx, |inner| {
            inner.loss::<F>(config)?.launch_raw(stream as CUstream, shape, dtype, buffers, options)?;
            Ok(())
        })
    }
}

/// Opens device `device_ordinal` (its primary context, the one the CUDA runtime and PyTorch use) and writes a
/// new context to `*out`.
///
/// # Safety
/// `out` is null or points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn kd_context_create(device_ordinal: i32, out: *mut *mut KdContext) -> KdStatus {
    guard(|| {
        if out.is_null() {
            return Err(Failure::new(KD_ERR_NULL_POINTER, "out: a null pointer; pass where to write the context"));
        }
        let ordinal = usize::try_from(device_ordinal).map_err(|_| {
            Failure::new(KD_ERR_PARAMETER, format!("device_ordinal = {device_ordinal} is invalid: it must be >= 0"))
        })?;
        let stream = kd::cuda::default_stream(ordinal)?;
        let context = KdContext { inner: Mutex::new(Inner::new(stream)) };
        // SAFETY: `out` is writable (the caller's contract) and not null (checked).
        unsafe { *out = Box::into_raw(Box::new(context)) };
        Ok(())
    })
}

/// Frees the context and its workspaces (NULL is a no-op). Work queued through it must have finished.
///
/// # Safety
/// `ctx` is null or a pointer returned by `kd_context_create`, not used again afterwards.
#[no_mangle]
pub unsafe extern "C" fn kd_context_destroy(ctx: *mut KdContext) {
    if ctx.is_null() {
        return;
    }
    let _ = guard(|| {
        // SAFETY: forwarded from the caller.
        drop(unsafe { Box::from_raw(ctx) });
        Ok(())
    });
}
