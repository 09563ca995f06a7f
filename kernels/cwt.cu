/*
 * CWT: feature distillation through a channel-wise transformation (docs/losses.md section 5), forward and
 * backward. Per pixel p (NCHW: a pixel's channels are H*W apart; consecutive pixels are consecutive in
 * memory, so consecutive threads take consecutive pixels):
 *
 *     A_p = W1 x_p + b1,  Z_p = ReLU(A_p),  Y_p = W2 Z_p + b2,   loss = w / D * sum_p |Y_p - t_p|^2
 *     dY  = 2 w / D (Y - t) (times GradOptions::scale and the device upstream scalar)
 *     dW2 = sum_p dY_p Z_p^T, db2 = sum_p dY_p, dA = (W2^T dY) * 1[A > 0], dW1 = sum_p dA_p x_p^T,
 *     db1 = sum_p dA_p, dx_p = W1^T dA_p.
 *
 * Every step is a small GEMM over channels with the pixels as the long dimension. Every kernel here is built
 * from one 64 x 64 output tile (`gemm_tile`) with its own operand loaders and epilogue; the tile has two
 * engines, chosen by the input dtype at compile time:
 *   * f32 inputs: SIMT, K in steps of 16 staged in shared memory, 4 x 4 outputs a thread, fp32 FMAs in a
 *     fixed order (the exact path).
 *   * f16 / bf16 inputs: tensor cores (WMMA m16n16k16, bf16 operands, fp32 accumulators). Every operand
 *     value v is staged as a pair of bf16, hi = bf16(v) and lo = bf16(v - hi) (16 significant bits, fp32's
 *     exponent range), and a product is hi*hi + hi*lo + lo*hi: the error is about 2^-16 relative, against
 *     2^-8 for a single bf16 rounding, which the loss's 1e-4 tolerance would not survive on small tensors.
 *     bf16 inputs are exact in hi alone, so products with the student skip their lo term. f16 inputs are
 *     exact in a bf16 pair. The accumulators leave through shared memory in the SIMT tile's layout, so
 *     every epilogue below is shared by both engines and touches no fragment element itself.
 *
 * Kernels (one argument block per chunk of pixels, see cwt.h):
 *
 *   cwt_forward_fused   loss only: Z = ReLU(W1 X + b1) of a pixel tile into shared memory, then W2 Z + b2,
 *                       the squared error and its block sum: nothing but the loss leaves the chip.
 *   cwt_forward_store   forward of a backward, fused: a block owns 64 pixels, writes A = W1 X + b1 for every
 *                       hidden unit to the workspace, then reads it back (its own writes, from L2) for
 *                       Y = W2 ReLU(A) + b2, the squared error, the loss and dY -> workspace. Legal because Y
 *                       of a pixel needs only that pixel's A, which the same block wrote before a barrier.
 *   cwt_grad_w2         per split of the chunk's pixels: [dW2 | db2] = dY [ReLU(A) | 1]^T.
 *   cwt_grad_input      backward through the MLP, fused: a block owns 64 pixels, writes dA = (W2^T dY) *
 *                       1[A > 0] in place over A for every hidden unit, then dX = W1^T dA from it. Legal for
 *                       the same reason (dX of a pixel needs only that pixel's dA); runs after cwt_grad_w2,
 *                       the last reader of A.
 *   cwt_grad_w1         per split: [dW1 | db1] = dA [X | 1]^T.
 *   cwt_combine         where splits > 1: each parameter-gradient element sums its slots in slot order.
 *   cwt_hidden, cwt_output, cwt_grad_hidden, cwt_grad_student: the same steps unfused, one 64 x 64 tile a
 *                       block, for chunks with fewer pixel tiles than the device has SMs (the fused kernels'
 *                       grids would leave SMs idle there).
 *
 * Weight gradients: with one split per chunk the split GEMMs write the parameter gradients directly (the
 * first chunk honouring GradOptions::accumulate, later chunks adding); with several, split s of every chunk
 * adds into partial slot s (the first chunk writes it) and cwt_combine sums the slots. Either way every
 * element is a fixed sequence of fp32 operations: deterministic, no atomics. The loss is summed by the last
 * block in index order. Workspace: A and dY of one chunk, the slots and the loss partials, planned to fit in
 * one hidden-activation tensor (src/cwt/plan.rs).
 */
