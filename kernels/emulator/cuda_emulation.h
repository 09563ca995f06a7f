/*
 * Host emulation of exactly the CUDA features the kernels use, so that the kernels' own source runs on a CPU.
 *
 * Why: most machines this crate is developed and tested on have no GPU. Compiling the very same .cu source
 * for the host and running it on the CPU reference's inputs checks the kernels' logic -- indexing, the
 * row/chunk split, the aligned-vector and scalar paths, the warp and block reductions, the "last block
 * done" election, the blocks of one row waiting for each other in the single-pass CWD kernel, the output
 * flags -- in every CI run. It does not check what only a GPU can show (the memory model across SMs,
 * occupancy, speed): the GPU test suite does that.
 *
 * Model: a launch has `resident` block slots that run at once, each on its own OS thread, like the SMs of a
 * GPU; slot s runs blocks s, s + resident, ... one after another (a schedule a GPU may also choose). A
 * cooperative launch passes resident = grid, so every block runs at once and blocks may wait for each
 * other. Within a block the threads are fibers (fibers.h) that switch where a CUDA thread waits for
 * others: __syncthreads is a barrier of the block's fibers, a warp shuffle one of the warp's 32, through
 * per-warp exchange slots. Block-shared variables (KD_SHARED, KD_SHARED_ARRAY, KD_DYNAMIC_SHARED in
 * common.cuh) live in the slot's context, one copy per declaration, filled with 0xff bytes (NaN as floats)
 * when first used so that a read before any write shows.
 * Floating point: exp2f/log2f/fmaf are the host's (correctly rounded or nearly), the CUDA device versions
 * are within 2 ulp of them, so results agree with the GPU to the tolerance table, not bitwise.
 */
#ifndef KD_KERNELS_CUDA_EMULATION_H
#define KD_KERNELS_CUDA_EMULATION_H

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "fibers.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define CUDART_INF_F INFINITY

struct uint4 {
    unsigned int x, y, z, w;
};

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;  // per OS thread = per block slot; switched with the running fiber
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace kd_emu {

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "kd-kernels emulator: %s\n", what);
    std::abort();
}

// A barrier of `expected` fibers of one block.
struct FiberBarrier {
    unsigned expected = 0, arrived = 0, generation = 0;
};

// One block slot: the fibers of the block it runs, their barriers, the warp shuffle slots and the
// block-shared variables. Used by the slot's OS thread alone.
struct BlockContext {
    static constexpr size_t kStack = 64 * 1024;  // per fiber; kernels need a few KiB
    static constexpr size_t kGuard = 4096;        // an inaccessible page below each stack catches overflow

    BlockContext(unsigned threads, size_t dynamic_shared_bytes, const std::function<void()>* kernel)
        : threads(threads), fibers(threads), shuffle_count(threads), done(threads),
          dynamic_shared(dynamic_shared_bytes + 16, 0xff), kernel(kernel) {
        stacks_bytes = threads * (kStack + kGuard);
        void* p = mmap(nullptr, stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) fail("mmap of the fiber stacks failed");
        stacks = static_cast<unsigned char*>(p);
        for (unsigned t = 0; t < threads; ++t) {
            if (mprotect(stacks + t * (kStack + kGuard), kGuard, PROT_NONE) != 0) fail("mprotect of a guard page failed");
        }
        block_barrier.expected = threads;
        for (unsigned first = 0; first < threads; first += 32) warp_barriers.push_back({std::min(32u, threads - first), 0, 0});
        for (auto& set : shuffle_slots) set.resize(warp_barriers.size());
    }
    ~BlockContext() { munmap(stacks, stacks_bytes); }
    BlockContext(const BlockContext&) = delete;
    BlockContext& operator=(const BlockContext&) = delete;

