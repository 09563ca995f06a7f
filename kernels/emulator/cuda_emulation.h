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
#include <source_location>
#include <unordered_map>
#include <vector>

#include "checks.h"
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

// Failures of the emulator itself (not of a kernel): nothing sensible can go on.
[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "kd-kernels emulator: %s\n", what);
    std::abort();
}

// A barrier of `expected` fibers of one block. The first arrival of a round records where it was called
// from (`kind` at `site`); every other arrival of that round must come from the same call, or the threads
// disagree about which barrier they are at (divergent __syncthreads, a shuffle skipped by some lanes).
struct FiberBarrier {
    unsigned expected = 0, arrived = 0, generation = 0;
    const char* kind = nullptr;
    std::source_location site;
};

// Shadow of one byte of block-shared memory (checks.cpp): the epoch (barrier interval) and thread of its last
// write and of its reads in the last epoch it was read; kMany readers when more than one thread read it.
struct ShadowCell {
    uint32_t write_epoch = 0, read_epoch = 0;
    uint16_t writer = 0, reader = 0;
    static constexpr uint16_t kMany = 0xffff;
};

// A block-shared variable's place in its slot's shared memory (for messages and bounds).
struct SharedVariable {
    const char* name;
    size_t offset, bytes;
};

// One block slot: the fibers of the block it runs, their barriers, the warp shuffle slots and the block's
// shared memory with its shadow. Used by the slot's OS thread alone.
struct BlockContext {
    static constexpr size_t kStack = 64 * 1024;  // per fiber; kernels need a few KiB
    static constexpr size_t kGuard = 4096;        // an inaccessible page below each stack catches overflow
    static constexpr size_t kStaticShared = 48 * 1024;  // the static __shared__ limit of every CUDA GPU

    BlockContext(unsigned threads, unsigned char* shared_memory, size_t dynamic_shared_bytes, size_t shared_limit,
                 const std::function<void()>* kernel);
    ~BlockContext();
    BlockContext(const BlockContext&) = delete;
    BlockContext& operator=(const BlockContext&) = delete;

    unsigned threads;
    unsigned char* stacks = nullptr;
    size_t stacks_bytes = 0;
    std::vector<FiberContext> fibers;
    std::vector<unsigned> shuffle_count;  // per fiber: which of the two shuffle slot sets it uses next
    std::vector<char> done;
    std::vector<FiberBarrier*> waiting;   // per fiber: the barrier it waits at, or null
    std::vector<unsigned> waiting_generation;
    FiberContext home;                    // the slot's OS thread, between blocks
    unsigned current = 0, live = 0;
    uint64_t rng = 0;                     // xorshift state of the fiber scheduler
    FiberBarrier block_barrier;
    std::vector<FiberBarrier> warp_barriers;
    std::vector<std::array<double, 32>> shuffle_slots[2];  // two sets of one exchange slot per lane, per warp
    // Per warp: the operands and result of the warp's last wmma::mma_sync. Every lane holds the whole tile
    // (see WMMA below), so the other 31 lanes of a warp whose fragments are uniform reuse the first lane's
    // product instead of recomputing it: the same bits, a 32nd of the work.
    std::vector<std::vector<float>> mma_memo;
    // Shared memory: [0, kStaticShared) for the static variables, by declaration site, then the dynamic part.
    unsigned char* shared = nullptr;
    size_t static_used = 0, dynamic_bytes = 0, shared_limit = 0;
    std::unordered_map<const void*, size_t> static_offsets;
    std::vector<SharedVariable> static_variables;
    ShadowCell* shadow = nullptr;         // one per byte of `shared`
    uint32_t epoch = 0, block_first_epoch = 0;
    const std::function<void()>* kernel;
};

inline thread_local BlockContext* context = nullptr;

// Leaves the running block: back to the slot's thread, never to resume its fibers (checks.cpp, after a report).
[[noreturn]] inline void abandon_block() {
    BlockContext& b = *context;
    fiber_switch(b.fibers[b.current], b.home);
    fail("an abandoned block was resumed");
}

inline bool runnable(const BlockContext& b, unsigned fiber) {
    return !b.done[fiber] && (b.waiting[fiber] == nullptr || b.waiting[fiber]->generation != b.waiting_generation[fiber]);
}

