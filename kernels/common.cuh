/*
 * Helpers shared by every kernel family: dtype load/store, 128-bit vector access, the softmax conventions,
 * and deterministic block reductions.
 *
 * Every kernel computes in fp32 (sums of exponentials in double) whatever the storage dtype (f32, f16, bf16):
 * loads upcast, stores round to nearest. Reductions use a fixed tree (warp butterflies, then one warp over the
 * warp results), never order-dependent float atomics, so a launch with the same grid gives bitwise identical
 * results run to run.
 */
#ifndef KD_KERNELS_COMMON_CUH
#define KD_KERNELS_COMMON_CUH

#ifdef KD_EMULATE
#include "emulator/cuda_emulation.h"  // the same source, run on the host by the tests (see that file)
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>
// Block-shared memory is declared through these, so that the host emulation can give every concurrently
// running block its own copy (a `__shared__` variable becomes per-block state there, see cuda_emulation.h).
#define KD_SHARED(type, name) __shared__ type name
#define KD_SHARED_ARRAY(type, name, len) __shared__ type name[len]
#define KD_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif
#include <stdint.h>

#include "params.h"

namespace kd {

constexpr int kBlockThreads = KD_BLOCK_THREADS;
constexpr int kWarps = kBlockThreads / 32;
constexpr float kLn2 = 0.693147180559945309f;

// ---------------------------------------------------------------------------------------------------------
// dtype conversion

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// ---------------------------------------------------------------------------------------------------------
// 128-bit vector access: 4 f32 or 8 f16/bf16 per load, the widest single transaction a thread can issue.

template <typename T> struct Vec {
    static constexpr int kLen = 16 / sizeof(T);
};

template <typename T>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, float (&out)[Vec<T>::kLen]) {
    // Inputs are read once or twice per launch and never written: the non-coherent path is legal.
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < Vec<T>::kLen; ++i) out[i] = to_float(e[i]);
}


// The bits of an element, to move it through integer registers.
template <typename T> struct Bits;
template <> struct Bits<float> {
    __device__ __forceinline__ static unsigned int of(float x) { return __float_as_uint(x); }
    __device__ __forceinline__ static float from(unsigned int u) { return __uint_as_float(u); }
};
template <> struct Bits<__half> {
    __device__ __forceinline__ static unsigned int of(__half x) { return __half_as_ushort(x); }
    __device__ __forceinline__ static __half from(unsigned int u) {
        return __ushort_as_half(static_cast<unsigned short>(u));
    }
};
template <> struct Bits<__nv_bfloat16> {
    __device__ __forceinline__ static unsigned int of(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
    __device__ __forceinline__ static __nv_bfloat16 from(unsigned int u) {
        return __ushort_as_bfloat16(static_cast<unsigned short>(u));
    }
};

// Sixteen bytes of elements kept in registers (the single-pass kernels hold their data this way), as four
// 32-bit words, so that element access is shifts and moves: taking a T* into a uint4 of 16-bit values would
// send it to local memory. Indices must be compile-time constants after unrolling.
template <typename T> struct Packed {
    static constexpr int kLen = Vec<T>::kLen;
    static constexpr int kPerWord = 4 / static_cast<int>(sizeof(T));
    unsigned int w[4];

    __device__ __forceinline__ static Packed zero() { return {{0u, 0u, 0u, 0u}}; }
    // An aligned 16-byte load through the read-only path (inputs are never written by the kernels).
    __device__ __forceinline__ static Packed load(const T* p) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
        return {{raw.x, raw.y, raw.z, raw.w}};
    }
    // An aligned 16-byte store. Through the intrinsic, because a plain uint4 assignment that shares its block
    // with a scalar alternative gets split into four 32-bit stores (seen in the PTX of cwd_fused).
    __device__ __forceinline__ void store(T* p) const {
        __stwb(reinterpret_cast<uint4*>(p), make_uint4(w[0], w[1], w[2], w[3]));
    }
    __device__ __forceinline__ float get(int i) const {
        if constexpr (kPerWord == 1) {
            return to_float(Bits<T>::from(w[i]));
        } else {
            return to_float(Bits<T>::from(w[i / 2] >> (16 * (i % 2))));
        }
    }
    __device__ __forceinline__ void set(int i, T x) {
        if constexpr (kPerWord == 1) {
            w[i] = Bits<T>::of(x);
        } else {
            w[i / 2] = (w[i / 2] & (0xffff0000u >> (16 * (i % 2)))) | (Bits<T>::of(x) << (16 * (i % 2)));
        }
    }
};

template <typename T>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const float (&in)[Vec<T>::kLen]) {
    Packed<T> out = Packed<T>::zero();
#pragma unroll
    for (int i = 0; i < Vec<T>::kLen; ++i) out.set(i, from_float<T>(in[i]));
    out.store(p);
}

// Gradient stores honour KD_ACCUMULATE_GRAD: with it, the value already in the buffer is read (a plain
// load: the buffer is written by this kernel, so the read-only path is not legal) and the new one added
// in fp32 before rounding to T once.
template <typename T> __device__ __forceinline__ void store_grad(T* p, float g, bool accumulate) {
    *p = from_float<T>(accumulate ? to_float(*p) + g : g);
}