    unsigned threads;
    unsigned char* stacks = nullptr;
    size_t stacks_bytes = 0;
    std::vector<FiberContext> fibers;
    std::vector<unsigned> shuffle_count;  // per fiber: which of the two shuffle slot sets it uses next
    std::vector<char> done;
    FiberContext home;                    // the slot's OS thread, between blocks
    unsigned current = 0, live = 0;
    uint64_t rng = 0;                     // xorshift state of the fiber scheduler
    FiberBarrier block_barrier;
    std::vector<FiberBarrier> warp_barriers;
    std::vector<std::array<double, 32>> shuffle_slots[2];  // two sets of one exchange slot per lane, per warp
    std::unordered_map<const void*, std::unique_ptr<unsigned char[]>> shared;  // by declaration site
    std::vector<unsigned char> dynamic_shared;
    const std::function<void()>* kernel;
};

inline thread_local BlockContext* context = nullptr;

// Switches from the running fiber to another one not done, chosen pseudo-randomly: the kernels must be
// right in any order their threads reach and leave barriers, and a fixed round robin would try only one.
inline void switch_to_next_fiber() {
    BlockContext& b = *context;
    const unsigned from = b.current;
    b.rng ^= b.rng << 13;
    b.rng ^= b.rng >> 7;
    b.rng ^= b.rng << 17;
    const unsigned start = static_cast<unsigned>(b.rng % b.threads);
    for (unsigned step = 0; step < b.threads; ++step) {
        const unsigned next = (start + step) % b.threads;
        if (next == from) continue;
        if (!b.done[next]) {
            b.current = next;
            threadIdx.x = next;
            fiber_switch(b.fibers[from], b.fibers[next]);
            return;  // resumed: whoever switched back set current and threadIdx to this fiber
        }
    }
    fail("a thread waits at a barrier that every other thread of its block has left: divergent __syncthreads?");
}

inline void barrier_wait(FiberBarrier& barrier) {
    const unsigned generation = barrier.generation;
    if (++barrier.arrived == barrier.expected) {
        barrier.arrived = 0;
        ++barrier.generation;
        return;
    }
    uint64_t switches = 0;
    while (barrier.generation == generation) {
        switch_to_next_fiber();
        if (++switches > (uint64_t{1} << 32)) fail("a block is stuck at a barrier");
    }
}

// Runs the kernel in one fiber, then hands over to the next fiber not done, or back to the slot's thread.
inline void fiber_main(void* arg) {
    BlockContext& b = *static_cast<BlockContext*>(arg);
    (*b.kernel)();
    const unsigned self = b.current;
    b.done[self] = 1;
    if (--b.live == 0) {
        fiber_switch(b.fibers[self], b.home);
    } else {
        switch_to_next_fiber();
    }
    fail("a finished fiber was resumed");
}

// Runs block `block` on the calling OS thread's slot.
inline void run_block(BlockContext& b, unsigned block) {
    blockIdx = dim3{block, 1, 1};
    for (unsigned t = 0; t < b.threads; ++t) {
        fiber_init(b.fibers[t], b.stacks + t * (BlockContext::kStack + BlockContext::kGuard) + BlockContext::kGuard,
                   BlockContext::kStack, &fiber_main, &b);
        b.done[t] = 0;
        b.shuffle_count[t] = 0;
    }
    b.live = b.threads;
    b.current = 0;
    b.rng = 0x9e3779b97f4a7c15ull * (block + 1) ^ 0xd1b54a32d192ed03ull;  // a fixed schedule per block
    threadIdx = dim3{0, 1, 1};
    fiber_switch(b.home, b.fibers[0]);
}

// The block's copy of the shared variable declared at `site` (see KD_SHARED below).
template <typename T> inline T& block_shared(const void* site) {
    std::unique_ptr<unsigned char[]>& storage = context->shared[site];
    constexpr size_t bytes = sizeof(T) + std::max(alignof(T), alignof(std::max_align_t));
    if (!storage) {
        storage = std::make_unique<unsigned char[]>(bytes);
        std::memset(storage.get(), 0xff, bytes);
    }
    void* p = storage.get();
    size_t space = bytes;
    return *static_cast<T*>(std::align(alignof(T), sizeof(T), p, space));
}

inline unsigned char* dynamic_shared() {
    unsigned char* base = context->dynamic_shared.data();
    return base + (16 - reinterpret_cast<uintptr_t>(base) % 16) % 16;
}

