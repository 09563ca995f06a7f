/*
 * Host emulation of exactly the CUDA features the kernels use, so that the kernels' own source runs on a CPU.
 *
 * Why: most machines this crate is developed and tested on have no GPU. Compiling the very same .cu source
 * for the host and running it on the CPU reference's inputs checks the kernels' logic -- indexing, the
 * row/chunk split, the aligned-vector and scalar paths, the warp and block reductions, the "last block
 * done" election, the output flags -- in every CI run. It does not check what only a GPU can show (the
 * memory model across SMs, occupancy, speed): the GPU test suite does that.
 *
 * Model: one launch runs its blocks one after another; within a block every thread is a real OS thread, so
 * __syncthreads is a barrier and warp shuffles exchange through per-warp slots between two barriers.
 * `__shared__` becomes `static`: blocks never overlap, so one copy per kernel instantiation is enough.
 * Floating point: exp2f/log2f/fmaf are the host's (correctly rounded or nearly), the CUDA device versions
 * are within 2 ulp of them, so results agree with the GPU to the tolerance table, not bitwise.
 */
#ifndef KD_KERNELS_CUDA_EMULATION_H
#define KD_KERNELS_CUDA_EMULATION_H

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define CUDART_INF_F INFINITY

struct uint4 {
    unsigned int x, y, z, w;
};

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

namespace kd_emu {
struct BlockContext {
    std::barrier<>* block_barrier;
    std::vector<std::barrier<>*>* warp_barriers;
    double (*slots)[32];  // one exchange slot per lane, per warp
};
inline thread_local BlockContext context;
}  // namespace kd_emu

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

template <typename T> inline T min(T a, T b) { return std::min(a, b); }
template <typename T> inline T max(T a, T b) { return std::max(a, b); }

inline void __syncthreads() { kd_emu::context.block_barrier->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
    return std::atomic_ref<unsigned int>(*address).fetch_add(value);
}

template <typename T> inline T __ldg(const T* p) { return *p; }

inline float __ldcg(const float* p) {
    return std::atomic_ref<float>(*const_cast<float*>(p)).load(std::memory_order_relaxed);
}

// Every lane writes its value, the warp meets, every lane reads its partner's, the warp meets again (so no
// lane overwrites its slot before its partner has read it).
template <typename T> inline T __shfl_xor_sync(unsigned int /*mask*/, T value, int lane_mask) {
    static_assert(sizeof(T) <= sizeof(double), "slot too small");
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    std::memcpy(&kd_emu::context.slots[warp][lane], &value, sizeof(T));
    (*kd_emu::context.warp_barriers)[warp]->arrive_and_wait();
    T other;
    std::memcpy(&other, &kd_emu::context.slots[warp][lane ^ static_cast<unsigned>(lane_mask)], sizeof(T));
    (*kd_emu::context.warp_barriers)[warp]->arrive_and_wait();
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

namespace kd_emu {

// One launch at a time in the whole process: gridDim, blockDim and every `__shared__` (static) variable are
// process-wide, and the test harness calls from several threads.
inline std::mutex launch_mutex;

// Runs `kernel` on a grid of `grid` blocks of `block` threads (1-D), blocks in order.
inline void launch(unsigned int grid, unsigned int block, const std::function<void()>& kernel) {
    const std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex);
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{block, 1, 1};
    std::barrier<> block_barrier(block);
    const unsigned warps = (block + 31) / 32;
    std::vector<std::barrier<>*> warp_barriers;
    for (unsigned w = 0; w < warps; ++w) warp_barriers.push_back(new std::barrier<>(std::min(32u, block - 32 * w)));
    auto slots = std::make_unique<double[][32]>(warps);
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            context = BlockContext{&block_barrier, &warp_barriers, slots.get()};
            threadIdx = dim3{t, 1, 1};
            for (unsigned b = 0; b < grid; ++b) {
                blockIdx = dim3{b, 1, 1};
                kernel();
                block_barrier.arrive_and_wait();  // the next block reuses the static __shared__ variables
            }
        });
    }
    for (auto& th : threads) th.join();
    for (auto* wb : warp_barriers) delete wb;
}

}  // namespace kd_emu

#endif  // KD_KERNELS_CUDA_EMULATION_H
