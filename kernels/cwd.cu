/*
 * Channel-wise distillation (Shu et al., ICCV 2021), forward and backward.
 *
 * Each row r = (n, c) is a softmax over the H*W spatial positions of z = x / tau, and
 *     KL_r = sum_i pT_i (log pT_i - log pS_i),   loss = lambda * tau^2 / (N*C) * sum_r KL_r,
 *     d loss / d S_i = lambda * tau / (N*C) * (pS_i - pT_i)      (teacher constant),
 *     d loss / d T_i = lambda * tau / (N*C) * pT_i (log pT_i - log pS_i - KL_r).
 *
 * The statistic everything rests on: per row, the maxima mS, mT (input units), the sums
 * sS = sum_i 2^(k (S_i - mS)) and sT likewise (k = log2(e)/tau), and A = sum_i 2^(k (T_i - mT)) (T_i - S_i).
 * KL needs nothing else:
 *     KL_r / ln2 = k (A / sT - (mT - mS)) + log2(sS) - log2(sT),
 * because sum_i pT_i (log pT_i - log pS_i) = sum_i pT_i (zT_i - zS_i) - LSE_T + LSE_S and sum_i pT_i = 1.
 * Every term is a difference of inputs, never an absolute logit, so large logits (|x| ~ 1e4) lose no
 * accuracy, and a one-element row or S == T gives exactly 0. Statistics of two parts of a row merge exactly
 * (rescale sums and A by 2^(k (m_part - m_merged))), so a row can be split across blocks. log p is always
 * k (x - m) - log2(s) (times ln2), never log(softmax(z)): finite where a probability underflows to 0 in
 * fp32 (TorchDistiller's form gives NaN there, docs/losses.md §1.6).
 *
 * Two implementations of the same arithmetic:
 *
 * 1. `cwd_fused_*`, single pass, one launch (the default when it applies). Rows are few and long (N*C ~ 150,
 *    H*W up to 512*1024), so each row is split into chunks of KD_BLOCK_THREADS * KD_CWD_FUSED_VECS 16-byte
 *    vectors, and a block keeps its chunk of S and T *in registers* while the blocks of the same row exchange
 *    their chunk statistics through global memory and wait for each other; each block then merges the row's
 *    statistics (the same fixed order in every block, so every block gets bitwise the same row values) and
 *    writes its chunk's gradient from the registers. S and T are read from DRAM once and the gradient written
 *    once: the minimal traffic. Waiting for other blocks is only legal when they are resident, so the kernel
 *    is launched cooperatively with at most as many blocks as fit on the GPU at once, as a persistent grid:
 *    block b takes work items b, b + grid, ... (item = row * chunks + chunk). The grid is a multiple of the
 *    chunks per row, so a block keeps one chunk index and the blocks of a row move from row to row together;
 *    and every item a waiting block depends on belongs to the same row, whose other items are either earlier
 *    (done) or held by blocks that reach them without waiting on anything later, so the wait always ends.
 *    Applies when a row's chunks fit in the resident grid (rows of up to ~1.6M f32 or 3.2M 16-bit elements
 *    on an H100: 396 resident blocks). The per-row counters return to 0 before the kernel ends.
 *
 * 2. `cwd_stats_*` then `cwd_finish_*`, two launches, for rows too long for the resident grid (or when the
 *    device cannot launch cooperatively). The first reads S and T once and writes each chunk's statistics;
 *    the second merges them per row and writes the gradient of its chunk (a second read of S and T).
 *
 * The loss: the row's KL is published by its chunk-0 block; the last block to finish (a ticket counter, no
 * float atomics) sums the N*C row values in a fixed order, in double. Deterministic: bitwise the same
 * results run to run for the same inputs, grid and path.
 */
#include "cwd.h"  // before softmax_kl.cuh, whose statistic has KD_CWD_STAT_DOUBLES doubles
#include "softmax_kl.cuh"

