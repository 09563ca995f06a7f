//! What the GPUs the kernels are compiled for allow a launch, and what each compiled kernel uses.
//!
//! The per-architecture limits are NVIDIA's ("Technical Specifications per Compute Capability" of the CUDA C++
//! Programming Guide, and the occupancy rules of `cuda_occupancy.h`), written down here because no GPU is at
//! hand to ask; the per-kernel resources come from the build (`build.rs` reads ptxas's `--resource-usage`
//! report and the PTX's `.maxntid` for every entry point and SASS architecture). Together they let a test
//! check, without a GPU, that every launch a planner makes would be accepted by the hardware: the register
//! file, the shared memory per block (with the opt-in beyond 48 KiB), the blocks a cooperative grid may
//! have, the grid's dimensions. [`dynamic_smem_limit`] is also what the CUDA launcher allows each kernel.

// Outside the tests only `dynamic_smem_limit` is used (by the CUDA launcher); the rest serves the launch-limit
// tests, which are what this module is for.
#![cfg_attr(not(test), allow(dead_code))]

use crate::launch::Launch;

/// One compiled entry point (`{kernel}_{dtype}`) on one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelResources {
    pub kernel: &'static str,
    /// `NN` of `sm_NN`.
    pub arch: u32,
    pub registers: u32,
    /// `__shared__` bytes of the kernel itself (dynamic shared memory comes on top).
    pub static_smem: u32,
    /// The `__launch_bounds__` block size (`.maxntid`): no launch may have more threads.
    pub max_threads: u32,
    /// Bytes of register spills (stores and loads): the kernels are written to have none.
    pub spill_bytes: u32,
}

include!(concat!(env!("OUT_DIR"), "/kernel_resources.rs"));

/// Shared memory a block may have without opting in (static and dynamic together), every architecture.
pub(crate) const DEFAULT_SMEM_PER_BLOCK: usize = 48 * 1024;

/// The limits of one architecture that a launch meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArchLimits {
    /// `NN` of `sm_NN`.
    pub arch: u32,
    pub regs_per_sm: usize,
    pub regs_per_block: usize,
    pub max_regs_per_thread: usize,
    pub max_threads_per_block: usize,
    pub max_warps_per_sm: usize,
    pub max_blocks_per_sm: usize,
    /// The largest shared-memory carveout of an SM.
    pub smem_per_sm: usize,
    /// The most shared memory a block may have once the kernel opts in (static and dynamic together).
    pub smem_per_block_optin: usize,
    /// Shared memory the system keeps per resident block (counted against the SM, not the block's limit).
    pub reserved_smem_per_block: usize,
    /// Blocks of a grid along x (the kernels' grids are 1-D).
    pub max_grid_x: usize,
}

const KIB: usize = 1024;

const fn ampere_or_later(
    arch: u32,
    max_warps_per_sm: usize,
    max_blocks_per_sm: usize,
    smem_per_sm: usize,
    smem_per_block_optin: usize,
) -> ArchLimits {
    ArchLimits {
        arch,
        regs_per_sm: 64 * KIB,
        regs_per_block: 64 * KIB,
        max_regs_per_thread: 255,
        max_threads_per_block: 1024,
        max_warps_per_sm,
        max_blocks_per_sm,
        smem_per_sm,
        smem_per_block_optin,
        reserved_smem_per_block: KIB,
        max_grid_x: (1 << 31) - 1,
    }
}

/// The architectures `build.rs` compiles SASS for by default: A100 (8.0), GA10x (8.6), Ada (8.9), H100 (9.0).
pub(crate) static ARCHS: [ArchLimits; 4] = [
    ampere_or_later(80, 64, 32, 164 * KIB, 163 * KIB),
    ampere_or_later(86, 48, 16, 100 * KIB, 99 * KIB),
    ampere_or_later(89, 48, 24, 100 * KIB, 99 * KIB),
    ampere_or_later(90, 64, 32, 228 * KIB, 227 * KIB),
];

const WARP: usize = 32;
/// Registers are given to warps in units of 256, in each of an SM's 4 sub-partitions (`cuda_occupancy.h`).
const REG_ALLOC_UNIT: usize = 256;
const SUB_PARTITIONS: usize = 4;
/// Shared memory is given to blocks in units of 128 bytes.
const SMEM_ALLOC_UNIT: usize = 128;

/// The resources of `{kernel}` (with its dtype suffix) on `arch`, when the build compiled it.
pub(crate) fn resources(kernel: &str, arch: u32) -> Option<&'static KernelResources> {
    KERNEL_RESOURCES.iter().find(|r| r.arch == arch && r.kernel == kernel)
}