#include "common.cuh"
#include "cwt.h"
#ifndef KD_EMULATE
#include <mma.h>
#endif

namespace {

using kd::kBlockThreads;

constexpr int kTile = 64;  // output tile: kTile x kTile
constexpr int kStep = 16;  // SIMT: K staged per step
constexpr int kPer = 4;    // SIMT: outputs a thread holds along each dimension
static_assert(kBlockThreads == 256, "the 64 x 64 tile is 16 x 16 threads of 4 x 4 outputs, or 8 warps of 2 x 16 x 16");

// Element (c, p) of an NCHW tensor with C channels: p = n*H*W + y*W + x. Pixel indices fit in 32 bits (the
// planner refuses more pixels), so that the division is inline: a 64-bit division is a subroutine call, whose
// saved registers spill in the tensor-core tiles' operand loaders.
__device__ __forceinline__ int64_t nchw(int64_t c, int64_t p, int64_t channels, int64_t plane) {
    const uint32_t n = static_cast<uint32_t>(p) / static_cast<uint32_t>(plane);
    return (static_cast<int64_t>(n) * channels + c) * plane + (p - static_cast<int64_t>(n) * plane);
}

template <typename T> struct IsBf16 {
    static constexpr bool value = false;
};
template <> struct IsBf16<__nv_bfloat16> {
    static constexpr bool value = true;
};

// acc[i][j] = sum_{k in [k_begin, k_end)} a(m0 + ty + 16 i, k) * b(k, n0 + tx + 16 j) for the rows < m_len
// and columns < n_len (zero elsewhere), with tx = threadIdx.x % 16, ty = threadIdx.x / 16. `a(m, k)` and
// `b(k, n)` are only called in range. The K order is fixed: steps of kStep, each summed in order.
template <typename LoadA, typename LoadB>
__device__ __forceinline__ void gemm_tile_simt(int64_t m0, int64_t m_len, int64_t n0, int64_t n_len, int64_t k_begin,
                                               int64_t k_end, const LoadA& a, const LoadB& b,
                                               float (&acc)[kPer][kPer]) {
    KD_SHARED_ARRAY(float, as, kStep * kTile);
    KD_SHARED_ARRAY(float, bs, kStep * kTile);
    const int tid = static_cast<int>(threadIdx.x);
    const int tx = tid % 16, ty = tid / 16;
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < kPer; ++j) acc[i][j] = 0.f;
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kStep) {
        // A with k fastest (weights are [out, in]), B with n fastest (pixels are contiguous).
#pragma unroll
        for (int r = 0; r < (kStep * kTile) / kBlockThreads; ++r) {
            const int e = tid + r * kBlockThreads;
            const int kk = e % kStep, mm = e / kStep;
            const int64_t m = m0 + mm, k = k0 + kk;
            as[kk * kTile + mm] = (m < m_len && k < k_end) ? a(m, k) : 0.f;
            const int nn = e % kTile, kb = e / kTile;
            const int64_t n = n0 + nn, kq = k0 + kb;
            bs[kb * kTile + nn] = (n < n_len && kq < k_end) ? b(kq, n) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kStep; ++kk) {
            float av[kPer], bv[kPer];
#pragma unroll
            for (int i = 0; i < kPer; ++i) av[i] = as[kk * kTile + ty + 16 * i];
#pragma unroll
            for (int j = 0; j < kPer; ++j) bv[j] = bs[kk * kTile + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < kPer; ++i)
#pragma unroll
                for (int j = 0; j < kPer; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
}

// ---- the tensor-core tile ----

constexpr int kTcStep = 32;               // K staged per step (two m16n16k16 steps)
constexpr int kTcLdA = kTcStep + 8;       // padded rows (bf16 elements; WMMA wants multiples of 8)
constexpr int kTcLdB = kTile + 8;
constexpr int kTcLdC = kTile + 4;         // floats; multiples of 4

// The operands of one K step as bf16 pairs, and the accumulators on their way out, sharing the space (the
// accumulators are stored after the last step's barrier). Bits as unsigned short: __shared__ storage cannot
// have constructors. 32-byte alignment: WMMA's loads and stores need it.
struct alignas(32) TcTile {
    union {
        struct {
            unsigned short a_hi[kTile * kTcLdA], a_lo[kTile * kTcLdA];    // [m][k]
            unsigned short b_hi[kTcStep * kTcLdB], b_lo[kTcStep * kTcLdB];  // [k][n]
        } in;
        float c[kTile * kTcLdC];  // [m][n]
    };
};

__device__ __forceinline__ void split_bf16(float v, unsigned short& hi, unsigned short& lo) {
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    hi = __bfloat16_as_ushort(h);
    lo = __bfloat16_as_ushort(__float2bfloat16_rn(v - __bfloat162float(h)));
}

// The contract of gemm_tile_simt, on tensor cores. Warp w computes the 16 x 32 outputs at rows 16 (w / 2)
// and columns 32 (w % 2); `a_exact` / `b_exact`: that operand's values are bf16 already (their lo is 0, and
// its products are skipped). The K order is fixed: steps of 16, each product added lo*hi, hi*lo, hi*hi.
template <bool a_exact, bool b_exact, typename LoadA, typename LoadB>
__device__ __forceinline__ void gemm_tile_tc(int64_t m0, int64_t m_len, int64_t n0, int64_t n_len, int64_t k_begin,
                                             int64_t k_end, const LoadA& a, const LoadB& b, float (&acc)[kPer][kPer]) {
    namespace wmma = nvcuda::wmma;
    KD_SHARED(TcTile, s);
    const int tid = static_cast<int>(threadIdx.x);
    const int warp = tid / 32;
    const int wm = (warp / 2) * 16, wn = (warp % 2) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2];
    wmma::fill_fragment(c[0], 0.f);
    wmma::fill_fragment(c[1], 0.f);
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kTcStep) {
#pragma unroll 4  // fully unrolled, the eight loads in flight spill on sm_80
        for (int r = 0; r < (kTcStep * kTile) / kBlockThreads; ++r) {
            const int e = tid + r * kBlockThreads;
            const int kk = e % kTcStep, mm = e / kTcStep;
            const int64_t m = m0 + mm, k = k0 + kk;
            split_bf16((m < m_len && k < k_end) ? a(m, k) : 0.f, s.in.a_hi[mm * kTcLdA + kk], s.in.a_lo[mm * kTcLdA + kk]);
            const int nn = e % kTile, kb = e / kTile;
            const int64_t n = n0 + nn, kq = k0 + kb;
            split_bf16((n < n_len && kq < k_end) ? b(kq, n) : 0.f, s.in.b_hi[kb * kTcLdB + nn], s.in.b_lo[kb * kTcLdB + nn]);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kTcStep; kk += 16) {
            using Bf = __nv_bfloat16;
            wmma::fragment<wmma::matrix_a, 16, 16, 16, Bf, wmma::row_major> a_hi, a_lo;
            wmma::load_matrix_sync(a_hi, reinterpret_cast<const Bf*>(s.in.a_hi + wm * kTcLdA + kk), kTcLdA);
            if constexpr (!a_exact) {
                wmma::load_matrix_sync(a_lo, reinterpret_cast<const Bf*>(s.in.a_lo + wm * kTcLdA + kk), kTcLdA);
            }
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, Bf, wmma::row_major> b_hi, b_lo;
                const int at = kk * kTcLdB + wn + 16 * j;
                wmma::load_matrix_sync(b_hi, reinterpret_cast<const Bf*>(s.in.b_hi + at), kTcLdB);
                if constexpr (!a_exact) wmma::mma_sync(c[j], a_lo, b_hi, c[j]);
                if constexpr (!b_exact) {
                    wmma::load_matrix_sync(b_lo, reinterpret_cast<const Bf*>(s.in.b_lo + at), kTcLdB);
                    wmma::mma_sync(c[j], a_hi, b_lo, c[j]);
                }
                wmma::mma_sync(c[j], a_hi, b_hi, c[j]);
            }
        }
        __syncthreads();
    }
    wmma::store_matrix_sync(s.c + wm * kTcLdC + wn, c[0], kTcLdC, wmma::mem_row_major);
    wmma::store_matrix_sync(s.c + wm * kTcLdC + wn + 16, c[1], kTcLdC, wmma::mem_row_major);
    __syncthreads();
    const int tx = tid % 16, ty = tid / 16;
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < kPer; ++j) acc[i][j] = s.c[(ty + 16 * i) * kTcLdC + tx + 16 * j];
    __syncthreads();  // the tile's space is the next call's staging
}