namespace {

using kd::kBlockThreads;
using kd::kLn2;

// d loss / d S and d loss / d T at one position, `scale` = lambda * tau / (N*C) (times the upstream gradient).
__device__ __forceinline__ void grad_point(const kd::SoftmaxKlValues& r, float k, float scale, float xs, float xt, float& g_s,
                                           float& g_t) {
    const float ls = (xs - r.ms) * k - r.log2_ss;  // log2 of the probabilities
    const float lt = (xt - r.mt) * k - r.log2_st;
    const float ps = exp2f(ls), pt = exp2f(lt);
    g_s = scale * (ps - pt);
    g_t = scale * pt * (kLn2 * (lt - ls) - r.kl);
}


// =========================================================================================================
// 1. Single pass.

// The single pass's chunk geometry: how many elements a thread and a block hold, and which elements of a
// vector lie in the row.
template <typename T> struct ChunkSizes {
    static constexpr int V = kd::Vec<T>::kLen;                // elements per 16-byte vector
    static constexpr int kVecs = KD_CWD_FUSED_VECS;           // vectors per thread and tensor
    static constexpr int kStride = kBlockThreads * V;         // between a thread's consecutive vectors
    static constexpr int kChunk = kStride * kVecs;            // elements per block

    // Of the vector at chunk position q0, the elements [lo, hi) lie in the row, whose part in this chunk is
    // the positions [begin, end).
    static __device__ __forceinline__ int lo(int begin, int q0) { return clamp_to_vec(begin - q0); }
    static __device__ __forceinline__ int hi(int end, int q0) { return clamp_to_vec(end - q0); }
    static __device__ __forceinline__ int clamp_to_vec(int x) { return x <= 0 ? 0 : (x >= V ? V : x); }
};

// Loads the V elements at `p`, of which [lo, hi) exist (zeros elsewhere): one aligned vector load where the
// whole vector exists and the pointers allow it.
template <typename T>
__device__ __forceinline__ kd::Packed<T> load_group(const T* p, int lo, int hi, bool vector_ok) {
    constexpr int V = kd::Vec<T>::kLen;
    if (vector_ok && lo == 0 && hi == V) return kd::Packed<T>::load(p);
    kd::Packed<T> packed = kd::Packed<T>::zero();
#pragma unroll
    for (int i = 0; i < V; ++i) {
        if (i >= lo && i < hi) packed.set(i, p[i]);
    }
    return packed;
}

template <typename T>
__device__ __forceinline__ void store_group(T* p, int lo, int hi, bool vector_ok, float (&g)[kd::Vec<T>::kLen],
                                            bool accumulate) {
    constexpr int V = kd::Vec<T>::kLen;
    if (vector_ok && lo == 0 && hi == V) {
        kd::store_grad_vec(p, g, accumulate);
        return;
    }
#pragma unroll
    for (int i = 0; i < V; ++i) {
        if (i >= lo && i < hi) kd::store_grad(p + i, g[i], accumulate);
    }
}

// Workspace: `partials` holds rows * chunks statistics; `row_sync` two counters per row (blocks arrived with
// their statistic, blocks done reading them), both zero between launches.
template <typename T> __device__ void cwd_fused(const KdCwdArgs& args) {
    const T* __restrict__ student = kd::ptr<const T>(args.student);
    const T* __restrict__ teacher = kd::ptr<const T>(args.teacher);
    T* __restrict__ grad_student = kd::ptr<T>(args.grad_student);
    T* __restrict__ grad_teacher = kd::ptr<T>(args.grad_teacher);
    double* __restrict__ partials = kd::ptr<double>(args.partials);
    unsigned int* __restrict__ row_sync = kd::ptr<unsigned int>(args.row_sync);
    const KdCwdParams& p = args.p;
    using Sizes = ChunkSizes<T>;
    constexpr int V = Sizes::V;
    // The waits below end only for a grid of whole rows (see the top of this file): stop rather than hang.
    if (gridDim.x % p.chunks != 0) __trap();
    const float k = p.log2e_over_tau;
    const int64_t items = p.rows * p.chunks;
    const bool want_gs = (p.flags & KD_WANT_GRAD_STUDENT) != 0, want_gt = (p.flags & KD_WANT_GRAD_TEACHER) != 0;
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;

    for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
        const int64_t r = item / p.chunks;
        const int64_t chunk = item - r * p.chunks;
        const int64_t offset = r * p.row_len;
        bool vector_ok = kd::same_alignment(student + offset, teacher + offset);
        if (want_gs) vector_ok = vector_ok && kd::same_alignment(student + offset, grad_student + offset);
        if (want_gt) vector_ok = vector_ok && kd::same_alignment(student + offset, grad_teacher + offset);
        // Chunks tile the row padded in front to the 16-byte boundary at or below its start, so that every
        // vector of every thread is aligned: `lead` padding positions precede the row. Chunk position q is
        // row element chunk * kChunk - lead + q; the row occupies the positions [begin, end) of this chunk.
        const int lead = vector_ok ? static_cast<int>((reinterpret_cast<uintptr_t>(student + offset) & 15u) / sizeof(T)) : 0;
        const int64_t chunk_first = chunk * Sizes::kChunk - lead;  // row element at chunk position 0
        const int begin = chunk == 0 ? lead : 0;
        const int end = static_cast<int>(min(static_cast<int64_t>(Sizes::kChunk), p.row_len - chunk_first));
        const int64_t base = offset + chunk_first;  // tensor element at chunk position 0
        const int q_thread = static_cast<int>(threadIdx.x) * V;

        // Load the chunk once; it stays in registers until its gradient is written.
        kd::Packed<T> xs[Sizes::kVecs], xt[Sizes::kVecs];
#pragma unroll
        for (int g = 0; g < Sizes::kVecs; ++g) {
            const int q0 = q_thread + g * Sizes::kStride;
            const int lo = Sizes::lo(begin, q0), hi = Sizes::hi(end, q0);
            xs[g] = load_group(student + base + q0, lo, hi, vector_ok);
            xt[g] = load_group(teacher + base + q0, lo, hi, vector_ok);
        }

        // Calls f(s, t) on every element of the chunk this thread holds that lies in the row.
        const auto for_each_held = [&](auto&& f) {
#pragma unroll
            for (int g = 0; g < Sizes::kVecs; ++g) {
                const int q0 = q_thread + g * Sizes::kStride;
                const int lo = Sizes::lo(begin, q0), hi = Sizes::hi(end, q0);
#pragma unroll
                for (int i = 0; i < V; ++i) {
                    if (i >= lo && i < hi) f(xs[g].get(i), xt[g].get(i));
                }
            }
        };

        // The chunk's statistic, from registers: its maxima, then its sums relative to them (per thread in
        // float over at most KD_CWD_FUSED_VECS * V terms, then over the block in double).
        float ms = -CUDART_INF_F, mt = -CUDART_INF_F;
        for_each_held([&](float vs, float vt) {
            ms = fmaxf(ms, vs);
            mt = fmaxf(mt, vt);
        });
        kd::block_max2(ms, mt);
        float ts = 0.f, tt = 0.f, ta = 0.f;
        for_each_held([&](float vs, float vt) {
            ts += exp2f((vs - ms) * k);
            const float e = exp2f((vt - mt) * k);
            tt += e;
            ta = fmaf(e, vt - vs, ta);
        });
        double ss = ts, st = tt, a = ta;
        kd::block_sum3(ss, st, a);

        // Publish it, wait for the row's other chunks, and merge all of them: the row's maxima, then the
        // chunks' sums rescaled to them, in the same order in every block of the row.
        unsigned int* arrived = row_sync + 2 * r;
        unsigned int* departed = arrived + 1;
        if (threadIdx.x == 0) {
            kd::store_stat(partials + item * kd::kStatDoubles, kd::SoftmaxKl{ms, mt, ss, st, a});
            __threadfence();  // the statistic before the ticket
            atomicAdd(arrived, 1u);
        }
        kd::block_wait_at_least(arrived, static_cast<unsigned int>(p.chunks));
        const double* row_partials = partials + r * p.chunks * kd::kStatDoubles;
        float rms = -CUDART_INF_F, rmt = -CUDART_INF_F;
        for (int64_t c = threadIdx.x; c < p.chunks; c += kBlockThreads) {
            rms = fmaxf(rms, static_cast<float>(__ldcg(row_partials + c * kd::kStatDoubles)));
            rmt = fmaxf(rmt, static_cast<float>(__ldcg(row_partials + c * kd::kStatDoubles + 1)));
        }
        kd::block_max2(rms, rmt);
        double rss = 0.0, rst = 0.0, ra = 0.0;
        for (int64_t c = threadIdx.x; c < p.chunks; c += kBlockThreads) {
            const kd::SoftmaxKl part = kd::load_stat(row_partials + c * kd::kStatDoubles);
            // An empty chunk (max -inf, sums 0) adds nothing; exp2f(-inf) = 0 keeps it so.
            rss += part.ss * exp2f((part.ms - rms) * k);
            const double f = exp2f((part.mt - rmt) * k);
            rst += part.st * f;
            ra += part.a * f;
        }
        kd::block_sum3(rss, rst, ra);
        const kd::SoftmaxKlValues rv = kd::softmax_kl_values(kd::SoftmaxKl{rms, rmt, rss, rst, ra}, k);  // the same in every thread
        if (threadIdx.x == 0) {
            // The last block of the row to get here resets its counters for the next launch: every block of
            // the row has passed its wait by then.
            if (atomicAdd(departed, 1u) == static_cast<unsigned int>(p.chunks) - 1u) {
                *arrived = 0u;
                *departed = 0u;
            }
        }

        if (want_gs || want_gt) {
            const float scale = kd::grad_factor(p.grad_scale, p.flags, args.upstream);
#pragma unroll
            for (int g = 0; g < Sizes::kVecs; ++g) {
                const int q0 = q_thread + g * Sizes::kStride;
                const int lo = Sizes::lo(begin, q0), hi = Sizes::hi(end, q0);
                float g_s[V], g_t[V];
#pragma unroll
                for (int i = 0; i < V; ++i) grad_point(rv, k, scale, xs[g].get(i), xt[g].get(i), g_s[i], g_t[i]);
                if (want_gs) store_group(grad_student + base + q0, lo, hi, vector_ok, g_s, accumulate);
                if (want_gt) store_group(grad_teacher + base + q0, lo, hi, vector_ok, g_t, accumulate);
            }
        }

        // The row's chunk-0 block publishes KL_r; the last of the N*C rows sums them into the loss.
        if ((p.flags & KD_WANT_LOSS) && chunk == 0) {
            kd::sum_into_loss(rv.kl, r, static_cast<unsigned int>(p.rows), kd::ptr<float>(args.row_kl),
                          kd::ptr<unsigned int>(args.counter), kd::ptr<float>(args.loss), p.loss_scale);
        }
    }
}