/// The dynamic shared memory a kernel with `static_smem` bytes of its own may have: the opt-in ceiling when
/// the launcher raised `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` for it, else the default 48 KiB.
pub(crate) fn dynamic_smem_limit(optin_per_block: usize, static_smem: usize, opted_in: bool) -> usize {
    let ceiling = if opted_in { optin_per_block } else { DEFAULT_SMEM_PER_BLOCK };
    ceiling.saturating_sub(static_smem)
}

fn round_up(x: usize, unit: usize) -> usize {
    x.div_ceil(unit) * unit
}

/// Blocks of `threads` threads with `dynamic_smem` bytes of dynamic shared memory resident on one SM at once
/// (the occupancy formula of `cuda_occupancy.h`, with the largest shared-memory carveout): 0 when one block
/// does not fit.
pub(crate) fn blocks_per_sm(limits: &ArchLimits, res: &KernelResources, threads: usize, dynamic_smem: usize) -> usize {
    let warps = threads.div_ceil(WARP);
    if warps == 0 || res.registers as usize > limits.max_regs_per_thread {
        return 0;
    }
    let by_warps = limits.max_warps_per_sm / warps;
    let regs_per_warp = round_up(res.registers.max(1) as usize * WARP, REG_ALLOC_UNIT);
    let by_regs = if regs_per_warp * warps > limits.regs_per_block {
        0
    } else {
        (limits.regs_per_sm / SUB_PARTITIONS / regs_per_warp) * SUB_PARTITIONS / warps
    };
    let smem = round_up(res.static_smem as usize + dynamic_smem + limits.reserved_smem_per_block, SMEM_ALLOC_UNIT);
    let by_smem = limits.smem_per_sm / smem;
    limits.max_blocks_per_sm.min(by_warps).min(by_regs).min(by_smem)
}