// The tile for inputs of dtype T: tensor cores for 16-bit inputs, SIMT for f32. `a_input` / `b_input`: that
// operand is the student (exactly representable in T), which lets bf16 skip its lo products.
template <typename T, bool a_input = false, bool b_input = false, typename LoadA, typename LoadB>
__device__ __forceinline__ void gemm_tile(int64_t m0, int64_t m_len, int64_t n0, int64_t n_len, int64_t k_begin,
                                          int64_t k_end, const LoadA& a, const LoadB& b, float (&acc)[kPer][kPer]) {
    if constexpr (sizeof(T) == 2) {
        gemm_tile_tc<a_input && IsBf16<T>::value, b_input && IsBf16<T>::value>(m0, m_len, n0, n_len, k_begin, k_end,
                                                                               a, b, acc);
    } else {
        gemm_tile_simt(m0, m_len, n0, n_len, k_begin, k_end, a, b, acc);
    }
}

__device__ __forceinline__ int64_t tiles(int64_t len) { return (len + kTile - 1) / kTile; }

// Block b of a grid of `rows` x `cols` tiles: (b / cols, b % cols), in 32 bits (grids are below 2^31 blocks).
struct TileIndex {
    int64_t row, col;
};
__device__ __forceinline__ TileIndex tile_index(uint32_t b, int64_t cols) {
    const uint32_t c = static_cast<uint32_t>(cols);
    return TileIndex{static_cast<int64_t>(b / c), static_cast<int64_t>(b % c)};
}