// The threads of a block that cannot go on: every one waits at a barrier that cannot complete.
std::string describe_deadlock(const BlockContext& b);

// Switches from the running fiber, which waits or is done, to another runnable one chosen pseudo-randomly
// (seeded, see schedule_seed): the kernels must be right in any order their threads reach and leave
// barriers, and a fixed round robin would try only one. With none runnable the block is deadlocked.
inline void switch_to_next_fiber() {
    BlockContext& b = *context;
    const unsigned from = b.current;
    b.rng ^= b.rng << 13;
    b.rng ^= b.rng >> 7;
    b.rng ^= b.rng << 17;
    const unsigned start = static_cast<unsigned>(b.rng % b.threads);
    for (unsigned step = 0; step < b.threads; ++step) {
        const unsigned next = (start + step) % b.threads;
        if (next == from || !runnable(b, next)) continue;
        b.current = next;
        threadIdx.x = next;
        fiber_switch(b.fibers[from], b.fibers[next]);
        return;  // resumed: whoever switched back set current and threadIdx to this fiber
    }
    if (runnable(b, from)) return;
    report_and_abandon(describe_deadlock(b));
}

inline void barrier_wait(FiberBarrier& barrier, const char* kind, const std::source_location& site) {
    if (launch_state != nullptr && launch_state->failed.load(std::memory_order_relaxed)) abandon_block();
    BlockContext& b = *context;
    if (barrier.arrived == 0) {
        barrier.kind = kind;
        barrier.site = site;
    } else if (barrier.kind != kind || barrier.site.line() != site.line() || barrier.site.column() != site.column() ||
               std::strcmp(barrier.site.file_name(), site.file_name()) != 0) {
        report_and_abandon(std::string("threads that must meet reached different calls: ") + barrier.kind + " at " +
                           barrier.site.file_name() + ":" + std::to_string(barrier.site.line()) + " and " + kind +
                           " at " + site.file_name() + ":" + std::to_string(site.line()) +
                           (&barrier == &b.block_barrier ? " (a __syncthreads not reached by every thread of the block)"
                                                         : " (a warp-collective call not reached by every lane of the warp)"));
    }
    const unsigned generation = barrier.generation;
    if (++barrier.arrived == barrier.expected) {
        barrier.arrived = 0;
        ++barrier.generation;
        if (&barrier == &b.block_barrier) ++b.epoch;  // a new barrier interval for the race checks
        return;
    }
    b.waiting[b.current] = &barrier;
    b.waiting_generation[b.current] = generation;
    while (barrier.generation == generation) switch_to_next_fiber();
    b.waiting[b.current] = nullptr;
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

// Prepares the slot's shared memory and shadow for a new block: poisoned (0xff bytes, NaN as floats) and
// unwritten, as a fresh block finds it on a GPU (checks.cpp).
void begin_block_shared(BlockContext& b);

// Runs block `block` on the calling OS thread's slot.
inline void run_block(BlockContext& b, unsigned block, uint64_t seed) {
    blockIdx = dim3{block, 1, 1};
    for (unsigned t = 0; t < b.threads; ++t) {
        fiber_init(b.fibers[t], b.stacks + t * (BlockContext::kStack + BlockContext::kGuard) + BlockContext::kGuard,
                   BlockContext::kStack, &fiber_main, &b);
        b.done[t] = 0;
        b.shuffle_count[t] = 0;
        b.waiting[t] = nullptr;
    }
    b.block_barrier.arrived = 0;
    for (FiberBarrier& w : b.warp_barriers) w.arrived = 0;
    begin_block_shared(b);
    b.live = b.threads;
    b.current = 0;
    b.rng = (0x9e3779b97f4a7c15ull * (block + 1)) ^ seed ^ 0xd1b54a32d192ed03ull;
    if (b.rng == 0) b.rng = 1;
    threadIdx = dim3{0, 1, 1};
    fiber_switch(b.home, b.fibers[0]);
}

// The block's copy of the shared variable declared at `site` (see KD_SHARED below), placed in the slot's
// static shared memory at the first use (checks.cpp): beyond kStaticShared bytes, or beyond the per-block
// limit with the dynamic part, the launch fails as it would on a GPU.
void* static_shared(const void* site, const char* name, size_t bytes, size_t align);
template <typename T> inline T& block_shared(const void* site, const char* name) {
    return *static_cast<T*>(static_shared(site, name, sizeof(T), alignof(T)));
}

inline unsigned char* dynamic_shared() { return context->shared + BlockContext::kStaticShared; }

inline unsigned int load_acquire(const unsigned int* p) {
    return std::atomic_ref<unsigned int>(*const_cast<unsigned int*>(p)).load(std::memory_order_acquire);
}

}  // namespace kd_emu

