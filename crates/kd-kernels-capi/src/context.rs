//! `kd_context`: one device's loss objects (loaded kernels, workspaces), kept across calls so repeated
//! calls neither reload modules nor reallocate.

use std::sync::{Arc, Mutex};

use kd::cudarc::driver::CudaStream;
use kd::KdError;

use crate::{guard, Failure, KdStatus, KD_ERR_NULL_POINTER, KD_ERR_PARAMETER};

/// How many loss objects of one family (one per distinct configuration) a context keeps. A caller that
/// changes a parameter every step (a temperature schedule) would otherwise grow without bound; the oldest
/// is dropped after a context-wide synchronisation, so no queued kernel loses its workspace.
const LOSSES_PER_FAMILY: usize = 16;

/// Loss objects of one family, one per configuration.
pub(crate) struct LossCache<L> {
    losses: Vec<L>,
}

impl<L> Default for LossCache<L> {
    fn default() -> Self {
        LossCache { losses: Vec::new() }
    }
}

impl<L> LossCache<L> {
    /// The loss object whose configuration is `config`, created on first use.
    pub(crate) fn get<C: PartialEq>(
        &mut self,
        stream: &Arc<CudaStream>,
        config: &C,
        config_of: impl Fn(&L) -> &C,
        create: impl FnOnce() -> kd::Result<L>,
    ) -> Result<&mut L, Failure> {
        let index = match self.losses.iter().position(|loss| config_of(loss) == config) {
            Some(index) => index,
            None => {
                let loss = create()?;
                if self.losses.len() >= LOSSES_PER_FAMILY {
                    stream
                        .context()
                        .synchronize()
                        .map_err(|e| KdError::Cuda { op: "cuCtxSynchronize", error: e.to_string() })?;
                    self.losses.remove(0);
                }
                self.losses.push(loss);
                self.losses.len() - 1
            }
        };
        Ok(&mut self.losses[index])
    }
}

pub(crate) struct Inner {
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) cwd: LossCache<kd::cwd::CwdCuda>,
    pub(crate) pixel_kd: LossCache<kd::pixel_kd::PixelKdCuda>,
    pub(crate) icsd: LossCache<kd::icsd::IcsdCuda>,
    pub(crate) semckd: LossCache<kd::semckd::SemckdCuda>,
    pub(crate) dist: LossCache<kd::dist::DistCuda>,
    /// Keyed by configuration and channel counts (a CWT loss object is made for one MLP shape).
    pub(crate) cwt: LossCache<((kd::cwt::CwtConfig, kd::cwt::CwtShapes), kd::cwt::CwtCuda)>,
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
    ctx: *mut KdContext,
    body: impl FnOnce(&mut Inner) -> crate::Outcome,
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
        let context = KdContext {
            inner: Mutex::new(Inner {
                stream,
                cwd: LossCache::default(),
                pixel_kd: LossCache::default(),
                cwt: LossCache::default(),
                icsd: LossCache::default(),
                semckd: LossCache::default(),
                dist: LossCache::default(),
            }),
        };
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