inline unsigned int load_acquire(const unsigned int* p) {
    return std::atomic_ref<unsigned int>(*const_cast<unsigned int*>(p)).load(std::memory_order_acquire);
}

}  // namespace kd_emu

// Block-shared variables: one copy per running block, as on a GPU (a plain `static` would be one per process).
#define KD_SHARED(type, name)    \
    static char name##_site = 0; \
    type& name = kd_emu::block_shared<type>(&name##_site)
#define KD_SHARED_ARRAY(type, name, len) \
    static char name##_site = 0;         \
    type(&name)[len] = kd_emu::block_shared<type[len]>(&name##_site)
#define KD_DYNAMIC_SHARED(name) unsigned char* name = kd_emu::dynamic_shared()

template <typename T> inline T min(T a, T b) { return std::min(a, b); }
template <typename T> inline T max(T a, T b) { return std::max(a, b); }

inline void __syncthreads() { kd_emu::barrier_wait(kd_emu::context->block_barrier); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
// Only thread 0 of a block waiting for other blocks sleeps: let the other slots' OS threads run.
inline void __nanosleep(unsigned int) { std::this_thread::yield(); }

inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
    return std::atomic_ref<unsigned int>(*address).fetch_add(value);
}

template <typename T> inline T __ldg(const T* p) { return *p; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return uint4{x, y, z, w}; }
inline void __stwb(uint4* p, uint4 v) { *p = v; }
[[noreturn]] inline void __trap() { kd_emu::fail("__trap() in a kernel"); }

// Loads of values other blocks wrote: atomic here, so that the emulation has no data race where the GPU
// relies on its memory model (a fence before the writer's ticket, an acquiring read of the ticket).
template <typename T> inline T __ldcg(const T* p) {
    return std::atomic_ref<T>(*const_cast<T*>(p)).load(std::memory_order_relaxed);
}

// Every lane writes its value, the warp meets, every lane reads its partner's. Consecutive shuffles use
// alternate slot sets, so a lane cannot overwrite a value its partner has yet to read: before writing the
// same set again it passes the next shuffle's meeting, which its partner reaches only after reading.
template <typename T> inline T __shfl_xor_sync(unsigned int /*mask*/, T value, int lane_mask) {
    static_assert(sizeof(T) <= sizeof(double), "slot too small");
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    kd_emu::BlockContext& b = *kd_emu::context;
    auto& slots = b.shuffle_slots[b.shuffle_count[threadIdx.x]++ & 1u][warp];
    std::memcpy(&slots[lane], &value, sizeof(T));
    kd_emu::barrier_wait(b.warp_barriers[warp]);
    T other;
    std::memcpy(&other, &slots[lane ^ static_cast<unsigned>(lane_mask)], sizeof(T));
    return other;
}

// ---- 16-bit floats, rounded to nearest even as __float2half_rn / __float2bfloat16_rn do ----

struct __half {
    _Float16 value;
};

struct __nv_bfloat16 {
    uint16_t bits;
};

inline float __half2float(__half h) { return static_cast<float>(h.value); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }

inline float __bfloat162float(__nv_bfloat16 b) {
    const uint32_t bits = static_cast<uint32_t>(b.bits) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    if (std::isnan(f)) return __nv_bfloat16{static_cast<uint16_t>((bits >> 16) | 0x40u)};
    const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return __nv_bfloat16{static_cast<uint16_t>((bits + rounding) >> 16)};
}

template <typename To, typename From> inline To kd_emu_bit_cast(From from) {
    static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
    To to;
    std::memcpy(&to, &from, sizeof to);
    return to;
}
inline unsigned int __float_as_uint(float f) { return kd_emu_bit_cast<unsigned int>(f); }
inline float __uint_as_float(unsigned int u) { return kd_emu_bit_cast<float>(u); }
inline unsigned short __half_as_ushort(__half h) { return kd_emu_bit_cast<unsigned short>(h); }
inline __half __ushort_as_half(unsigned short u) { return kd_emu_bit_cast<__half>(u); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }


// ---- WMMA (nvcuda::wmma), the tensor-core tiles of cwt.cu ----
// On a GPU a fragment is spread over the warp's 32 lanes in an unspecified layout. Here every lane holds the
// whole tile, and the collective operations compute all of it in every lane: a kernel that only loads,
// multiplies and stores fragments (never indexes their elements) computes the same tile either way. Loads
// and stores are warp meetings, as on the GPU, so a lane that skips one while its warp calls it fails here.
// mma_sync adds the products in k order in fp32; a tensor core adds them in its own order, so results agree
// with the GPU to rounding, not bitwise.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K> struct FragmentShape;
template <int M, int N, int K> struct FragmentShape<matrix_a, M, N, K> {
    static constexpr int rows = M, cols = K;
};
template <int M, int N, int K> struct FragmentShape<matrix_b, M, N, K> {
    static constexpr int rows = K, cols = N;
};
template <int M, int N, int K> struct FragmentShape<accumulator, M, N, K> {
    static constexpr int rows = M, cols = N;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static constexpr int rows = FragmentShape<Use, M, N, K>::rows, cols = FragmentShape<Use, M, N, K>::cols;
    float v[rows * cols];  // row-major; 16-bit elements are exact in float
};

inline float element_to_float(float x) { return x; }
inline float element_to_float(__half x) { return __half2float(x); }
inline float element_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

inline void warp_meeting() {
    kd_emu::BlockContext& b = *kd_emu::context;
    kd_emu::barrier_wait(b.warp_barriers[threadIdx.x >> 5]);
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float value) {
    for (float& x : f.v) x = value;
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
    using F = fragment<Use, M, N, K, T, Layout>;
    constexpr bool column_major = std::is_same_v<Layout, col_major>;
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c)
            f.v[r * F::cols + c] = element_to_float(column_major ? p[c * ldm + r] : p[r * ldm + c]);
    warp_meeting();
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
    float out[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float s = c.v[i * N + j];
            // A product of two 16-bit floats is exact in float, so this is the fused multiply-add a tensor
            // core does, without the cost of a software fmaf on hosts built without FMA.
            for (int k = 0; k < K; ++k) s += a.v[i * K + k] * b.v[k * N + j];
            out[i * N + j] = s;
        }
    std::memcpy(d.v, out, sizeof out);
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
    for (int r = 0; r < M; ++r)
        for (int c = 0; c < N; ++c) (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.v[r * N + c];
    warp_meeting();
}
}  // namespace wmma
}  // namespace nvcuda