// =========================================================================================================
// 2. Two passes.

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
    kd::SoftmaxKl st;
    __device__ __forceinline__ void scalar(int64_t i) {
        const float xs[1] = {kd::to_float(s[i])};
        const float xt[1] = {kd::to_float(t[i])};
        kd::accumulate<1>(st, xs, xt, k);
    }
    __device__ __forceinline__ void vector(int64_t i) {
        constexpr int V = kd::Vec<T>::kLen;
        float xs[V], xt[V];
        kd::load_vec(s + i, xs);
        kd::load_vec(t + i, xt);
        kd::accumulate<V>(st, xs, xt, k);
    }
};

template <typename T> __device__ void cwd_stats(const KdCwdArgs& args) {
    const T* __restrict__ student = kd::ptr<const T>(args.student);
    const T* __restrict__ teacher = kd::ptr<const T>(args.teacher);
    double* __restrict__ partials = kd::ptr<double>(args.partials);
    const KdCwdParams& p = args.p;
    const int64_t row = blockIdx.x / p.chunks;
    const int64_t chunk = blockIdx.x % p.chunks;
    const int64_t begin = chunk * p.chunk_len;
    const int64_t end = min(begin + p.chunk_len, p.row_len);
    const T* s = student + row * p.row_len;
    const T* t = teacher + row * p.row_len;
    StatsBody<T> body{s, t, p.log2e_over_tau, kd::softmax_kl_empty()};
    for_chunk(s, begin, end, kd::same_alignment(s, t), body);
    const kd::SoftmaxKl total = kd::block_merge(body.st, p.log2e_over_tau);
    if (threadIdx.x == 0) kd::store_stat(partials + (row * p.chunks + chunk) * kd::kStatDoubles, total);
}

