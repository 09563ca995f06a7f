//! What every GPU loss shares: the probe for a driver, the loaded kernel modules, the reusable workspace,
//! the checked conversion of caller buffers into device addresses, and the launcher on a raw `CUstream`.

mod buffers;
mod growth;
mod loss;
mod module;
mod workspace;

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};

use crate::error::{KdError, Result};

pub use buffers::Binder;
pub use loss::LossCuda;
pub(crate) use module::{CudaLauncher, KernelModule};
pub(crate) use workspace::Workspace;

/// Whether this build carries compiled kernels (nvcc was found by build.rs).
pub const KERNELS_COMPILED: bool = cfg!(kd_kernels_compiled);

#[cfg(kd_kernels_compiled)]
mod fatbins {
    include!(concat!(env!("OUT_DIR"), "/fatbins.rs"));
}

/// The fatbin compiled from `kernels/{stem}.cu`.
fn fatbin(stem: &str) -> Result<&'static [u8]> {
    #[cfg(kd_kernels_compiled)]
    {
        fatbins::fatbin(stem).ok_or(KdError::KernelsUnavailable)
    }
    #[cfg(not(kd_kernels_compiled))]
    {
        let _ = stem;
        Err(KdError::KernelsUnavailable)
    }
}

/// Names the CUDA driver library goes by (Linux, then Windows).
const DRIVER_LIBRARIES: [&str; 3] = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"];

/// Whether the CUDA driver library can be loaded. Asked before the first driver call, because cudarc (with
/// its run-time loading) panics when the library is missing. Written here rather than taken from cudarc,
/// whose probe exists only under its `dynamic-loading` feature: this one works under every linking mode
/// cudarc offers (with `dynamic-linking` the library is already loaded, and the probe finds it).
fn driver_library_present() -> bool {
    DRIVER_LIBRARIES.iter().any(|name| {
        // SAFETY: loading the driver library runs its initialisers, which is what any driver use does first.
        unsafe { libloading::Library::new(name) }.is_ok()
    })
}

/// Checks, without panicking, that this build has kernels and that a CUDA driver with a device is present.
pub fn probe() -> Result<()> {
    if !KERNELS_COMPILED {
        return Err(KdError::KernelsUnavailable);
    }
    if !driver_library_present() {
        return Err(KdError::CudaUnavailable { reason: "no CUDA driver library (libcuda.so) could be loaded".into() });
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err(KdError::CudaUnavailable { reason: "the CUDA driver reports no device".into() }),
        Err(e) => Err(KdError::CudaUnavailable { reason: format!("the CUDA driver failed to initialise: {e}") }),
    }
}

/// Whether a GPU and its driver are present, whether or not this build has kernels: lets a program tell a
/// user with a GPU that the build lacks its kernels (nvcc was not found) instead of silently running on
/// the CPU.
pub fn gpu_present() -> bool {
    driver_library_present() && matches!(CudaContext::device_count(), Ok(n) if n > 0)
}

/// Probes, then opens device `ordinal` and returns its default stream: the short way to get a stream
/// for the losses when the caller has none yet.
pub fn default_stream(ordinal: usize) -> Result<Arc<CudaStream>> {
    probe()?;
    let count = CudaContext::device_count().map_err(|e| KdError::cuda("cuDeviceGetCount", e))?;
    if ordinal >= count as usize {
        return Err(KdError::CudaUnavailable { reason: format!("device {ordinal} requested, {count} present") });
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| KdError::cuda("cuCtxCreate", e))?;
    Ok(ctx.default_stream())
}