// Calls f(m, n, value) on this thread's outputs that lie in [0, m_len) x [0, n_len).
template <typename F>
__device__ __forceinline__ void for_each_output(int64_t m0, int64_t m_len, int64_t n0, int64_t n_len,
                                                const float (&acc)[kPer][kPer], const F& f) {
    const int tx = static_cast<int>(threadIdx.x) % 16, ty = static_cast<int>(threadIdx.x) / 16;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
        const int64_t m = m0 + ty + 16 * i;
        if (m >= m_len) continue;
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
            const int64_t n = n0 + tx + 16 * j;
            if (n < n_len) f(m, n, acc[i][j]);
        }
    }
}

// ---- the steps, each on one 64 x 64 tile at (m0, q0): hidden units / outputs / student channels x pixels ----

// A = W1 X + b1 for hidden units [h0, h0 + 64) of pixels [q0, q0 + 64) of the chunk (M = Ch, K = Cs).
template <typename T> __device__ __forceinline__ void hidden_tile(const KdCwtArgs& args, int64_t h0, int64_t q0) {
    const KdCwtParams& p = args.p;
    const T* __restrict__ x = kd::ptr<const T>(args.student);
    const float* __restrict__ w1 = kd::ptr<const float>(args.w1);
    const float* __restrict__ b1 = kd::ptr<const float>(args.b1);
    float* hidden = kd::ptr<float>(args.hidden);
    const int64_t pc = p.chunk_pixels;
    float acc[kPer][kPer];
    gemm_tile<T, false, true>(
        h0, p.ch, q0, pc, 0, p.cs, [&](int64_t h, int64_t c) { return w1[h * p.cs + c]; },
        [&](int64_t c, int64_t q) { return kd::to_float(x[nchw(c, p.pixel_begin + q, p.cs, p.plane)]); }, acc);
    for_each_output(h0, p.ch, q0, pc, acc, [&](int64_t h, int64_t q, float v) { hidden[h * pc + q] = v + b1[h]; });
}

// Y = W2 ReLU(A) + b2 for outputs [o0, o0 + 64) (M = Ct, K = Ch), the squared error against the teacher
// added to `squares` (this thread's outputs in a fixed order), and dY -> out_grad in a backward.
template <typename T>
__device__ __forceinline__ void output_tile(const KdCwtArgs& args, int64_t o0, int64_t q0, double& squares) {
    const KdCwtParams& p = args.p;
    const T* __restrict__ teacher = kd::ptr<const T>(args.teacher);
    const float* __restrict__ w2 = kd::ptr<const float>(args.w2);
    const float* __restrict__ b2 = kd::ptr<const float>(args.b2);
    const float* hidden = kd::ptr<const float>(args.hidden);  // not __restrict__: cwt_forward_store wrote it
    float* __restrict__ out_grad = kd::ptr<float>(args.out_grad);
    const int64_t pc = p.chunk_pixels;
    float acc[kPer][kPer];
    gemm_tile<T>(
        o0, p.ct, q0, pc, 0, p.ch, [&](int64_t o, int64_t h) { return w2[o * p.ch + h]; },
        [&](int64_t h, int64_t q) { return fmaxf(hidden[h * pc + q], 0.f); }, acc);
    const bool want_grad = (p.flags & KD_WANT_GRAD_STUDENT) != 0;
    const float scale = want_grad ? kd::grad_factor(p.grad_scale, p.flags, args.upstream) : 0.f;
    for_each_output(o0, p.ct, q0, pc, acc, [&](int64_t o, int64_t q, float v) {
        const float e = (v + b2[o]) - kd::to_float(teacher[nchw(o, p.pixel_begin + q, p.ct, p.plane)]);
        squares += static_cast<double>(e) * e;
        if (want_grad) out_grad[o * pc + q] = scale * e;
    });
}

