//! A family's kernels loaded into one context, the device facts its planner reads, and the launcher.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self, CUdevice_attribute, CUfunction_attribute, CUresult};
use cudarc::driver::{result, CudaContext, CudaFunction, CudaStream};

use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::launch::{DeviceInfo, Launch, LaunchError, Launcher, BLOCK_THREADS};

/// (kernel, dtype, bytes of dynamic shared memory) -> resident blocks.
type OccupancyCache = Vec<((&'static str, DType, usize), usize)>;

/// The entry points `{kernel}_{dtype}` of one `kernels/*.cu` file for every kernel it names and every dtype.
#[derive(Debug)]
pub(crate) struct KernelModule {
    functions: Vec<(&'static str, [CudaFunction; 3])>,
    /// The most dynamic shared memory a block of each kernel may have (see [`Self::load`]).
    max_dynamic_smem: Vec<(&'static str, usize)>,
    sm_count: usize,
    cooperative: bool,
    /// Set once the driver refused a cooperative grid (e.g. under MPS): from then on planners avoid them.
    cooperative_refused: AtomicBool,
    context: Arc<CudaContext>,
    occupancy: Mutex<OccupancyCache>,
}

fn dtype_index(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
    }
}

impl KernelModule {
    /// Loads `{kernel}_{dtype}` for every kernel in `kernels` from the fatbin of `kernels/{file}.cu`, and
    /// lets every kernel in `big_smem` have as much dynamic shared memory as the device allows a block.
    pub(crate) fn load(
        stream: &Arc<CudaStream>,
        file: &str,
        kernels: &[&'static str],
        big_smem: &[&'static str],
    ) -> Result<Self> {
        super::probe()?;
        let image = super::fatbin(file)?;
        let ctx = stream.context();
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec())).map_err(|e| {
            KdError::cuda("cuModuleLoadData (does the GPU's architecture match the build's KD_KERNELS_CUDA_ARCHS?)", e)
        })?;
        let attribute =
            |attr: CUdevice_attribute| ctx.attribute(attr).map_err(|e| KdError::cuda("cuDeviceGetAttribute", e));
        let sm_count = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1) as usize;
        let cooperative = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)? != 0;
        let optin =
            attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?.max(0) as usize;
        let mut functions = Vec::with_capacity(kernels.len());
        for &kernel in kernels {
            let load = |dtype: DType| {
                module
                    .load_function(&format!("{kernel}_{}", dtype.name()))
                    .map_err(|e| KdError::cuda("cuModuleGetFunction", e))
            };
            functions.push((kernel, [load(DType::F32)?, load(DType::F16)?, load(DType::BF16)?]));
        }
        let mut max_dynamic_smem = Vec::new();
        for (kernel, fs) in &functions {
            // Static and dynamic shared memory share one per-block limit: the default 48 KiB, or beyond it,
            // for the kernels in `big_smem`, the opt-in limit CUDA grants per function once asked
            // (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`). The dtypes' largest static memory counts.
            let mut fixed = 0;
            for f in fs {
                fixed = fixed
                    .max(f.shared_size_bytes().map_err(|e| KdError::cuda("cuFuncGetAttribute", e))?.max(0) as usize);
            }
            let opted_in = big_smem.contains(kernel);
            let allowed = crate::hw::dynamic_smem_limit(optin, fixed, opted_in);
            if opted_in {
                for f in fs {
                    f.set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        allowed as i32,
                    )
                    .map_err(|e| KdError::cuda("cuFuncSetAttribute", e))?;
                }
            }
            max_dynamic_smem.push((*kernel, allowed));
        }
        Ok(KernelModule {
            functions,
            max_dynamic_smem,
            sm_count,
            cooperative,
            cooperative_refused: AtomicBool::new(false),
            context: ctx.clone(),
            occupancy: Mutex::new(Vec::new()),
        })
    }

    fn function(&self, kernel: &str, dtype: DType) -> Result<&CudaFunction> {
        self.functions
            .iter()
            .find(|(k, _)| *k == kernel)
            .map(|(_, fs)| &fs[dtype_index(dtype)])
            .ok_or_else(|| KdError::Cuda { op: "kernel lookup", error: format!("{kernel} was not loaded") })
    }
}

impl DeviceInfo for KernelModule {
    fn sm_count(&self) -> usize {
        self.sm_count
    }

    fn cooperative(&self) -> bool {
        self.cooperative && !self.cooperative_refused.load(Ordering::Relaxed)
    }

    fn refuse_cooperative(&self) {
        self.cooperative_refused.store(true, Ordering::Relaxed);
    }

    fn resident_blocks(&self, kernel: &'static str, dtype: DType, dynamic_smem: usize) -> Result<usize> {
        let key = (kernel, dtype, dynamic_smem);
        let mut cache = self.occupancy.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(&(_, blocks)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(blocks);
        }
        let function = self.function(kernel, dtype)?;
        // The occupancy query does not make the context current on this thread itself.
        self.context.bind_to_thread().map_err(|e| KdError::cuda("cuCtxSetCurrent", e))?;
        let per_sm = function
            .occupancy_max_active_blocks_per_multiprocessor(BLOCK_THREADS, dynamic_smem, None)
            .map_err(|e| KdError::cuda("cuOccupancyMaxActiveBlocksPerMultiprocessor", e))?;
        let blocks = per_sm as usize * self.sm_count;
        cache.push((key, blocks));
        Ok(blocks)
    }

    fn max_dynamic_smem(&self, kernel: &'static str) -> usize {
        // Every loaded kernel has its entry; one not loaded cannot be launched at all.
        self.max_dynamic_smem.iter().find(|(k, _)| *k == kernel).map_or(0, |&(_, bytes)| bytes)
    }
}

/// Launches a module's kernels on a raw stream of its context.
pub(crate) struct CudaLauncher<'a> {
    pub module: &'a KernelModule,
    pub stream: sys::CUstream,
}

impl Launcher for CudaLauncher<'_> {
    unsafe fn launch(&mut self, launch: &Launch, dtype: DType, args: *const c_void) -> Result<(), LaunchError> {
        let function = self.module.function(launch.kernel, dtype).map_err(LaunchError::Failed)?;
        self.module.context.bind_to_thread().map_err(|e| LaunchError::Failed(KdError::cuda("cuCtxSetCurrent", e)))?;
        // Every kernel takes one argument, its argument block, passed by value.
        let mut params = [args as *mut c_void];
        let grid = (launch.grid, 1, 1);
        let block = (BLOCK_THREADS, 1, 1);
        // SAFETY: the caller vouches for the argument block (see `Launcher::launch`).
        let launched = unsafe {
            if launch.cooperative {
                result::launch_cooperative_kernel(
                    function.cu_function(),
                    grid,
                    block,
                    launch.dynamic_smem,
                    self.stream,
                    &mut params,
                )
            } else {
                result::launch_kernel(
                    function.cu_function(),
                    grid,
                    block,
                    launch.dynamic_smem,
                    self.stream,
                    &mut params,
                )
            }
        };
        launched.map_err(|e| {
            let error = KdError::cuda(launch.kernel, e);
            if launch.cooperative && e.0 == CUresult::CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE {
                LaunchError::CooperativeRefused(error)
            } else {
                LaunchError::Failed(error)
            }
        })
    }
}
