/*
 * Channel-wise distillation (Shu et al., ICCV 2021), forward and backward in two launches.
 *
 * Each row r = (n, c) is a softmax over the H*W spatial positions of z = x / tau, and
 *     KL_r = sum_i pT_i (log pT_i - log pS_i),   loss = lambda * tau^2 / (N*C) * sum_r KL_r,
 *     d loss / d S_i = lambda * tau / (N*C) * (pS_i - pT_i)      (teacher constant),
 *     d loss / d T_i = lambda * tau / (N*C) * pT_i (log pT_i - log pS_i - KL_r).
 *
 * What is fused, and why it is legal:
 *   1. `cwd_stats_*` reads S and T once and produces, per chunk of a row, the online-softmax statistics of
 *      both (max m and sum s of 2^(k (x - m)), k = log2(e)/tau) and A = sum_i 2^(k (T_i - mT)) (T_i - S_i).
 *      KL needs nothing else:
 *          KL_r / ln2 = k (A / sT - (mT - mS)) + log2(sS) - log2(sT),
 *      because sum_i pT_i (log pT_i - log pS_i) = sum_i pT_i (zT_i - zS_i) - LSE_T + LSE_S and sum_i pT_i = 1.
 *      Every term is a difference of inputs, never an absolute logit, so large logits (|x| ~ 1e4) lose no
 *      accuracy, and a one-element row or S == T gives exactly 0. Rescaling A together with sT when the
 *      running max moves keeps this a single pass.
 *   2. `cwd_finish_*` merges a row's chunk statistics (few, in chunk order), then writes the gradient of its
 *      chunk (second and last read of S and T) and, for the loss, publishes KL_r; the last block to finish
 *      sums the N*C row values in a fixed order. The gradient needs the row's final LSE, which only exists
 *      after pass 1: two launches is the minimum for a row split across blocks.
 * log p is always k (x - m) - log2(s) (times ln2), never log(softmax(z)): finite where a probability
 * underflows to 0 in fp32 (TorchDistiller's form gives NaN there, losses.md 1.5).
 *
 * Grid: one block per (row, chunk), flattened into x (rows can exceed gridDim.y's 65535). Rows are few and
 * long (N*C ~ 150, H*W up to 512*1024), so a row is split into chunks to fill every SM.
 */
#include "common.cuh"