// Block-shared variables: one copy per running block, as on a GPU (a plain `static` would be one per process).
#define KD_SHARED(type, name)    \
    static char name##_site = 0; \
    type& name = kd_emu::block_shared<type>(&name##_site, #name)
#define KD_SHARED_ARRAY(type, name, len) \
    static char name##_site = 0;         \
    type(&name)[len] = kd_emu::block_shared<type[len]>(&name##_site, #name)
#define KD_DYNAMIC_SHARED(name) unsigned char* name = kd_emu::dynamic_shared()

template <typename T> inline T min(T a, T b) { return std::min(a, b); }
template <typename T> inline T max(T a, T b) { return std::max(a, b); }

inline void __syncthreads(const std::source_location site = std::source_location::current()) {
    kd_emu::barrier_wait(kd_emu::context->block_barrier, "__syncthreads", site);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
// Only thread 0 of a block waiting for other blocks sleeps: let the other slots' OS threads run.
// A failed launch ends the wait: the blocks waited for may have been abandoned.
inline void __nanosleep(unsigned int) {
    if (kd_emu::launch_state != nullptr && kd_emu::launch_state->failed.load(std::memory_order_relaxed)) {
        kd_emu::abandon_block();
    }
    std::this_thread::yield();
}

inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
    return std::atomic_ref<unsigned int>(*address).fetch_add(value);
}

template <typename T> inline T __ldg(const T* p) { return *p; }
// 128-bit accesses fault on a GPU unless 16-byte aligned (x86 would not mind).
inline uint4 __ldg(const uint4* p) {
    kd_emu::check_alignment(p, 16, "16-byte vector load (uint4)");
    return *p;
}
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return uint4{x, y, z, w}; }
inline void __stwb(uint4* p, uint4 v) {
    kd_emu::check_alignment(p, 16, "16-byte vector store (uint4)");
    *p = v;
}
inline void __trap() { kd_emu::report_and_abandon("__trap() in a kernel"); }

// Loads of values other blocks wrote: atomic here, so that the emulation has no data race where the GPU
// relies on its memory model (a fence before the writer's ticket, an acquiring read of the ticket).
template <typename T> inline T __ldcg(const T* p) {
    return std::atomic_ref<T>(*const_cast<T*>(p)).load(std::memory_order_relaxed);
}

// Every lane writes its value, the warp meets, every lane reads its partner's. Consecutive shuffles use
// alternate slot sets, so a lane cannot overwrite a value its partner has yet to read: before writing the
// same set again it passes the next shuffle's meeting, which its partner reaches only after reading.
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T value, int lane_mask,
                         const std::source_location site = std::source_location::current()) {
    static_assert(sizeof(T) <= sizeof(double), "slot too small");
    if (mask != 0xffffffffu) kd_emu::report_and_abandon("__shfl_xor_sync with a partial mask: every lane must take part");
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    kd_emu::BlockContext& b = *kd_emu::context;
    auto& slots = b.shuffle_slots[b.shuffle_count[threadIdx.x]++ & 1u][warp];
    std::memcpy(&slots[lane], &value, sizeof(T));
    kd_emu::barrier_wait(b.warp_barriers[warp], "__shfl_xor_sync", site);
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


// ---- WMMA (nvcuda::wmma): the tensor-core tiles of the kernels that use them ----
// On a GPU a fragment is spread over the warp's 32 lanes in an unspecified layout. Here every lane holds the
// whole tile, and the collective operations compute all of it in every lane: a kernel that only loads,
// multiplies and stores fragments (never indexes their elements) computes the same tile either way. Loads,
// products and stores are warp meetings, as on the GPU, so a lane that skips one while its warp calls it
// fails here. mma_sync models the tensor cores' truncating group sums (see mma_sync).
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

inline void warp_meeting(const char* kind, const std::source_location& site) {
    kd_emu::BlockContext& b = *kd_emu::context;
    kd_emu::barrier_wait(b.warp_barriers[threadIdx.x >> 5], kind, site);
}

// WMMA's memory operands: 256-bit aligned, and a leading dimension that is a multiple of 16 bytes (8
// 16-bit elements, 4 floats), or the instruction faults (CUDA C++ Programming Guide, "Warp Matrix Functions").
template <typename T> inline void check_wmma_operand(const T* p, unsigned ldm, const char* what) {
    kd_emu::check_alignment(p, 32, what);
    if ((static_cast<size_t>(ldm) * sizeof(T)) % 16 != 0) {
        kd_emu::report_and_abandon(std::string(what) + ": leading dimension " + std::to_string(ldm) +
                                   " is not a multiple of 16 bytes");
    }
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float value) {
    for (float& x : f.v) x = value;
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm,
                             const std::source_location site = std::source_location::current()) {
    using F = fragment<Use, M, N, K, T, Layout>;
    static_assert((F::rows * F::cols) % 32 == 0, "a tile is shared evenly by the lanes");
    check_wmma_operand(p, ldm, "wmma::load_matrix_sync");
    constexpr bool column_major = std::is_same_v<Layout, col_major>;
    // Every lane needs the whole tile, but on a GPU each lane reads only the elements its registers hold: the
    // checks (bounds, initcheck, racecheck) see this lane read its share (as store_matrix_sync writes it),
    // and the rest arrives unchecked, a 32nd of the checking work (the shares cover the tile between them).
    constexpr int lines = column_major ? F::cols : F::rows, line = column_major ? F::rows : F::cols;
    T tile[F::rows * F::cols];
    for (int l = 0; l < lines; ++l) kd_emu::copy_unchecked(tile + l * line, p + l * ldm, sizeof(T) * line);
    constexpr int share = F::rows * F::cols / 32;
    const int lane = static_cast<int>(threadIdx.x & 31u);
    for (int e = lane * share; e < (lane + 1) * share; ++e) tile[e] = p[(e / line) * ldm + e % line];
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c)
            f.v[r * F::cols + c] = element_to_float(column_major ? tile[c * line + r] : tile[r * line + c]);
    warp_meeting("wmma::load_matrix_sync", site);
}

