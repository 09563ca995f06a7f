//! What every GPU loss shares: the probe for a driver, module loading, the reusable workspace, and the
//! checked conversion of caller buffers into kernel arguments.

use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};

use crate::dtype::{DType, KdFloat};
use crate::error::{KdError, Result};
use crate::ffi;

/// Threads per block of every kernel (`KD_BLOCK_THREADS` in `kernels/params.h`).
pub(crate) const BLOCK_THREADS: u32 = ffi::KD_BLOCK_THREADS;

/// Whether this build carries compiled kernels (nvcc was found by build.rs).
pub const KERNELS_COMPILED: bool = cfg!(kd_kernels_compiled);

#[cfg(kd_kernels_compiled)]
mod fatbins {
    include!(concat!(env!("OUT_DIR"), "/fatbins.rs"));
}

/// The kernel families, one `kernels/*.cu` each.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Family {
    Cwd,
    PixelKd,
}

fn fatbin(family: Family) -> Result<&'static [u8]> {
    #[cfg(kd_kernels_compiled)]
    {
        Ok(match family {
            Family::Cwd => fatbins::CWD,
            Family::PixelKd => fatbins::PIXEL_KD,
        })
    }
    #[cfg(not(kd_kernels_compiled))]
    {
        let _ = family;
        Err(KdError::KernelsUnavailable)
    }
}

/// Checks, without panicking, that this build has kernels and that a CUDA driver with a device is present.
///
/// cudarc panics when it cannot load libcuda, so this looks for the library first.
pub fn probe() -> Result<()> {
    if !KERNELS_COMPILED {
        return Err(KdError::KernelsUnavailable);
    }
    // SAFETY: only tries to dlopen the driver library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(KdError::CudaUnavailable { reason: "no CUDA driver library (libcuda.so) could be loaded".into() });
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err(KdError::CudaUnavailable { reason: "the CUDA driver reports no device".into() }),
        Err(e) => Err(KdError::CudaUnavailable { reason: format!("the CUDA driver failed to initialise: {e}") }),
    }
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

/// (op, dtype index, bytes of dynamic shared memory).
type SmemKey = (usize, usize, usize);

/// The entry points of one family for every dtype, loaded into one context.
#[derive(Debug)]
pub(crate) struct Kernels {
    /// `functions[op][dtype]`.
    functions: Vec<[CudaFunction; 3]>,
    /// `resident[op][dtype]`: blocks of that function the device holds at once (occupancy times SMs).
    resident: Vec<[u32; 3]>,
    pub(crate) sm_count: u32,
    /// Whether the device supports cooperative launches (a grid whose blocks may wait for each other).
    pub(crate) cooperative: bool,
    context: Arc<CudaContext>,
    /// Resident blocks already asked of the driver, by (op, dtype index, dynamic shared memory).
    resident_with_smem: Mutex<Vec<(SmemKey, u32)>>,
}

fn dtype_index(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
    }
}