namespace {

using kd::kBlockThreads;
using kd::kLn2;

// Per-thread, then per-block, statistic of one chunk of one row. Maxima in input units (float), sums in
// double: the KL of a student close to its teacher is a small difference of log2(sS) and log2(sT), and fp32
// sums over thousands of terms would leave it a relative error of ~1e-3 (exp2f itself stays in fp32, so the
// cost is three double adds per element, far below the memory time).
struct CwdStat {
    float ms;   // student max
    float mt;   // teacher max
    double ss;  // sum 2^(k (S - ms))
    double st;  // sum 2^(k (T - mt))
    double a;   // sum 2^(k (T - mt)) * (T - S)
};

__device__ __forceinline__ CwdStat cwd_stat_empty() { return {-CUDART_INF_F, -CUDART_INF_F, 0.0, 0.0, 0.0}; }

__device__ __forceinline__ CwdStat merge(CwdStat x, CwdStat y, float k) {
    CwdStat r;
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

// Folds K values in with one rescale: the max of the K values first, then one exp2f per value. The
// rescale factor is exactly 1 whenever the running max does not move.
template <int K>
__device__ __forceinline__ void accumulate(CwdStat& st, const float (&xs)[K], const float (&xt)[K], float k) {
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

__device__ __forceinline__ CwdStat block_merge(CwdStat v, float k) {
    // Butterfly over the warp, then warp 0 over the warp results: a fixed combination order.
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        CwdStat o;
        o.ms = __shfl_xor_sync(0xffffffffu, v.ms, offset);
        o.mt = __shfl_xor_sync(0xffffffffu, v.mt, offset);
        o.ss = __shfl_xor_sync(0xffffffffu, v.ss, offset);
        o.st = __shfl_xor_sync(0xffffffffu, v.st, offset);
        o.a = __shfl_xor_sync(0xffffffffu, v.a, offset);
        // Combine lower lane first so both partners compute the identical value.
        v = (threadIdx.x & offset) ? merge(o, v, k) : merge(v, o, k);
    }
    __shared__ CwdStat warp_stats[kd::kWarps];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_stats[warp] = v;
    __syncthreads();
    CwdStat total = cwd_stat_empty();
    if (threadIdx.x == 0) {
        for (int w = 0; w < kd::kWarps; ++w) total = merge(total, warp_stats[w], k);
    }
    return total;  // valid in thread 0
}

// Calls body.template vector<...>(i) on 16-byte aligned groups and body.scalar(i) on the ragged ends of
// [begin, end), with the block's threads striding. `aligned_ok` is false when the pointers cannot be
// aligned together, in which case everything goes through the scalar path.
template <typename T, typename Body>
__device__ __forceinline__ void for_chunk(const T* row, int64_t begin, int64_t end, bool aligned_ok, Body& body) {
    constexpr int V = kd::Vec<T>::kLen;
    int64_t head_end = end, body_end = end;
    if (aligned_ok) {
        head_end = min(end, begin + kd::elems_to_alignment(row + begin));
        body_end = head_end + (end - head_end) / V * V;
    }
    for (int64_t i = begin + threadIdx.x; i < head_end; i += blockDim.x) body.scalar(i);
    for (int64_t i = head_end + static_cast<int64_t>(threadIdx.x) * V; i < body_end;
         i += static_cast<int64_t>(blockDim.x) * V)
        body.vector(i);
    for (int64_t i = body_end + threadIdx.x; i < end; i += blockDim.x) body.scalar(i);
}

template <typename T> struct StatsBody {
    const T* s;
    const T* t;
    float k;  // log2(e) / tau
    CwdStat st;
    __device__ __forceinline__ void scalar(int64_t i) {
        const float xs[1] = {kd::to_float(s[i])};
        const float xt[1] = {kd::to_float(t[i])};
        accumulate<1>(st, xs, xt, k);
    }
    __device__ __forceinline__ void vector(int64_t i) {
        constexpr int V = kd::Vec<T>::kLen;
        float xs[V], xt[V];
        kd::load_vec(s + i, xs);
        kd::load_vec(t + i, xt);
        accumulate<V>(st, xs, xt, k);
    }
};

// Each partial is 5 doubles: ms, mt, ss, st, a (10 floats of the workspace).
constexpr int kPartialDoubles = 5;

template <typename T>
__device__ void cwd_stats(const T* __restrict__ student, const T* __restrict__ teacher,
                          double* __restrict__ partials, const KdCwdParams p) {
    const int64_t row = blockIdx.x / p.chunks;
    const int64_t chunk = blockIdx.x % p.chunks;
    const int64_t begin = chunk * p.chunk_len;
    const int64_t end = min(begin + p.chunk_len, p.row_len);
    const T* s = student + row * p.row_len;
    const T* t = teacher + row * p.row_len;
    StatsBody<T> body{s, t, p.log2e_over_tau, cwd_stat_empty()};
    for_chunk(s, begin, end, kd::same_alignment(s, t), body);
    const CwdStat total = block_merge(body.st, p.log2e_over_tau);
    if (threadIdx.x == 0) {
        double* out = partials + (row * p.chunks + chunk) * kPartialDoubles;
        out[0] = total.ms;
        out[1] = total.mt;
        out[2] = total.ss;
        out[3] = total.st;
        out[4] = total.a;
    }
}

template <typename T> struct GradBody {
    const T* s;
    const T* t;
    T* gs;  // may be null
    T* gt;  // may be null
    float k;
    float ms, mt;  // the row's maxima
    float log2_ss, log2_st, kl, scale;
    __device__ __forceinline__ void point(float xs, float xt, float& g_s, float& g_t) const {
        const float ls = (xs - ms) * k - log2_ss;  // log2 of the probabilities
        const float lt = (xt - mt) * k - log2_st;
        const float ps = exp2f(ls), pt = exp2f(lt);
        g_s = scale * (ps - pt);
        g_t = scale * pt * (kLn2 * (lt - ls) - kl);
    }
    __device__ __forceinline__ void scalar(int64_t i) {
        float g_s, g_t;
        point(kd::to_float(s[i]), kd::to_float(t[i]), g_s, g_t);
        if (gs) gs[i] = kd::from_float<T>(g_s);
        if (gt) gt[i] = kd::from_float<T>(g_t);
    }
    __device__ __forceinline__ void vector(int64_t i) {
        constexpr int V = kd::Vec<T>::kLen;
        float xs[V], xt[V], g_s[V], g_t[V];
        kd::load_vec(s + i, xs);
        kd::load_vec(t + i, xt);
#pragma unroll
        for (int j = 0; j < V; ++j) point(xs[j], xt[j], g_s[j], g_t[j]);
        if (gs) kd::store_vec(gs + i, g_s);
        if (gt) kd::store_vec(gt + i, g_t);
    }
};

template <typename T>
__device__ void cwd_finish(const T* __restrict__ student, const T* __restrict__ teacher,
                           const double* __restrict__ partials, float* __restrict__ row_kl,
                           unsigned int* __restrict__ counter, float* __restrict__ loss,
                           T* __restrict__ grad_student, T* __restrict__ grad_teacher,
                           const float* __restrict__ upstream, const KdCwdParams p) {
    // Launched with p.chunks blocks per row when a gradient is wanted, else one block per row.
    const int64_t launched_chunks = (p.flags & (KD_WANT_GRAD_STUDENT | KD_WANT_GRAD_TEACHER)) ? p.chunks : 1;
    const int64_t row = blockIdx.x / launched_chunks;
    const int64_t chunk = blockIdx.x % launched_chunks;

    __shared__ CwdStat row_stat;
    __shared__ float row_kl_value;
    const float k = p.log2e_over_tau;
    if (threadIdx.x == 0) {
        CwdStat st = cwd_stat_empty();
        const double* in = partials + row * p.chunks * kPartialDoubles;
        for (int c = 0; c < p.chunks; ++c, in += kPartialDoubles) {
            st = merge(st, CwdStat{static_cast<float>(in[0]), static_cast<float>(in[1]), in[2], in[3], in[4]}, k);
        }
        row_stat = st;
        const double kl2 = k * (st.a / st.st - static_cast<double>(st.mt - st.ms)) + log2(st.ss) - log2(st.st);
        row_kl_value = static_cast<float>(kLn2 * kl2);
    }
    __syncthreads();

    if (p.flags & (KD_WANT_GRAD_STUDENT | KD_WANT_GRAD_TEACHER)) {
        const float up = (p.flags & KD_SCALE_BY_UPSTREAM) ? *upstream : 1.f;
        const int64_t begin = chunk * p.chunk_len;
        const int64_t end = min(begin + p.chunk_len, p.row_len);
        const int64_t offset = row * p.row_len;
        const T* s = student + offset;
        const T* t = teacher + offset;
        T* gs = (p.flags & KD_WANT_GRAD_STUDENT) ? grad_student + offset : nullptr;
        T* gt = (p.flags & KD_WANT_GRAD_TEACHER) ? grad_teacher + offset : nullptr;
        bool aligned = kd::same_alignment(s, t);
        if (gs) aligned = aligned && kd::same_alignment(s, gs);
        if (gt) aligned = aligned && kd::same_alignment(s, gt);
        const CwdStat st = row_stat;
        GradBody<T> body{s,     t,     gs, gt, k, st.ms, st.mt, static_cast<float>(log2(st.ss)),
                         static_cast<float>(log2(st.st)), row_kl_value, p.grad_scale * up};
        for_chunk(s, begin, end, aligned, body);
    }

    if ((p.flags & KD_WANT_LOSS) && chunk == 0) {
        if (threadIdx.x == 0) row_kl[row] = row_kl_value;
        if (kd::is_last_block_done(counter, static_cast<unsigned int>(p.rows))) {
            const double total = kd::block_sum_of_partials(row_kl, p.rows);
            if (threadIdx.x == 0) *loss = static_cast<float>(static_cast<double>(p.loss_scale) * total);
        }
    }
}

}  // namespace

#define KD_CWD_ENTRY_POINTS(T, NAME)                                                                       \
    extern "C" __global__ void __launch_bounds__(kBlockThreads)                                           \
        cwd_stats_##NAME(const T* student, const T* teacher, double* partials, KdCwdParams p) {           \
        cwd_stats<T>(student, teacher, partials, p);                                                       \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(kBlockThreads) cwd_finish_##NAME(                        \
        const T* student, const T* teacher, const double* partials, float* row_kl, unsigned int* counter,  \
        float* loss, T* grad_student, T* grad_teacher, const float* upstream, KdCwdParams p) {             \
        cwd_finish<T>(student, teacher, partials, row_kl, counter, loss, grad_student, grad_teacher,       \
                      upstream, p);                                                                        \
    }

KD_FOR_EACH_DTYPE(KD_CWD_ENTRY_POINTS)