/// Checks one launch of `res` with `threads` threads a block against `limits`, as the driver would accept it:
/// `opted_in` says whether the launcher raised the kernel's dynamic shared-memory attribute, `sm_count` how
/// many SMs a cooperative grid may spread over. The error says which limit the launch breaks.
pub(crate) fn check_launch(
    limits: &ArchLimits,
    res: &KernelResources,
    launch: &Launch,
    threads: usize,
    opted_in: bool,
    sm_count: usize,
) -> Result<(), String> {
    let name = res.kernel;
    let sm = limits.arch;
    if threads == 0 || threads > limits.max_threads_per_block || threads > res.max_threads as usize {
        return Err(format!(
            "{name} on sm_{sm}: {threads} threads a block; its launch bounds allow {} and the GPU {}",
            res.max_threads, limits.max_threads_per_block
        ));
    }
    if res.registers as usize > limits.max_regs_per_thread {
        return Err(format!(
            "{name} on sm_{sm}: {} registers a thread; at most {}",
            res.registers, limits.max_regs_per_thread
        ));
    }
    let block_regs = round_up(res.registers as usize * WARP, REG_ALLOC_UNIT) * threads.div_ceil(WARP);
    if block_regs > limits.regs_per_block || block_regs > limits.regs_per_sm {
        return Err(format!(
            "{name} on sm_{sm}: {threads} threads x {} registers take {block_regs} registers; the register file has {}",
            res.registers,
            limits.regs_per_block.min(limits.regs_per_sm)
        ));
    }
    let smem = res.static_smem as usize + launch.dynamic_smem as usize;
    let smem_limit = if opted_in { limits.smem_per_block_optin } else { DEFAULT_SMEM_PER_BLOCK };
    if smem > smem_limit {
        let why = if opted_in || smem > limits.smem_per_block_optin {
            "the per-block limit"
        } else {
            "the default limit (the launcher does not opt this kernel in)"
        };
        return Err(format!(
            "{name} on sm_{sm}: {smem} bytes of shared memory ({} static + {} dynamic); {why} is {smem_limit}",
            res.static_smem, launch.dynamic_smem
        ));
    }
    if launch.grid == 0 || launch.grid as usize > limits.max_grid_x {
        return Err(format!("{name} on sm_{sm}: a grid of {} blocks; 1 to {}", launch.grid, limits.max_grid_x));
    }
    if launch.cooperative {
        let resident = blocks_per_sm(limits, res, threads, launch.dynamic_smem as usize) * sm_count;
        if launch.grid as usize > resident {
            return Err(format!(
                "{name} on sm_{sm}: a cooperative grid of {} blocks; {resident} are resident at once on {sm_count} SMs",
                launch.grid
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: ArchLimits = ampere_or_later(90, 64, 32, 228 * KIB, 227 * KIB);

    fn kernel(registers: u32, static_smem: u32) -> KernelResources {
        KernelResources { kernel: "k_f32", arch: 90, registers, static_smem, max_threads: 256, spill_bytes: 0 }
    }

    /// Values of NVIDIA's occupancy calculator for 256-thread blocks on compute capability 9.0.
    #[test]
    fn occupancy_matches_the_calculator() {
        // 32 registers: 8 blocks fill the 64 warps.
        assert_eq!(blocks_per_sm(&H100, &kernel(32, 0), 256, 0), 8);
        // 64 registers: 2048 registers a warp, 8 warps a sub-partition, 32 warps: 4 blocks.
        assert_eq!(blocks_per_sm(&H100, &kernel(64, 0), 256, 0), 4);
        // 72 registers round to 2304 a warp: 7 warps a sub-partition, 28 warps: 3 blocks.
        assert_eq!(blocks_per_sm(&H100, &kernel(72, 0), 256, 0), 3);
        // 100 KiB of dynamic shared memory plus 1 KiB reserved: 2 blocks in 228 KiB.
        assert_eq!(blocks_per_sm(&H100, &kernel(32, 0), 256, 100 * KIB), 2);
        // 255 registers: 8192 a warp, 2 warps a sub-partition, 8 warps: one 256-thread block.
        assert_eq!(blocks_per_sm(&H100, &kernel(255, 0), 256, 0), 1);
        assert_eq!(blocks_per_sm(&H100, &kernel(255, 0), 512, 0), 0);
    }

    #[test]
    fn dynamic_limit_without_opt_in_is_48k_less_static() {
        assert_eq!(dynamic_smem_limit(227 * KIB, 8272, false), 48 * KIB - 8272);
        assert_eq!(dynamic_smem_limit(227 * KIB, 8272, true), 227 * KIB - 8272);
    }

    /// The check can fail: each limit broken on its own is reported as that limit.
    #[test]
    fn each_broken_limit_is_reported() {
        let ok = Launch { kernel: "k", grid: 132 * 4, dynamic_smem: 0, cooperative: true };
        let k = kernel(64, 1024);
        assert_eq!(check_launch(&H100, &k, &ok, 256, false, 132), Ok(()));
        let more = Launch { grid: 132 * 4 + 1, ..ok };
        assert!(check_launch(&H100, &k, &more, 256, false, 132).unwrap_err().contains("cooperative grid"));
        let big = Launch { dynamic_smem: 48 * 1024, cooperative: false, ..ok };
        assert!(check_launch(&H100, &k, &big, 256, false, 132).unwrap_err().contains("does not opt this kernel in"));
        assert_eq!(check_launch(&H100, &k, &big, 256, true, 132), Ok(()));
        let huge = Launch { dynamic_smem: 227 * 1024, ..big };
        assert!(check_launch(&H100, &k, &huge, 256, true, 132).unwrap_err().contains("per-block limit"));
        assert!(check_launch(&H100, &kernel(255, 0), &ok, 512, false, 132).unwrap_err().contains("launch bounds"));
        let wide = KernelResources { max_threads: 1024, ..kernel(128, 0) };
        assert!(check_launch(&H100, &wide, &Launch { cooperative: false, ..ok }, 1024, false, 132)
            .unwrap_err()
            .contains("register file"));
        let empty = Launch { grid: 0, ..ok };
        assert!(check_launch(&H100, &k, &empty, 256, false, 132).unwrap_err().contains("grid"));
    }

    /// The build captured every architecture it compiled with the same entry points, and none spills.
    #[test]
    #[cfg(kd_kernels_compiled)]
    fn the_build_captured_the_resources() {
        let names = |arch: u32| {
            let mut n: Vec<&str> = KERNEL_RESOURCES.iter().filter(|r| r.arch == arch).map(|r| r.kernel).collect();
            n.sort();
            n
        };
        let first = KERNEL_RESOURCES.first().expect("a build with kernels has a resource table").arch;
        assert!(names(first).len() >= 20, "sm_{first}: {:?}", names(first));
        for r in KERNEL_RESOURCES {
            assert_eq!(names(r.arch), names(first), "sm_{} and sm_{first} have different entry points", r.arch);
            assert!(ARCHS.iter().any(|l| l.arch == r.arch), "no limits written down for sm_{}", r.arch);
            assert_eq!(r.spill_bytes, 0, "{r:?} spills");
        }
    }
}