namespace kd_emu {

// Every entry point of every kernel file registers itself here under the name the CUDA driver would use
// (`cwd_fused_f32`, ...): KD_ENTRY (common.cuh) declares the registration, so no launcher is written by hand.
using EntryPoint = void (*)(const void* args);

inline std::unordered_map<std::string, EntryPoint>& registry() {
    static std::unordered_map<std::string, EntryPoint> entries;  // built before main, by static initialisers
    return entries;
}

struct Registration {
    Registration(const char* name, EntryPoint entry) {
        if (!registry().emplace(name, entry).second) fail("an entry point is registered twice");
    }
};

// One launch at a time in the whole process: gridDim and blockDim are process-wide, and the test harness
// calls from several threads.
inline std::mutex launch_mutex;

// Runs `kernel` on a grid of `grid` blocks of `block` threads (1-D), `resident` blocks at a time (see the
// model above), each block with `dynamic_shared_bytes` of KD_DYNAMIC_SHARED memory.
inline void launch(unsigned int grid, unsigned int block, unsigned int resident, size_t dynamic_shared_bytes,
                   const std::function<void()>& kernel) {
    const std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex);
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{block, 1, 1};
    const unsigned slots = std::max(1u, std::min(resident, grid));
    std::vector<std::thread> threads;
    threads.reserve(slots);
    for (unsigned s = 0; s < slots; ++s) {
        threads.emplace_back([=, &kernel] {
            BlockContext slot(block, dynamic_shared_bytes, &kernel);
            context = &slot;
            for (unsigned b = s; b < grid; b += slots) run_block(slot, b);
            context = nullptr;
        });
    }
    for (auto& t : threads) t.join();
}

}  // namespace kd_emu

#endif  // KD_KERNELS_CUDA_EMULATION_H