template <typename T> struct GradBody {
    const T* s;
    const T* t;
    T* gs;  // may be null
    T* gt;  // may be null
    float k;
    kd::SoftmaxKlValues row;
    float scale;
    bool accumulate;
    __device__ __forceinline__ void scalar(int64_t i) {
        float g_s, g_t;
        grad_point(row, k, scale, kd::to_float(s[i]), kd::to_float(t[i]), g_s, g_t);
        if (gs) kd::store_grad(gs + i, g_s, accumulate);
        if (gt) kd::store_grad(gt + i, g_t, accumulate);
    }
    __device__ __forceinline__ void vector(int64_t i) {
        constexpr int V = kd::Vec<T>::kLen;
        float xs[V], xt[V], g_s[V], g_t[V];
        kd::load_vec(s + i, xs);
        kd::load_vec(t + i, xt);
#pragma unroll
        for (int j = 0; j < V; ++j) grad_point(row, k, scale, xs[j], xt[j], g_s[j], g_t[j]);
        if (gs) kd::store_grad_vec(gs + i, g_s, accumulate);
        if (gt) kd::store_grad_vec(gt + i, g_t, accumulate);
    }
};

template <typename T> __device__ void cwd_finish(const KdCwdArgs& args) {
    const T* __restrict__ student = kd::ptr<const T>(args.student);
    const T* __restrict__ teacher = kd::ptr<const T>(args.teacher);
    const double* __restrict__ partials = kd::ptr<const double>(args.partials);
    T* __restrict__ grad_student = kd::ptr<T>(args.grad_student);
    T* __restrict__ grad_teacher = kd::ptr<T>(args.grad_teacher);
    const KdCwdParams& p = args.p;
    // Launched with p.chunks blocks per row when a gradient is wanted, else one block per row.
    const int64_t launched_chunks = (p.flags & (KD_WANT_GRAD_STUDENT | KD_WANT_GRAD_TEACHER)) ? p.chunks : 1;
    const int64_t r = blockIdx.x / launched_chunks;
    const int64_t chunk = blockIdx.x % launched_chunks;

    KD_SHARED(kd::SoftmaxKlValues, row);
    const float k = p.log2e_over_tau;
    if (threadIdx.x == 0) {
        // Written by the previous launch: plain loads are coherent.
        kd::SoftmaxKl st = kd::softmax_kl_empty();
        const double* in = partials + r * p.chunks * kd::kStatDoubles;
        for (int c = 0; c < p.chunks; ++c, in += kd::kStatDoubles) {
            st = kd::merge(st, kd::SoftmaxKl{static_cast<float>(in[0]), static_cast<float>(in[1]), in[2], in[3], in[4]}, k);
        }
        row = kd::softmax_kl_values(st, k);
    }
    __syncthreads();
    const kd::SoftmaxKlValues rv = row;

    if (p.flags & (KD_WANT_GRAD_STUDENT | KD_WANT_GRAD_TEACHER)) {
        const int64_t begin = chunk * p.chunk_len;
        const int64_t end = min(begin + p.chunk_len, p.row_len);
        const int64_t offset = r * p.row_len;
        const T* s = student + offset;
        const T* t = teacher + offset;
        T* gs = (p.flags & KD_WANT_GRAD_STUDENT) ? grad_student + offset : nullptr;
        T* gt = (p.flags & KD_WANT_GRAD_TEACHER) ? grad_teacher + offset : nullptr;
        bool aligned = kd::same_alignment(s, t);
        if (gs) aligned = aligned && kd::same_alignment(s, gs);
        if (gt) aligned = aligned && kd::same_alignment(s, gt);
        GradBody<T> body{s, t, gs, gt, k, rv, kd::grad_factor(p.grad_scale, p.flags, args.upstream),
                         (p.flags & KD_ACCUMULATE_GRAD) != 0};
        for_chunk(s, begin, end, aligned, body);
    }

    if ((p.flags & KD_WANT_LOSS) && chunk == 0) {
        kd::sum_into_loss(rv.kl, r, static_cast<unsigned int>(p.rows), kd::ptr<float>(args.row_kl),
                          kd::ptr<unsigned int>(args.counter), kd::ptr<float>(args.loss), p.loss_scale);
    }
}

}  // namespace