// dA = (W2^T dY) * 1[A > 0] over A for hidden units [h0, h0 + 64) (M = Ch, K = Ct). A block reads A only at
// its own outputs, after its K loop. ReLU'(0) = 0, as PyTorch.
template <typename T> __device__ __forceinline__ void grad_hidden_tile(const KdCwtArgs& args, int64_t h0, int64_t q0) {
    const KdCwtParams& p = args.p;
    const float* __restrict__ w2 = kd::ptr<const float>(args.w2);
    const float* __restrict__ out_grad = kd::ptr<const float>(args.out_grad);
    float* hidden = kd::ptr<float>(args.hidden);
    const int64_t pc = p.chunk_pixels;
    float acc[kPer][kPer];
    gemm_tile<T>(
        h0, p.ch, q0, pc, 0, p.ct, [&](int64_t h, int64_t o) { return w2[o * p.ch + h]; },
        [&](int64_t o, int64_t q) { return out_grad[o * pc + q]; }, acc);
    for_each_output(h0, p.ch, q0, pc, acc, [&](int64_t h, int64_t q, float v) {
        float& a = hidden[h * pc + q];
        a = a > 0.f ? v : 0.f;
    });
}

// dX = W1^T dA for student channels [c0, c0 + 64) (M = Cs, K = Ch), in the input dtype.
template <typename T> __device__ __forceinline__ void grad_student_tile(const KdCwtArgs& args, int64_t c0, int64_t q0) {
    const KdCwtParams& p = args.p;
    const float* __restrict__ w1 = kd::ptr<const float>(args.w1);
    const float* hidden = kd::ptr<const float>(args.hidden);  // not __restrict__: cwt_grad_input wrote it
    T* __restrict__ gx = kd::ptr<T>(args.grad_student);
    const int64_t pc = p.chunk_pixels;
    float acc[kPer][kPer];
    gemm_tile<T>(
        c0, p.cs, q0, pc, 0, p.ch, [&](int64_t c, int64_t h) { return w1[h * p.cs + c]; },
        [&](int64_t h, int64_t q) { return hidden[h * pc + q]; }, acc);
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    for_each_output(c0, p.cs, q0, pc, acc, [&](int64_t c, int64_t q, float v) {
        kd::store_grad(gx + nchw(c, p.pixel_begin + q, p.cs, p.plane), v, accumulate);
    });
}

// ---- unfused kernels: one tile a block, grid = M tiles x pixel tiles ----

template <typename T> __device__ void cwt_hidden(const KdCwtArgs& args) {
    const TileIndex t = tile_index(blockIdx.x, tiles(args.p.chunk_pixels));
    hidden_tile<T>(args, t.row * kTile, t.col * kTile);
}

template <typename T> __device__ void cwt_output(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const TileIndex t = tile_index(blockIdx.x, tiles(p.chunk_pixels));
    double squares = 0.0;
    output_tile<T>(args, t.row * kTile, t.col * kTile, squares);
    if (p.flags & KD_WANT_LOSS) {
        const double total = kd::block_sum(squares);
        kd::sum_into_loss(static_cast<float>(total), p.loss_block_base + blockIdx.x,
                          static_cast<unsigned int>(p.loss_blocks), kd::ptr<float>(args.loss_partials),
                          kd::ptr<unsigned int>(args.counter), kd::ptr<float>(args.loss), p.loss_scale);
    }
}

template <typename T> __device__ void cwt_grad_hidden(const KdCwtArgs& args) {
    const TileIndex t = tile_index(blockIdx.x, tiles(args.p.chunk_pixels));
    grad_hidden_tile<T>(args, t.row * kTile, t.col * kTile);
}