template <typename T>
__device__ __forceinline__ void store_grad_vec(T* __restrict__ p, float (&g)[Vec<T>::kLen], bool accumulate) {
    if (accumulate) {
#ifdef KD_EMULATE
        kd_emu::check_alignment(p, 16, "16-byte vector load (uint4)");
#endif
        const uint4 raw = *reinterpret_cast<const uint4*>(p);
        const Packed<T> old{{raw.x, raw.y, raw.z, raw.w}};
#pragma unroll
        for (int i = 0; i < Vec<T>::kLen; ++i) g[i] += old.get(i);
    }
    store_vec(p, g);
}

// A device address of the argument block as a typed pointer.
template <typename P> __device__ __forceinline__ P* ptr(uint64_t address) { return reinterpret_cast<P*>(address); }

// The factor on a launch's gradients: the host-folded scale, times the device scalar d total / d loss when
// the launch was asked to scale by it.
__device__ __forceinline__ float grad_factor(float host_scale, int flags, uint64_t upstream) {
    return host_scale * ((flags & KD_SCALE_BY_UPSTREAM) ? *ptr<const float>(upstream) : 1.f);
}

// Elements before the first 16-byte boundary at or after `p`, so that the main loop can use vector access.
template <typename T> __device__ __forceinline__ int64_t elems_to_alignment(const T* p) {
    const uintptr_t misalign = reinterpret_cast<uintptr_t>(p) & 15u;
    return misalign == 0 ? 0 : static_cast<int64_t>((16u - misalign) / sizeof(T));
}

// True when `a` and `b` sit at the same offset from a 16-byte boundary, so one split of a range aligns both.
template <typename T> __device__ __forceinline__ bool same_alignment(const T* a, const T* b) {
    return ((reinterpret_cast<uintptr_t>(a) ^ reinterpret_cast<uintptr_t>(b)) & 15u) == 0;
}

// ---------------------------------------------------------------------------------------------------------
// Softmax conventions shared by the kernels: z = k * x with k = log2(e) / tau; maxima m are kept in input units
// and subtracted before scaling (2^(k (x - m))), as PyTorch's log_softmax does, because for logits of large
// magnitude (|x| ~ 1e4) k * x would already have lost the low bits the softmax depends on; base 2 makes every
// exponential one exp2f; sums of exponentials are accumulated in double (see cwd.cu).

// 1 / x in double for x within the normal float range, without a division: the IEEE double division's
// out-of-line slow path spills registers on sm_80 (the build refuses spills). A float seed from exp2/log2
// (relative error about 1e-7) and two Newton steps give the double result to about 1e-15.
__device__ __forceinline__ double recip(double x) {
    double r = static_cast<double>(exp2f(-log2f(static_cast<float>(x))));
    r = r * (2.0 - x * r);
    return r * (2.0 - x * r);
}

// ---------------------------------------------------------------------------------------------------------
// Deterministic reductions.

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// `v` from lane `lane ^ offset`; every lane of the warp takes part.
template <typename V> __device__ __forceinline__ V shfl_xor(V v, int offset) {
    return __shfl_xor_sync(0xffffffffu, v, offset);
}

// Merges every lane's value of an order-sensitive combination (running statistics, moments) in lane order:
// at each step the lower lane's value goes first, so both partners compute the same bits, and every lane ends
// with the warp's. `S` shuffles itself (`m.shfl_xor(offset)`: each field from lane `lane ^ offset`);
// `merge(a, b)`, found beside `S`, is the combination of `a` then `b`.
template <typename S> __device__ __forceinline__ S warp_merge_in_lane_order(S m) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
        const S other = m.shfl_xor(offset);
        m = (lane & offset) ? merge(other, m) : merge(m, other);
    }
    return m;
}

// Sum over the block; the result is valid in thread 0. Fixed order: lanes, then warps.
template <typename F> __device__ __forceinline__ F block_sum(F v) {
    KD_SHARED_ARRAY(F, warp_totals, kWarps);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) warp_totals[warp] = v;
    __syncthreads();
    F total = 0;
    if (warp == 0) {
        total = warp_sum(lane < kWarps ? warp_totals[lane] : F(0));
    }
    __syncthreads();  // warp_totals may be reused by a later call
    return total;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// The maxima of `a` and of `b` over the block, in every thread.
__device__ __forceinline__ void block_max2(float& a, float& b) {
    KD_SHARED_ARRAY(float, warp_a, kWarps);
    KD_SHARED_ARRAY(float, warp_b, kWarps);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    a = warp_max(a);
    b = warp_max(b);
    if (lane == 0) {
        warp_a[warp] = a;
        warp_b[warp] = b;
    }
    __syncthreads();
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
        a = fmaxf(a, warp_a[w]);
        b = fmaxf(b, warp_b[w]);
    }
    __syncthreads();  // the arrays may be reused by a later call
}

