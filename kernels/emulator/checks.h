/*
 * The checks of the host emulation: what compute-sanitizer's memcheck, racecheck, initcheck and synccheck
 * would report on a GPU, reported here by every emulated launch (docs/emulation.md).
 *
 * Why here and how: the kernels reach memory through raw pointers (`const T* x = kd::ptr<const T>(...)`), so
 * no wrapper type can see their accesses without changing the .cu source. Instead build.rs compiles the .cu
 * files with GCC's kernel-address sanitizer instrumentation in its out-of-line form
 * (`-fsanitize=kernel-address --param asan-instrumentation-with-call-threshold=0`): every load and store of
 * the kernels' code calls `__asan_load4_noabort(address)` and the like, which checks.cpp defines (no sanitizer
 * runtime is linked). That is the single choke point: an access is classified by its address alone --
 *  * in the launch's global arena: the launch copies every registered host buffer (registry below) into an
 *    arena of its own, each buffer between red zones, and rewrites the argument block's addresses to the
 *    copies, so an access there is checked against the buffer's bounds, its kind (inputs are read-only) and,
 *    for workspace, whether something wrote the bytes since the call prepared it (initcheck);
 *  * in the running block's shared memory: checked against the declared variables and a shadow cell per byte
 *    (last writer, readers, barrier epoch: racecheck and initcheck);
 *  * anywhere else (registers spilled to the fiber stacks, the argument block, the emulator's own state): not
 *    checked.
 * Vector and WMMA accesses check their alignment where the emulation implements them (cuda_emulation.h).
 * A failed check records one message (the first), and the block that failed is abandoned; the launch returns
 * it to Rust as an error.
 */
#ifndef KD_KERNELS_EMULATOR_CHECKS_H
#define KD_KERNELS_EMULATOR_CHECKS_H

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace kd_emu {

// What a buffer holds, as the Rust side registers it (src/emulator/checks.rs mirrors these values).
enum class BufferKind : int {
    input = 0,      // read-only for the kernels
    output = 1,     // written by the kernels, initialised by the host (NaN sentinels or gradients to add to)
    workspace = 2,  // scratch: every byte must be written by a kernel of the call before any kernel reads it
    counters = 3,   // zeroed by the host, left at zero by every kernel
};

// A host buffer of the running call, and its copy in the running launch's arena.
struct Buffer {
    std::string name;
    uintptr_t host = 0;
    size_t bytes = 0;
    BufferKind kind = BufferKind::input;
    std::vector<uint8_t> written;  // workspace: per byte, written by a kernel since the call registered it
    uintptr_t device = 0;          // the copy's address during a launch
};

// The registered buffers of the calling thread's call (one emulated call runs on one Rust thread).
std::vector<Buffer>& registered_buffers();

// The launch in flight (one at a time in the process: launch.cpp).
struct LaunchState {
    std::string kernel;
    std::vector<Buffer*> buffers;  // by device address
    unsigned char* arena = nullptr;
    size_t arena_bytes = 0;
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    std::string error;
};
inline LaunchState* launch_state = nullptr;
// The address ranges the access hooks classify by: the global arena and the union of the slots' shared memory.
inline uintptr_t global_lo = 0, global_size = 0, shared_lo = 0, shared_size = 0;

// Records `message` as the launch's error when it is the first, prefixed with the kernel, block and thread.
void report(const std::string& message);
// report(), then leaves the running block (when called from one of its threads) so that nothing more of it runs.
void report_and_abandon(const std::string& message);
// Where `address` lies, for messages: "offset 12 of buffer 'student' (4096 bytes)" or "shared variable ...".
std::string describe(uintptr_t address);
// The seed of the fiber schedules: KD_EMU_SEED, or drawn once per process (every error message names it).
uint64_t schedule_seed();

// Fails the access unless `address` is a multiple of `align` (vector and WMMA accesses).
void check_alignment(const void* address, size_t align, const char* what);

// memcpy with no check (this file is compiled without the hooks): for the emulation's own copies of data whose
// accesses it checks another way (wmma::load_matrix_sync: each lane checks its share of the tile).
void copy_unchecked(void* to, const void* from, size_t bytes);

// Tensor-core rounding of the emulated mma_sync (docs/emulation.md): KD_EMU_MMA=exact or truncate (default).
bool mma_truncates();

}  // namespace kd_emu

#endif  // KD_KERNELS_EMULATOR_CHECKS_H
