/*
 * The statistic every softmax-KL kernel rests on (CWD's rows, pixel KD's pixels, ICSD's columns): for one
 * part of a softmax axis, the maxima mS, mT of the student and the teacher (input units), the sums
 * sS = sum_i 2^(k (S_i - mS)) and sT likewise (k = log2(e) / tau), and A = sum_i 2^(k (T_i - mT)) (T_i - S_i).
 * KL(pT || pS) needs nothing else:
 *     KL / ln2 = k (A / sT - (mT - mS)) + log2(sS) - log2(sT),
 * because sum_i pT_i (log pT_i - log pS_i) = sum_i pT_i (zT_i - zS_i) - LSE_T + LSE_S and sum_i pT_i = 1.
 * Every term is a difference of inputs, never an absolute logit, so large logits (|x| ~ 1e4) lose no accuracy,
 * and a one-element axis or S == T gives exactly 0. The statistics of two parts merge exactly (rescale the
 * sums and A by 2^(k (m_part - m_merged))), so an axis can be split across threads and blocks, in a fixed
 * order, deterministically. log p is always k (x - m) - log2(s) (times ln2), never log(softmax(z)): finite
 * where a probability underflows to 0 in fp32.
 */
#ifndef KD_KERNELS_SOFTMAX_KL_CUH
#define KD_KERNELS_SOFTMAX_KL_CUH

#include "common.cuh"

namespace kd {

// Statistic of a part of a row (see above). Maxima in input units (float); sums in double, because the KL
// of a student close to its teacher is a small difference of log2(sS) and log2(sT), which float sums over
// many terms would leave with a relative error of ~1e-3 (tests/emulator.rs, *_close_student_*).
struct SoftmaxKl {
    float ms;   // student max
    float mt;   // teacher max
    double ss;  // sum 2^(k (S - ms))
    double st;  // sum 2^(k (T - mt))
    double a;   // sum 2^(k (T - mt)) * (T - S)
};

// Each statistic is stored in the workspace as 5 doubles: ms, mt, ss, st, a.
constexpr int kStatDoubles = KD_CWD_STAT_DOUBLES;

__device__ __forceinline__ SoftmaxKl softmax_kl_empty() { return {-CUDART_INF_F, -CUDART_INF_F, 0.0, 0.0, 0.0}; }

__device__ __forceinline__ SoftmaxKl merge(SoftmaxKl x, SoftmaxKl y, float k) {
    SoftmaxKl r;
    r.ms = fmaxf(x.ms, y.ms);
    r.ss = r.ms == -CUDART_INF_F ? 0.0 : x.ss * exp2f((x.ms - r.ms) * k) + y.ss * exp2f((y.ms - r.ms) * k);
    r.mt = fmaxf(x.mt, y.mt);
    if (r.mt == -CUDART_INF_F) {  // both empty: avoid (-inf) - (-inf)
        r.st = 0.0;
        r.a = 0.0;
    } else {
        const double fx = exp2f((x.mt - r.mt) * k), fy = exp2f((y.mt - r.mt) * k);
        r.st = x.st * fx + y.st * fy;
        r.a = x.a * fx + y.a * fy;
    }
    return r;
}

__device__ __forceinline__ void store_stat(double* out, const SoftmaxKl& st) {
    out[0] = st.ms;
    out[1] = st.mt;
    out[2] = st.ss;
    out[3] = st.st;
    out[4] = st.a;
}

// Reads a statistic another block wrote (through L2: L1 is not coherent across SMs).
__device__ __forceinline__ SoftmaxKl load_stat(const double* in) {
    return {static_cast<float>(__ldcg(in)), static_cast<float>(__ldcg(in + 1)), __ldcg(in + 2), __ldcg(in + 3),
            __ldcg(in + 4)};
}

// Folds K values in with one rescale: the max of the K values first, then one exp2f per value. The
// rescale factor is exactly 1 whenever the running max does not move.
template <int K>
__device__ __forceinline__ void accumulate(SoftmaxKl& st, const float (&xs)[K], const float (&xt)[K], float k) {
    float ms = st.ms, mt = st.mt;
#pragma unroll
    for (int i = 0; i < K; ++i) {
        ms = fmaxf(ms, xs[i]);
        mt = fmaxf(mt, xt[i]);
    }
    double ss = st.ss * exp2f((st.ms - ms) * k);  // exp2f(-inf) = 0 on the first call
    const double ft = exp2f((st.mt - mt) * k);
    double sT = st.st * ft, a = st.a * ft;
#pragma unroll
    for (int i = 0; i < K; ++i) {
        ss += exp2f((xs[i] - ms) * k);
        const float e = exp2f((xt[i] - mt) * k);
        sT += e;
        a = fma(static_cast<double>(e), static_cast<double>(xt[i] - xs[i]), a);
    }
    st = {ms, mt, ss, sT, a};
}

// Merges the statistics of every thread of the block; the result is valid in thread 0. Butterfly over the
// warp, then thread 0 over the warp results: a fixed combination order.
__device__ __forceinline__ SoftmaxKl block_merge(SoftmaxKl v, float k) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        SoftmaxKl o;
        o.ms = __shfl_xor_sync(0xffffffffu, v.ms, offset);
        o.mt = __shfl_xor_sync(0xffffffffu, v.mt, offset);
        o.ss = __shfl_xor_sync(0xffffffffu, v.ss, offset);
        o.st = __shfl_xor_sync(0xffffffffu, v.st, offset);
        o.a = __shfl_xor_sync(0xffffffffu, v.a, offset);
        // Combine lower lane first so both partners compute the identical value.
        v = (threadIdx.x & offset) ? merge(o, v, k) : merge(v, o, k);
    }
    KD_SHARED_ARRAY(SoftmaxKl, warp_stats, kWarps);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_stats[warp] = v;
    __syncthreads();
    SoftmaxKl total = softmax_kl_empty();
    if (threadIdx.x == 0) {
        for (int w = 0; w < kWarps; ++w) total = merge(total, warp_stats[w], k);
    }
    __syncthreads();  // warp_stats may be reused by the next call
    return total;
}

// What the gradient of a row needs, once its statistic is complete.
struct SoftmaxKlValues {
    float ms, mt;            // the row's maxima
    float log2_ss, log2_st;  // log2 of its sums
    float kl;                // KL_r (natural log)
};

__device__ __forceinline__ SoftmaxKlValues softmax_kl_values(const SoftmaxKl& st, float k) {
    const double kl2 = k * (st.a / st.st - static_cast<double>(st.mt - st.ms)) + log2(st.ss) - log2(st.st);
    return {st.ms, st.mt, static_cast<float>(log2(st.ss)), static_cast<float>(log2(st.st)),
            static_cast<float>(kLn2 * kl2)};
}

}  // namespace kd

#endif  // KD_KERNELS_SOFTMAX_KL_CUH