// The sums of x, y and z over the block, in every thread, bitwise the same in each: the butterfly gives
// every lane of a warp the same sum (a + b == b + a exactly), then every thread adds the warp sums in order.
__device__ __forceinline__ void block_sum3(double& x, double& y, double& z) {
    KD_SHARED_ARRAY(double, warp_x, kWarps);
    KD_SHARED_ARRAY(double, warp_y, kWarps);
    KD_SHARED_ARRAY(double, warp_z, kWarps);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    x = warp_sum(x);
    y = warp_sum(y);
    z = warp_sum(z);
    if (lane == 0) {
        warp_x[warp] = x;
        warp_y[warp] = y;
        warp_z[warp] = z;
    }
    __syncthreads();
    x = y = z = 0.0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
        x += warp_x[w];
        y += warp_y[w];
        z += warp_z[w];
    }
    __syncthreads();  // the arrays may be reused by a later call
}

// Sums `count` floats that other blocks of this grid wrote, in a fixed order (thread-strided, then the
// block tree), in double. Reads bypass L1 (ld.global.cg): the values were written by other SMs.
__device__ __forceinline__ double block_sum_of_partials(const float* partials, int64_t count) {
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += static_cast<double>(__ldcg(partials + i));
    return block_sum(acc);
}

// "Last block done" detection (CUDA threadFenceReduction sample): every participating block publishes its
// partial, then takes a ticket; the block that takes the last ticket sees every partial and reduces them.
// The counter only elects the block, it accumulates nothing, so the result does not depend on which block
// finishes last. That block resets the counter to 0 for the next launch.
// The block's partial must have been written by its thread 0 (which then also takes the ticket), and the
// last block reads the others' partials through L2 (__ldcg) after this returns.
__device__ __forceinline__ bool is_last_block_done(unsigned int* counter, unsigned int participants) {
    KD_SHARED(bool, last);
    if (threadIdx.x == 0) {
        __threadfence();  // publish this block's partial before taking a ticket
        const unsigned int ticket = atomicAdd(counter, 1u);
        last = (ticket == participants - 1);
        if (last) {
            __threadfence();  // order the partials' reads (after the barrier below) after the ticket
            *counter = 0u;
        }
    }
    __syncthreads();
    return last;
}

// The loss of a launch, summed deterministically over the grid: each of `participants` blocks publishes its
// `value` (read from thread 0) at `partials[index]`; the last block to publish sums all of them in index
// order, in double, and writes `scale * total` to `*loss`. Every thread of a participating block calls it.
__device__ __forceinline__ void sum_into_loss(float value, int64_t index, unsigned int participants, float* partials,
                                              unsigned int* counter, float* loss, float scale) {
    if (threadIdx.x == 0) partials[index] = value;
    if (is_last_block_done(counter, participants)) {
        const double total = block_sum_of_partials(partials, participants);
        if (threadIdx.x == 0) *loss = static_cast<float>(static_cast<double>(scale) * total);
    }
}

// Reads a counter that other blocks advance with atomicAdd after a __threadfence(), with acquire semantics:
// what those blocks wrote before their increment is visible to this thread afterwards.
__device__ __forceinline__ unsigned int load_acquire(const unsigned int* p) {
#ifdef KD_EMULATE
    return kd_emu::load_acquire(p);
#else
    unsigned int v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#endif
}

// Thread 0 waits until `*counter` reaches `target`, then the whole block continues; what the blocks that
// advanced the counter wrote before their increment is then visible to every thread of this block through
// L2 (read it with __ldcg: L1 is not coherent across SMs). Only legal when every block the wait depends on
// is resident or already done: the single-pass kernels are launched cooperatively for that reason.
__device__ __forceinline__ void block_wait_at_least(const unsigned int* counter, unsigned int target) {
    if (threadIdx.x == 0) {
        while (load_acquire(counter) < target) __nanosleep(32);
    }
    __syncthreads();
}

}  // namespace kd

// extern "C" entry points named {op}_{dtype}, as candle-kernels does, one per storage type.
#define KD_FOR_EACH_DTYPE(MACRO) \
    MACRO(float, f32)            \
    MACRO(__half, f16)           \
    MACRO(__nv_bfloat16, bf16)

// Declares an entry point NAME taking the argument block ARGS (its family's header) as `a`; the rest are its
// __launch_bounds__. On the GPU it is an extern "C" kernel; in the host emulation the same body becomes a
// function registered under NAME, which the emulator's launcher finds by the name the driver would use.
#ifdef KD_EMULATE
#define KD_ENTRY(NAME, ARGS, ...)                                                                     \
    static void NAME(const ARGS& a);                                                                  \
    static const kd_emu::Registration NAME##_registration(                                            \
        #NAME, [](const void* args) { NAME(*static_cast<const ARGS*>(args)); }, sizeof(ARGS),         \
        kd_emu::address_words<ARGS>());                                                               \
    static void NAME(const ARGS& a)
#else
#define KD_ENTRY(NAME, ARGS, ...) extern "C" __global__ void __launch_bounds__(__VA_ARGS__) NAME(const ARGS a)
#endif

#endif  // KD_KERNELS_COMMON_CUH