impl Kernels {
    /// Loads `{op}_{dtype}` for every op in `ops` from the family's fatbin.
    pub(crate) fn load(stream: &Arc<CudaStream>, family: Family, ops: &[&str]) -> Result<Self> {
        probe()?;
        let image = fatbin(family)?;
        let ctx = stream.context();
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec())).map_err(|e| {
            KdError::cuda("cuModuleLoadData (does the GPU's architecture match the build's KD_KERNELS_CUDA_ARCHS?)", e)
        })?;
        let attribute =
            |attr: CUdevice_attribute| ctx.attribute(attr).map_err(|e| KdError::cuda("cuDeviceGetAttribute", e));
        let sm_count = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as u32;
        let cooperative = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)? != 0;
        let mut functions = Vec::with_capacity(ops.len());
        let mut resident = Vec::with_capacity(ops.len());
        for op in ops {
            let load = |dtype: DType| {
                module
                    .load_function(&format!("{op}_{}", dtype.name()))
                    .map_err(|e| KdError::cuda("cuModuleGetFunction", e))
            };
            let fs = [load(DType::F32)?, load(DType::F16)?, load(DType::BF16)?];
            let mut blocks = [0u32; 3];
            for (b, f) in blocks.iter_mut().zip(&fs) {
                let per_sm = f
                    .occupancy_max_active_blocks_per_multiprocessor(BLOCK_THREADS, 0, None)
                    .map_err(|e| KdError::cuda("cuOccupancyMaxActiveBlocksPerMultiprocessor", e))?;
                *b = per_sm.saturating_mul(sm_count);
            }
            functions.push(fs);
            resident.push(blocks);
        }
        Ok(Kernels {
            functions,
            resident,
            sm_count,
            cooperative,
            context: ctx.clone(),
            resident_with_smem: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn get(&self, op: usize, dtype: DType) -> &CudaFunction {
        &self.functions[op][dtype_index(dtype)]
    }

    /// Blocks of `op` for `dtype` that can be resident on the device at once.
    pub(crate) fn resident_blocks(&self, op: usize, dtype: DType) -> u32 {
        self.resident[op][dtype_index(dtype)]
    }

    /// Lets every dtype's `op` have as much dynamic shared memory as the device allows a block (beyond the
    /// default 48 KiB, CUDA needs this opt-in per function), and returns that amount: the opt-in limit less
    /// the function's static shared memory, the smallest over the dtypes.
    pub(crate) fn allow_max_dynamic_smem(&self, stream: &Arc<CudaStream>, op: usize) -> Result<usize> {
        let optin = stream
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| KdError::cuda("cuDeviceGetAttribute", e))?
            .max(0) as usize;
        let mut allowed = optin;
        for f in &self.functions[op] {
            let fixed = f.shared_size_bytes().map_err(|e| KdError::cuda("cuFuncGetAttribute", e))?.max(0) as usize;
            allowed = allowed.min(optin.saturating_sub(fixed));
        }
        for f in &self.functions[op] {
            f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, allowed as i32)
                .map_err(|e| KdError::cuda("cuFuncSetAttribute", e))?;
        }
        Ok(allowed)
    }

    /// Blocks of `op` for `dtype` with `dynamic_smem` bytes of dynamic shared memory that the device holds
    /// at once. Asked of the driver once per (op, dtype, size), then remembered.
    pub(crate) fn resident_blocks_with_smem(&self, op: usize, dtype: DType, dynamic_smem: usize) -> Result<u32> {
        let key = (op, dtype_index(dtype), dynamic_smem);
        let mut cache = self.resident_with_smem.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(&(_, blocks)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(blocks);
        }
        let function = self.get(op, dtype);
        // The occupancy query does not make the context current on this thread itself.
        self.context.bind_to_thread().map_err(|e| KdError::cuda("cuCtxSetCurrent", e))?;
        let per_sm = function
            .occupancy_max_active_blocks_per_multiprocessor(BLOCK_THREADS, dynamic_smem, None)
            .map_err(|e| KdError::cuda("cuOccupancyMaxActiveBlocksPerMultiprocessor", e))?;
        let blocks = per_sm.saturating_mul(self.sm_count);
        cache.push((key, blocks));
        Ok(blocks)
    }
}

/// Device scratch owned by one loss object: partial results (f32 words; CWD keeps f64 statistics in them, the
/// allocation being 256-byte aligned) and counters (the "last block done" ticket, CWD's per-row
/// arrival counters), which every kernel leaves at zero when it returns.
/// It grows to the largest shape seen and is reused, so steady-state calls allocate nothing.
#[derive(Debug)]
pub(crate) struct Workspace {
    floats: Option<CudaSlice<f32>>,
    counters: CudaSlice<u32>,
}

