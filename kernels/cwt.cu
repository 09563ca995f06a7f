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
 * Every step is a small GEMM over channels with the pixels as the long dimension; every kernel here is one
 * tiled SIMT GEMM (64 x 64 output tile, K in steps of 16 staged in shared memory, 4 x 4 outputs a thread,
 * fp32 accumulation in a fixed order) with its own operand loaders and epilogue:
 *
 *   cwt_hidden        A = W1 X + b1                   -> workspace `hidden` [Ch, chunk]
 *   cwt_output        Y = W2 ReLU(A) + b2, fused with the squared error, its block sums (the loss) and, in a
 *                     backward, dY -> workspace `out_grad` [Ct, chunk]. Y itself is never written.
 *   cwt_grad_w2       per split of the chunk's pixels: [dW2 | db2] = dY [ReLU(A) | 1]^T  -> its partial slot
 *   cwt_grad_hidden   dA = (W2^T dY) * 1[A > 0], in place over A (a block owns its outputs and reads A
 *                     only there, after its K loop)
 *   cwt_grad_w1       per split: [dW1 | db1] = dA [X | 1]^T -> its partial slot
 *   cwt_grad_student  dX = W1^T dA, written in the input dtype (KD_ACCUMULATE_GRAD honoured)
 *   cwt_combine       the parameter gradients: each element sums its partial slots in slot order.
 *
 * A forward (loss only) runs in one pass where the hidden tile fits in shared memory: `cwt_forward_fused`
 * takes `tile_pixels` pixels a block, computes their ReLU(W1 x + b1) for every hidden unit into shared memory
 * (Ch x tile_pixels floats), then W2 Z + b2 tile by tile of outputs, the squared error and its block sum:
 * nothing but the loss leaves the chip. Elsewhere (Ch too wide) a forward is cwt_hidden + cwt_output.
 *
 * The driver runs the first six per chunk of pixels, sized so that `hidden` and `out_grad` together hold no
 * more than one hidden-activation tensor (N*H*W*Ch floats), then cwt_combine once. Bias gradients are the
 * GEMMs' extra "ones" column. Deterministic: fixed tiles, fixed K order, fixed slot order, the loss summed
 * by the last block in index order (no float atomics).
 */
#include "common.cuh"