template <typename T> __device__ void cwt_grad_student(const KdCwtArgs& args) {
    const TileIndex t = tile_index(blockIdx.x, tiles(args.p.chunk_pixels));
    grad_student_tile<T>(args, t.row * kTile, t.col * kTile);
}

// ---- fused kernels: a block owns 64 pixels and every channel tile of two consecutive steps ----

template <typename T> __device__ void cwt_forward_store(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kTile;
    for (int64_t h0 = 0; h0 < p.ch; h0 += kTile) hidden_tile<T>(args, h0, q0);
    __syncthreads();  // this block's A, written to global memory, visible to all its threads
    double squares = 0.0;
    for (int64_t o0 = 0; o0 < p.ct; o0 += kTile) output_tile<T>(args, o0, q0, squares);
    if (p.flags & KD_WANT_LOSS) {
        const double total = kd::block_sum(squares);
        kd::sum_into_loss(static_cast<float>(total), p.loss_block_base + blockIdx.x,
                          static_cast<unsigned int>(p.loss_blocks), kd::ptr<float>(args.loss_partials),
                          kd::ptr<unsigned int>(args.counter), kd::ptr<float>(args.loss), p.loss_scale);
    }
}

template <typename T> __device__ void cwt_grad_input(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kTile;
    for (int64_t h0 = 0; h0 < p.ch; h0 += kTile) grad_hidden_tile<T>(args, h0, q0);
    __syncthreads();  // this block's dA visible to all its threads
    for (int64_t c0 = 0; c0 < p.cs; c0 += kTile) grad_student_tile<T>(args, c0, q0);
}

// ---- weight gradients ----

// The weight-gradient GEMMs reduce over a split of the chunk's pixels: grid = splits x M tiles x N tiles.
struct SplitTile {
    int64_t m0, n0, k_begin, k_end;
    int split;
};

__device__ __forceinline__ SplitTile split_tile(const KdCwtParams& p, int64_t m_len, int64_t n_len) {
    const TileIndex split = tile_index(blockIdx.x, tiles(m_len) * tiles(n_len));
    const TileIndex t = tile_index(static_cast<uint32_t>(split.col), tiles(n_len));
    const int64_t k_begin = split.row * p.split_len;
    return SplitTile{t.row * kTile, t.col * kTile, k_begin, min(k_begin + p.split_len, p.chunk_pixels),
                     static_cast<int>(split.row)};
}

// Puts element (row, col) of [dW | db] (`in` weight columns, then the bias column) of one split: into the
// split's partial slot `slots` (several splits), else into the gradients themselves. Either adds to what an
// earlier chunk put there (accumulate_slots), the first chunk of a direct write honouring KD_ACCUMULATE_GRAD.
__device__ __forceinline__ void put_weight_grad(const KdCwtParams& p, float* slot, float* grad_w, float* grad_b,
                                                int64_t in, int64_t row, int64_t col, float v) {
    if (p.slots > 0) {
        float& d = slot[row * (in + 1) + col];
        d = p.accumulate_slots ? d + v : v;
    } else {
        const bool accumulate = p.accumulate_slots || (p.flags & KD_ACCUMULATE_GRAD) != 0;
        kd::store_grad(col < in ? grad_w + row * in + col : grad_b + row, v, accumulate);
    }
}

// [dW2 | db2] over one split: M = Ct, N = Ch + 1 (the ones column), K = the split's pixels.
template <typename T> __device__ void cwt_grad_w2(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const float* __restrict__ hidden = kd::ptr<const float>(args.hidden);
    const float* __restrict__ out_grad = kd::ptr<const float>(args.out_grad);
    const int64_t pc = p.chunk_pixels, cols = static_cast<int64_t>(p.ch) + 1;
    const SplitTile t = split_tile(p, p.ct, cols);
    float acc[kPer][kPer];
    gemm_tile<T>(
        t.m0, p.ct, t.n0, cols, t.k_begin, t.k_end, [&](int64_t o, int64_t q) { return out_grad[o * pc + q]; },
        [&](int64_t q, int64_t h) { return h < p.ch ? fmaxf(hidden[h * pc + q], 0.f) : 1.f; }, acc);
    float* slot = kd::ptr<float>(args.partials) + static_cast<int64_t>(t.split) * p.ct * cols;
    for_each_output(t.m0, p.ct, t.n0, cols, acc, [&](int64_t o, int64_t h, float v) {
        put_weight_grad(p, slot, kd::ptr<float>(args.grad_w2), kd::ptr<float>(args.grad_b2), p.ch, o, h, v);
    });
}