impl Workspace {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let counters = stream.alloc_zeros::<u32>(1).map_err(|e| KdError::cuda("cuMemAlloc (workspace)", e))?;
        Ok(Workspace { floats: None, counters })
    }

    /// Makes sure at least `floats` floats and `counters` zeroed counters exist and returns their addresses.
    ///
    /// The workspace is only ever used on the loss's own stream, in stream order (allocation, zeroing, the
    /// kernels, and cudarc's stream-ordered free when it grows), so no event tracking is kept for it.
    pub(crate) fn prepare(&mut self, stream: &Arc<CudaStream>, floats: usize, counters: usize) -> Result<(u64, u64)> {
        if self.floats.as_ref().is_none_or(|f| f.len() < floats) {
            // SAFETY: every float is written by a kernel before it is read within the same call.
            let fresh = unsafe { stream.alloc::<f32>(floats.max(1)) }
                .map_err(|e| KdError::cuda("cuMemAlloc (workspace)", e))?;
            self.floats = Some(fresh);
        }
        if self.counters.len() < counters {
            // Zeroed once; every kernel leaves the counters it uses at zero.
            self.counters =
                stream.alloc_zeros::<u32>(counters).map_err(|e| KdError::cuda("cuMemAlloc (workspace)", e))?;
        }
        let floats = self.floats.as_mut().expect("allocated above");
        let (f, _) = floats.device_ptr_mut(stream);
        let (c, _) = self.counters.device_ptr_mut(stream);
        Ok((f, c))
    }
}

fn same_context(stream: &CudaStream, other: &CudaStream) -> bool {
    stream.context().cu_ctx() == other.context().cu_ctx()
}

/// Validates an input buffer (length, context) and returns its device address.
pub(crate) fn input<'a, T>(
    what: &'static str,
    buffer: &'a dyn DevicePtr<T>,
    needed: usize,
    stream: &'a CudaStream,
    guards: &mut Vec<SyncOnDrop<'a>>,
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
    guards: &mut Vec<SyncOnDrop<'a>>,
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
    guards: &mut Vec<SyncOnDrop<'a>>,
) -> Result<u64> {
    buffer.map_or(Ok(0), |b| output(what, b, needed, stream, guards))
}

/// [`input`] for an optional buffer: the null address when absent.
pub(crate) fn optional_input<'a, 'b: 'a, T>(
    what: &'static str,
    buffer: Option<&'a (dyn DevicePtr<T> + 'b)>,
    needed: usize,
    stream: &'a CudaStream,
    guards: &mut Vec<SyncOnDrop<'a>>,
) -> Result<u64> {
    buffer.map_or(Ok(0), |b| input(what, b, needed, stream, guards))
}

fn check_buffer(what: &'static str, len: usize, owner: &CudaStream, needed: usize, stream: &CudaStream) -> Result<()> {
    if !same_context(owner, stream) {
        return Err(KdError::ContextMismatch { what });
    }
    if len < needed {
        return Err(KdError::BufferTooSmall { what, needed, len });
    }
    Ok(())
}

/// Validates the (student, teacher) pair every loss takes and returns their addresses.
pub(crate) fn input_pair<'a, T: KdFloat>(
    student: &'a dyn DevicePtr<T>,
    teacher: &'a dyn DevicePtr<T>,
    numel: usize,
    stream: &'a CudaStream,
    guards: &mut Vec<SyncOnDrop<'a>>,
) -> Result<(u64, u64)> {
    let s = input("student", student, numel, stream, guards)?;
    let t = input("teacher", teacher, numel, stream, guards)?;
    Ok((s, t))
}

/// Blocks of a 1-D grid, checked against the hardware limit.
pub(crate) fn grid_blocks(what: &'static str, blocks: usize) -> Result<u32> {
    if blocks == 0 || blocks > i32::MAX as usize {
        return Err(KdError::TooLarge { what, detail: format!("needs {blocks} thread blocks; the limit is 2^31 - 1") });
    }
    Ok(blocks as u32)
}
