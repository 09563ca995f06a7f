// The one launcher of the host emulation: runs the registered entry point `name` (see KD_ENTRY in
// common.cuh) on a grid, with the kernel's argument block, as cuLaunchKernel would. build.rs compiles every
// kernels/*.cu with KD_EMULATE next to this file, so a new kernel file needs no launcher of its own.
#include "cuda_emulation.h"
#include "params.h"

// Returns 0, or -1 when no entry point of that name was compiled in.
extern "C" int kd_emu_launch(const char* name, unsigned grid, unsigned resident, unsigned dynamic_smem,
                             const void* args) {
    const auto found = kd_emu::registry().find(name);
    if (found == kd_emu::registry().end()) return -1;
    const kd_emu::EntryPoint entry = found->second;
    kd_emu::launch(grid, KD_BLOCK_THREADS, resident, dynamic_smem, [&] { entry(args); });
    return 0;
}