// [dW1 | db1] over one split: M = Ch, N = Cs + 1, K = the split's pixels.
template <typename T> __device__ void cwt_grad_w1(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const T* __restrict__ x = kd::ptr<const T>(args.student);
    const float* __restrict__ hidden = kd::ptr<const float>(args.hidden);
    const int64_t pc = p.chunk_pixels, cols = static_cast<int64_t>(p.cs) + 1;
    const SplitTile t = split_tile(p, p.ch, cols);
    float acc[kPer][kPer];
    gemm_tile<T, false, true>(
        t.m0, p.ch, t.n0, cols, t.k_begin, t.k_end, [&](int64_t h, int64_t q) { return hidden[h * pc + q]; },
        [&](int64_t q, int64_t c) {
            return c < p.cs ? kd::to_float(x[nchw(c, p.pixel_begin + q, p.cs, p.plane)]) : 1.f;
        },
        acc);
    const int64_t w2_floats = static_cast<int64_t>(p.slots) * p.ct * (static_cast<int64_t>(p.ch) + 1);
    float* slot = kd::ptr<float>(args.partials) + w2_floats + static_cast<int64_t>(t.split) * p.ch * cols;
    for_each_output(t.m0, p.ch, t.n0, cols, acc, [&](int64_t h, int64_t c, float v) {
        put_weight_grad(p, slot, kd::ptr<float>(args.grad_w1), kd::ptr<float>(args.grad_b1), p.cs, h, c, v);
    });
}

// The parameter gradients where there are partial slots: element e of [dW2 | db2] then of [dW1 | db1] sums
// its slots in slot order.
template <typename T> __device__ void cwt_combine(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const float* __restrict__ partials = kd::ptr<const float>(args.partials);
    const int64_t cols2 = static_cast<int64_t>(p.ch) + 1, cols1 = static_cast<int64_t>(p.cs) + 1;
    const int64_t n2 = static_cast<int64_t>(p.ct) * cols2, n1 = static_cast<int64_t>(p.ch) * cols1;
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    const int64_t e = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
    if (e >= n2 + n1) return;
    const bool second = e < n2;
    const int64_t local = second ? e : e - n2;
    const float* base = second ? partials : partials + static_cast<int64_t>(p.slots) * n2;
    const int64_t stride = second ? n2 : n1;
    float sum = 0.f;
    for (int s = 0; s < p.slots; ++s) sum += base[static_cast<int64_t>(s) * stride + local];
    if (second) {
        const int64_t o = local / cols2, h = local % cols2;
        if (h < p.ch) {
            kd::store_grad(kd::ptr<float>(args.grad_w2) + o * p.ch + h, sum, accumulate);
        } else {
            kd::store_grad(kd::ptr<float>(args.grad_b2) + o, sum, accumulate);
        }
    } else {
        const int64_t h = local / cols1, c = local % cols1;
        if (c < p.cs) {
            kd::store_grad(kd::ptr<float>(args.grad_w1) + h * p.cs + c, sum, accumulate);
        } else {
            kd::store_grad(kd::ptr<float>(args.grad_b1) + h, sum, accumulate);
        }
    }
}

// ---- the loss alone ----