// c + the products of one group, rounded toward zero to fp32 (see mma_sync). The products of 16-bit floats
// are exact in double and the group's sum nearly so (exact up to 2^-53 relative).
inline float add_group_truncated(float c, const double* products, int count) {
    double s = c;
    for (int k = 0; k < count; ++k) s += products[k];
    float r = static_cast<float>(s);
    if (std::fabs(static_cast<double>(r)) > std::fabs(s)) r = std::nextafter(r, 0.f);
    return r;
}

// D = A B + C. Two rounding models (docs/emulation.md):
//  * truncate (default, KD_EMU_MMA unset or `truncate`): the products are added to the accumulator in groups
//    of kMmaGroup, in k order, each group's sum with the accumulator rounded toward zero to fp32. This is the
//    behaviour measured on V100/T4/A100 tensor cores by Fasi, Higham, Mikaitis and Pranesh, "Numerical
//    behavior of NVIDIA tensor cores", PeerJ Computer Science 7:e330 (2021): products exact, the addends of a
//    group aligned and added without rounding, the result truncated (their groups are 4 products on V100 and
//    8 on A100; 4 truncates more often, so it is the stricter test of a kernel's tolerance).
//  * exact (KD_EMU_MMA=exact): every product added in k order, rounded to nearest (fp32 FMA chain).
inline constexpr int kMmaGroup = 4;

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, float>& c,
                     const std::source_location site = std::source_location::current()) {
    // The memo holds [A | B | C | D] of the warp's last product; a lane whose operands equal them bit for bit
    // gets the same D (mma_sync is a function of those bits), any other lane computes its own.
    constexpr size_t na = M * K, nb = K * N, nc = M * N;
    std::vector<float>& memo = kd_emu::context->mma_memo[threadIdx.x >> 5];
    if (memo.size() == na + nb + 2 * nc && std::memcmp(memo.data(), a.v, sizeof a.v) == 0 &&
        std::memcmp(memo.data() + na, b.v, sizeof b.v) == 0 && std::memcmp(memo.data() + na + nb, c.v, sizeof c.v) == 0) {
        std::memcpy(d.v, memo.data() + na + nb + nc, sizeof d.v);
        warp_meeting("wmma::mma_sync", site);
        return;
    }
    memo.resize(na + nb + 2 * nc);
    std::memcpy(memo.data(), a.v, sizeof a.v);
    std::memcpy(memo.data() + na, b.v, sizeof b.v);
    std::memcpy(memo.data() + na + nb, c.v, sizeof c.v);
    float out[M * N];
    const bool truncate = kd_emu::mma_truncates();
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float s = c.v[i * N + j];
            if (truncate) {
                for (int k0 = 0; k0 < K; k0 += kMmaGroup) {
                    double products[kMmaGroup];
                    const int count = std::min(kMmaGroup, K - k0);
                    for (int k = 0; k < count; ++k)
                        products[k] = static_cast<double>(a.v[i * K + k0 + k]) * b.v[(k0 + k) * N + j];
                    s = add_group_truncated(s, products, count);
                }
            } else {
                // A product of two 16-bit floats is exact in float, so this is a chain of fused multiply-adds.
                for (int k = 0; k < K; ++k) s += a.v[i * K + k] * b.v[k * N + j];
            }
            out[i * N + j] = s;
        }
    std::memcpy(d.v, out, sizeof out);
    std::memcpy(memo.data() + na + nb + nc, out, sizeof out);
    warp_meeting("wmma::mma_sync", site);
}