namespace {

using kd::kBlockThreads;

constexpr int kTile = 64;  // output tile: kTile x kTile
constexpr int kStep = 16;  // K staged per step
constexpr int kPer = 4;    // outputs a thread holds along each dimension
static_assert(kBlockThreads == 256, "the 64 x 64 tile is 16 x 16 threads of 4 x 4 outputs");

// Element (c, p) of an NCHW tensor with C channels: p = n*H*W + y*W + x.
__device__ __forceinline__ int64_t nchw(int64_t c, int64_t p, int64_t channels, int64_t plane) {
    const int64_t n = p / plane;
    return (n * channels + c) * plane + (p - n * plane);
}

// acc[i][j] = sum_{k in [k_begin, k_end)} a(m0 + ty + 16 i, k) * b(k, n0 + tx + 16 j) for the rows < m_len
// and columns < n_len (zero elsewhere), with tx = threadIdx.x % 16, ty = threadIdx.x / 16. `a(m, k)` and
// `b(k, n)` are only called in range. The K order is fixed: steps of kStep, each summed in order.
template <typename LoadA, typename LoadB>
__device__ __forceinline__ void gemm_tile(int64_t m0, int64_t m_len, int64_t n0, int64_t n_len, int64_t k_begin,
                                          int64_t k_end, const LoadA& a, const LoadB& b, float (&acc)[kPer][kPer]) {
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

__device__ __forceinline__ int64_t tiles(int64_t len) { return (len + kTile - 1) / kTile; }

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

// A = W1 X + b1 for the chunk: M = Ch, N = chunk pixels, K = Cs.
template <typename T> __device__ void cwt_hidden(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const T* __restrict__ x = kd::ptr<const T>(args.student);
    const float* __restrict__ w1 = kd::ptr<const float>(args.w1);
    const float* __restrict__ b1 = kd::ptr<const float>(args.b1);
    float* __restrict__ hidden = kd::ptr<float>(args.hidden);
    const int64_t pc = p.chunk_pixels, nt = tiles(pc);
    const int64_t m0 = (blockIdx.x / nt) * kTile, n0 = (blockIdx.x % nt) * kTile;
    float acc[kPer][kPer];
    gemm_tile(
        m0, p.ch, n0, pc, 0, p.cs, [&](int64_t h, int64_t c) { return w1[h * p.cs + c]; },
        [&](int64_t c, int64_t q) { return kd::to_float(x[nchw(c, p.pixel_begin + q, p.cs, p.plane)]); }, acc);
    for_each_output(m0, p.ch, n0, pc, acc, [&](int64_t h, int64_t q, float v) { hidden[h * pc + q] = v + b1[h]; });
}

// Y = W2 ReLU(A) + b2 and the squared error against the teacher: M = Ct, N = chunk pixels, K = Ch.
template <typename T> __device__ void cwt_output(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const T* __restrict__ teacher = kd::ptr<const T>(args.teacher);
    const float* __restrict__ w2 = kd::ptr<const float>(args.w2);
    const float* __restrict__ b2 = kd::ptr<const float>(args.b2);
    const float* __restrict__ hidden = kd::ptr<const float>(args.hidden);
    float* __restrict__ out_grad = kd::ptr<float>(args.out_grad);
    const int64_t pc = p.chunk_pixels, nt = tiles(pc);
    const int64_t m0 = (blockIdx.x / nt) * kTile, n0 = (blockIdx.x % nt) * kTile;
    float acc[kPer][kPer];
    gemm_tile(
        m0, p.ct, n0, pc, 0, p.ch, [&](int64_t o, int64_t h) { return w2[o * p.ch + h]; },
        [&](int64_t h, int64_t q) { return fmaxf(hidden[h * pc + q], 0.f); }, acc);
    const bool want_grad = (p.flags & KD_WANT_GRAD_STUDENT) != 0;
    const float scale = want_grad ? kd::grad_factor(p.grad_scale, p.flags, args.upstream) : 0.f;
    double squares = 0.0;  // this thread's outputs, in a fixed order
    for_each_output(m0, p.ct, n0, pc, acc, [&](int64_t o, int64_t q, float v) {
        const float e = (v + b2[o]) - kd::to_float(teacher[nchw(o, p.pixel_begin + q, p.ct, p.plane)]);
        squares += static_cast<double>(e) * e;
        if (want_grad) out_grad[o * pc + q] = scale * e;
    });
    if (p.flags & KD_WANT_LOSS) {
        const double total = kd::block_sum(squares);
        kd::sum_into_loss(static_cast<float>(total), p.loss_block_base + blockIdx.x,
                          static_cast<unsigned int>(p.loss_blocks), kd::ptr<float>(args.loss_partials),
                          kd::ptr<unsigned int>(args.counter), kd::ptr<float>(args.loss), p.loss_scale);
    }
}

// The weight-gradient GEMMs reduce over a split of the chunk's pixels: grid = splits x M tiles x N tiles.
struct SplitTile {
    int64_t m0, n0, k_begin, k_end;
    int slot;
};

__device__ __forceinline__ SplitTile split_tile(const KdCwtParams& p, int64_t m_len, int64_t n_len) {
    const int64_t mt = tiles(m_len), nt = tiles(n_len);
    const int64_t s = blockIdx.x / (mt * nt), rest = blockIdx.x % (mt * nt);
    const int64_t k_begin = s * p.split_len;
    return SplitTile{(rest / nt) * kTile, (rest % nt) * kTile, k_begin, min(k_begin + p.split_len, p.chunk_pixels),
                     p.slot_base + static_cast<int>(s)};
}

// [dW2 | db2] over one split: M = Ct, N = Ch + 1 (the ones column), K = the split's pixels.
template <typename T> __device__ void cwt_grad_w2(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const float* __restrict__ hidden = kd::ptr<const float>(args.hidden);
    const float* __restrict__ out_grad = kd::ptr<const float>(args.out_grad);
    const int64_t pc = p.chunk_pixels, cols = static_cast<int64_t>(p.ch) + 1;
    const SplitTile t = split_tile(p, p.ct, cols);
    float acc[kPer][kPer];
    gemm_tile(
        t.m0, p.ct, t.n0, cols, t.k_begin, t.k_end, [&](int64_t o, int64_t q) { return out_grad[o * pc + q]; },
        [&](int64_t q, int64_t h) { return h < p.ch ? fmaxf(hidden[h * pc + q], 0.f) : 1.f; }, acc);
    float* slot = kd::ptr<float>(args.partials) + static_cast<int64_t>(t.slot) * p.ct * cols;
    for_each_output(t.m0, p.ct, t.n0, cols, acc, [&](int64_t o, int64_t h, float v) { slot[o * cols + h] = v; });
}

// dA = (W2^T dY) * 1[A > 0], over A: M = Ch, N = chunk pixels, K = Ct.
template <typename T> __device__ void cwt_grad_hidden(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const float* __restrict__ w2 = kd::ptr<const float>(args.w2);
    const float* __restrict__ out_grad = kd::ptr<const float>(args.out_grad);
    float* hidden = kd::ptr<float>(args.hidden);
    const int64_t pc = p.chunk_pixels, nt = tiles(pc);
    const int64_t m0 = (blockIdx.x / nt) * kTile, n0 = (blockIdx.x % nt) * kTile;
    float acc[kPer][kPer];
    gemm_tile(
        m0, p.ch, n0, pc, 0, p.ct, [&](int64_t h, int64_t o) { return w2[o * p.ch + h]; },
        [&](int64_t o, int64_t q) { return out_grad[o * pc + q]; }, acc);
    // ReLU'(0) = 0, as PyTorch.
    for_each_output(m0, p.ch, n0, pc, acc, [&](int64_t h, int64_t q, float v) {
        float& a = hidden[h * pc + q];
        a = a > 0.f ? v : 0.f;
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
    gemm_tile(
        t.m0, p.ch, t.n0, cols, t.k_begin, t.k_end, [&](int64_t h, int64_t q) { return hidden[h * pc + q]; },
        [&](int64_t q, int64_t c) {
            return c < p.cs ? kd::to_float(x[nchw(c, p.pixel_begin + q, p.cs, p.plane)]) : 1.f;
        },
        acc);
    const int64_t w2_floats = static_cast<int64_t>(p.slots) * p.ct * (static_cast<int64_t>(p.ch) + 1);
    float* slot = kd::ptr<float>(args.partials) + w2_floats + static_cast<int64_t>(t.slot) * p.ch * cols;
    for_each_output(t.m0, p.ch, t.n0, cols, acc, [&](int64_t h, int64_t c, float v) { slot[h * cols + c] = v; });
}

// dX = W1^T dA: M = Cs, N = chunk pixels, K = Ch.
template <typename T> __device__ void cwt_grad_student(const KdCwtArgs& args) {
    const KdCwtParams& p = args.p;
    const float* __restrict__ w1 = kd::ptr<const float>(args.w1);
    const float* __restrict__ hidden = kd::ptr<const float>(args.hidden);
    T* __restrict__ gx = kd::ptr<T>(args.grad_student);
    const int64_t pc = p.chunk_pixels, nt = tiles(pc);
    const int64_t m0 = (blockIdx.x / nt) * kTile, n0 = (blockIdx.x % nt) * kTile;
    float acc[kPer][kPer];
    gemm_tile(
        m0, p.cs, n0, pc, 0, p.ch, [&](int64_t c, int64_t h) { return w1[h * p.cs + c]; },
        [&](int64_t h, int64_t q) { return hidden[h * pc + q]; }, acc);
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    for_each_output(m0, p.cs, n0, pc, acc, [&](int64_t c, int64_t q, float v) {
        kd::store_grad(gx + nchw(c, p.pixel_begin + q, p.cs, p.plane), v, accumulate);
    });
}

// The parameter gradients: element e of [dW2 | db2] then of [dW1 | db1] sums its slots in slot order.
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
        gemm_tile(
            h0, p.ch, q0, q_end, 0, p.cs, [&](int64_t h, int64_t c) { return w1[h * p.cs + c]; },
            [&](int64_t c, int64_t q) { return kd::to_float(x[nchw(c, p.pixel_begin + q, p.cs, p.plane)]); }, acc);
        for_each_output(h0, p.ch, q0, q_end, acc,
                        [&](int64_t h, int64_t q, float v) { z[h * tp + (q - q0)] = fmaxf(v + b1[h], 0.f); });
    }
    __syncthreads();  // Z complete before any thread reads it
    double squares = 0.0;
    for (int64_t o0 = 0; o0 < p.ct; o0 += kTile) {
        gemm_tile(
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

#define KD_CWT_ENTRY_POINTS(T, NAME)                                                                   \
    KD_ENTRY(cwt_hidden_##NAME, KdCwtArgs, kBlockThreads) { cwt_hidden<T>(a); }                       \
    KD_ENTRY(cwt_output_##NAME, KdCwtArgs, kBlockThreads) { cwt_output<T>(a); }                       \
    KD_ENTRY(cwt_grad_w2_##NAME, KdCwtArgs, kBlockThreads) { cwt_grad_w2<T>(a); }                     \
    KD_ENTRY(cwt_grad_hidden_##NAME, KdCwtArgs, kBlockThreads) { cwt_grad_hidden<T>(a); }             \
    KD_ENTRY(cwt_grad_w1_##NAME, KdCwtArgs, kBlockThreads) { cwt_grad_w1<T>(a); }                     \
    KD_ENTRY(cwt_grad_student_##NAME, KdCwtArgs, kBlockThreads) { cwt_grad_student<T>(a); }           \
    KD_ENTRY(cwt_combine_##NAME, KdCwtArgs, kBlockThreads) { cwt_combine<T>(a); }                     \
    KD_ENTRY(cwt_forward_fused_##NAME, KdCwtArgs, kBlockThreads) { cwt_forward_fused<T>(a); }

KD_FOR_EACH_DTYPE(KD_CWT_ENTRY_POINTS)