// The whole forward of `tile_pixels` pixels per block: Z = ReLU(W1 X + b1) into shared memory, then
// Y = W2 Z + b2 and sum (Y - T)^2, one 64-output tile at a time; the block's sum goes into the loss.
template <typename T> __device__ void cwt_forward_fused(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const T* __restrict__ x = kd::ptr<const T>(args.student);
    const T* __restrict__ teacher = kd::ptr<const T>(args.teacher);
    const float* __restrict__ w1 = kd::ptr<const float>(args.w1);
    const float* __restrict__ b1 = kd::ptr<const float>(args.b1);
    const float* __restrict__ w2 = kd::ptr<const float>(args.w2);
    const float* __restrict__ b2 = kd::ptr<const float>(args.b2);
    KD_DYNAMIC_SHARED(smem);
    float* z = reinterpret_cast<float*>(smem);  // [Ch][tile_pixels]
    const int64_t tp = p.tile_pixels;
    const int64_t q0 = static_cast<int64_t>(blockIdx.x) * tp;
    const int64_t q_end = min(q0 + tp, p.chunk_pixels);
    float acc[kPer][kPer];
    for (int64_t h0 = 0; h0 < p.ch; h0 += kTile) {
        gemm_tile<T, false, true>(
            h0, p.ch, q0, q_end, 0, p.cs, [&](int64_t h, int64_t c) { return w1[h * p.cs + c]; },
            [&](int64_t c, int64_t q) { return kd::to_float(x[nchw(c, p.pixel_begin + q, p.cs, p.plane)]); }, acc);
        for_each_output(h0, p.ch, q0, q_end, acc,
                        [&](int64_t h, int64_t q, float v) { z[h * tp + (q - q0)] = fmaxf(v + b1[h], 0.f); });
    }
    __syncthreads();  // Z complete before any thread reads it
    double squares = 0.0;
    for (int64_t o0 = 0; o0 < p.ct; o0 += kTile) {
        gemm_tile<T>(
            o0, p.ct, q0, q_end, 0, p.ch, [&](int64_t o, int64_t h) { return w2[o * p.ch + h]; },
            [&](int64_t h, int64_t q) { return z[h * tp + (q - q0)]; }, acc);
        for_each_output(o0, p.ct, q0, q_end, acc, [&](int64_t o, int64_t q, float v) {
            const float e = (v + b2[o]) - kd::to_float(teacher[nchw(o, p.pixel_begin + q, p.ct, p.plane)]);
            squares += static_cast<double>(e) * e;
        });
    }
    const double total = kd::block_sum(squares);
    kd::sum_into_loss(static_cast<float>(total), blockIdx.x, static_cast<unsigned int>(p.loss_blocks),
                      kd::ptr<float>(args.loss_partials), kd::ptr<unsigned int>(args.counter), kd::ptr<float>(args.loss),
                      p.loss_scale);
}

}  // namespace

// The GEMMs of the 16-bit instances run on tensor cores in bf16, the f32 ones on CUDA cores (the exact path).
// check-ptx: mma=bf16 on=f16,bf16 off=f32 cwt_hidden cwt_output cwt_forward_store cwt_grad_w2 cwt_grad_hidden
// check-ptx: mma=bf16 on=f16,bf16 off=f32 cwt_grad_input cwt_grad_w1 cwt_grad_student cwt_forward_fused

// At least two blocks an SM: a bound ptxas needs to spend its registers well on the tensor-core tiles (without
// it, it squeezes some of them into 64 registers and spills).
#define KD_CWT_ENTRY_POINTS(T, NAME)                                                                   \
    KD_ENTRY(cwt_hidden_##NAME, KdCwtArgs, kBlockThreads, 2) { cwt_hidden<T>(a); }                       \
    KD_ENTRY(cwt_output_##NAME, KdCwtArgs, kBlockThreads, 2) { cwt_output<T>(a); }                       \
    KD_ENTRY(cwt_forward_store_##NAME, KdCwtArgs, kBlockThreads, 2) { cwt_forward_store<T>(a); }         \
    KD_ENTRY(cwt_grad_w2_##NAME, KdCwtArgs, kBlockThreads, 2) { cwt_grad_w2<T>(a); }                     \
    KD_ENTRY(cwt_grad_hidden_##NAME, KdCwtArgs, kBlockThreads, 2) { cwt_grad_hidden<T>(a); }             \
    KD_ENTRY(cwt_grad_input_##NAME, KdCwtArgs, kBlockThreads, 2) { cwt_grad_input<T>(a); }               \
    KD_ENTRY(cwt_grad_w1_##NAME, KdCwtArgs, kBlockThreads, 2) { cwt_grad_w1<T>(a); }                     \
    KD_ENTRY(cwt_grad_student_##NAME, KdCwtArgs, kBlockThreads, 2) { cwt_grad_student<T>(a); }           \
    KD_ENTRY(cwt_combine_##NAME, KdCwtArgs, kBlockThreads, 2) { cwt_combine<T>(a); }                     \
    KD_ENTRY(cwt_forward_fused_##NAME, KdCwtArgs, kBlockThreads, 2) { cwt_forward_fused<T>(a); }

KD_FOR_EACH_DTYPE(KD_CWT_ENTRY_POINTS)