// Each lane stores its own share of the tile (M * N / 32 consecutive elements in row-major order), as the
// lanes of a GPU warp store the elements their registers hold: the race checks see each element written
// once, by one lane.
template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout,
                              const std::source_location site = std::source_location::current()) {
    static_assert((M * N) % 32 == 0, "a tile is shared evenly by the lanes");
    check_wmma_operand(p, ldm, "wmma::store_matrix_sync");
    constexpr int share = M * N / 32;
    const int lane = static_cast<int>(threadIdx.x & 31u);
    for (int e = lane * share; e < (lane + 1) * share; ++e) {
        const int r = e / N, c = e % N;
        (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.v[e];
    }
    warp_meeting("wmma::store_matrix_sync", site);
}
}  // namespace wmma
}  // namespace nvcuda

namespace kd_emu {

// Every entry point of every kernel file registers itself here under the name the CUDA driver would use
// (`cwd_fused_f32`, ...): KD_ENTRY (common.cuh) declares the registration, so no launcher is written by hand.
// With it go the size of the argument block and how many of its leading 8-byte words are device addresses
// (the launch rewrites those to the buffers' copies, see checks.h).
using EntryPoint = void (*)(const void* args);

struct Entry {
    EntryPoint run;
    size_t args_bytes;
    size_t address_words;
};

inline std::unordered_map<std::string, Entry>& registry() {
    static std::unordered_map<std::string, Entry> entries;  // built before main, by static initialisers
    return entries;
}

// The leading device addresses of an argument block: every family's header puts them first, before the
// parameter block `p`; the two blocks without one are all addresses up to their first non-address field.
template <typename Args> constexpr size_t address_words() {
    if constexpr (requires(Args a) { a.p; }) {
        return offsetof(Args, p) / sizeof(uint64_t);
    } else if constexpr (requires(Args a) { a.planes; }) {
        return offsetof(Args, planes) / sizeof(uint64_t);  // KdPoolArgs
    } else {
        return offsetof(Args, wa) / sizeof(uint64_t);  // KdIcsdMixArgs
    }
}

struct Registration {
    Registration(const char* name, EntryPoint run, size_t args_bytes, size_t address_words) {
        if (!registry().emplace(name, Entry{run, args_bytes, address_words}).second) {
            fail("an entry point is registered twice");
        }
    }
};

}  // namespace kd_emu

#endif  // KD_KERNELS_CUDA_EMULATION_H