// The single-pass kernel asks for 3 resident blocks per SM (at most 85 registers a thread): its chunk lives
// in registers, and more resident blocks both hide the wait of one row behind the loads of another and
// allow longer rows (a row's chunks must all be resident).
constexpr int kFusedMinBlocksPerSm = 3;

// What scripts/check-ptx requires of these kernels' PTX: the 128-bit accesses they are written for (nvcc once
// split cwd_fused's vector stores silently), 4 vectors of S and T a thread and 4 of each gradient.
// check-ptx: vectors cwd_fused loads=8 stores=8
// check-ptx: vectors cwd_stats loads=2 stores=0
// check-ptx: vectors cwd_finish loads=2 stores=2

#define KD_CWD_ENTRY_POINTS(T, NAME)                                                                    \
    KD_ENTRY(cwd_fused_##NAME, KdCwdArgs, kBlockThreads, kFusedMinBlocksPerSm) { cwd_fused<T>(a); } \
    KD_ENTRY(cwd_stats_##NAME, KdCwdArgs, kBlockThreads) { cwd_stats<T>(a); }                       \
    KD_ENTRY(cwd_finish_##NAME, KdCwdArgs, kBlockThreads) { cwd_finish<T>(a); }

KD_FOR_EACH_DTYPE(KD_CWD_ENTRY_POINTS)
