/*
 * ICSD / AICSD inter-class similarity distillation (docs/losses.md section 3), forward and backward.
 *
 * Both variants share one pipeline; only where a softmax group (a "segment") lies and which products are
 * reduced differ:
 *   official (3.4-3.6): P = softmax along H per column (b, c, w); M = A_max(i,j) - G with
 *                       A_k = (1/B) sum P_k log P_k and G = P P^T / B;
 *   paper (3.7):        P = softmax over the H*W plane per (b, c); M[i,j] = (a_j - X_ij) / B with
 *                       X_ij = sum log P_i P_j, a_j = sum P_j log P_j, zero diagonal.
 * Then Mh = row-normalised M (eps 1e-12), loss = w / (C^2 B) * sum (Mh_S - Mh_T)^2.
 *
 * Kernels, in launch order:
 *   1. icsd_stats:    per segment the max and log of the sum of exp((x - max) / tau), student and teacher
 *                     (official: one thread per column walking down H, threads along W: coalesced; paper: one
 *                     block per plane). log P = (x - max) / tau - log s, never log(softmax): finite where a
 *                     probability underflows (3.8).
 *   2. icsd_gram:     A and G (or a and X) in one pass: each block stages tiles of pixels (P and log P of every
 *                     class) in shared memory and adds the tile's C*C + C products, summed in fp32 over the
 *                     tile, into its own double partial in the workspace. No atomics.
 *   3. icsd_epilogue: one block: sums the partials over the blocks in a fixed order (double), builds M,
 *                     normalises, writes the matrices and the loss, and the backward coefficients
 *                     (Gh, U, then a_k and Wm = U + U^T, or U, its row and column sums), all divided by B.
 *   4. icsd_dot:      the softmax-backward dot per segment, sum P_k Q_k (official: per column, one block owns
 *                     whole columns; paper: per block, combined in fixed order by icsd_grad).
 *   5. icsd_grad:     the gradient, in one more pass, honouring the upstream scalar (folded into the
 *                     coefficients by the epilogue), GradOptions::scale and KD_ACCUMULATE_GRAD.
 * Deterministic: every reduction has a fixed order for a given plan.
 *
 * Traffic per forward+backward: the teacher is read twice (stats, gram); the student four times (stats, gram,
 * dot, grad), one more than the minimum of three: the softmax-along-H backward needs, per column, the dot
 * sum_h P_k Q_k, and Q_k depends on the epilogue's coefficients, so it cannot be formed during the gram pass
 * without C x C statistics per column. Known limits: C <= 2048 (256 * KD_ICSD_MAX_ENTRIES); the epilogue is a
 * single block (C x C work, microseconds for C ~ 20).
 */
#include "common.cuh"
#include "icsd.h"

namespace {

using kd::kBlockThreads;

// Where the statistic of (image b, class c, position l) lives: column (b, c, w) or plane (b, c).
__device__ __forceinline__ int64_t segment(const KdIcsdParams& p, int64_t b, int64_t c, int64_t l) {
    return p.paper ? b * p.classes + c : (b * p.classes + c) * p.width + l % p.width;
}

__device__ __forceinline__ int64_t segments(const KdIcsdParams& p) {
    return p.paper ? p.batch * p.classes : p.batch * p.classes * p.width;
}

// log P of element x of `segment`, from its stats (max, log sum).
__device__ __forceinline__ float log_prob(const float* stats, int64_t seg, float x, float inv_tau) {
    return (x - stats[2 * seg]) * inv_tau - stats[2 * seg + 1];
}

// =========================================================================================================
// 1. Segment statistics.

template <typename T> __device__ void icsd_stats(const KdIcsdArgs& args) {
    const KdIcsdParams& p = args.p;
    const int64_t nseg = segments(p);
    float* stats = kd::ptr<float>(args.stats);
    if (!p.paper) {
        // Threads along W: thread t of the grid takes column t (student) or t - nseg (teacher).
        const int64_t t = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
        if (t >= 2 * nseg) return;
        const int which = t >= nseg;
        const int64_t col = t - which * nseg;
        const T* x = kd::ptr<const T>(which ? args.teacher : args.student);
        const int64_t bc = col / p.width, w = col % p.width;
        const T* base = x + bc * p.plane + w;
        float m = -CUDART_INF_F, s = 0.f;
        for (int64_t h = 0; h < p.height; ++h) {
            const float v = kd::to_float(base[h * p.width]);
            if (v > m) {
                s = s * expf((m - v) * p.inv_tau) + 1.f;
                m = v;
            } else {
                s += expf((v - m) * p.inv_tau);
            }
        }
        stats[2 * t] = m;
        stats[2 * t + 1] = logf(s);
        return;
    }
    // Paper: one block per plane (student planes, then teacher planes).
    const int64_t t = blockIdx.x;
    const int which = t >= nseg;
    const int64_t row = t - which * nseg;
    const T* x = kd::ptr<const T>(which ? args.teacher : args.student) + row * p.plane;
    float m = -CUDART_INF_F, s = 0.f;
    for (int64_t l = threadIdx.x; l < p.plane; l += kBlockThreads) {
        const float v = kd::to_float(x[l]);
        if (v > m) {
            s = s * expf((m - v) * p.inv_tau) + 1.f;
            m = v;
        } else {
            s += expf((v - m) * p.inv_tau);
        }
    }
    float bm = m, unused = 0.f;
    kd::block_max2(bm, unused);
    const double scaled = m == -CUDART_INF_F ? 0.0 : static_cast<double>(s) * exp(static_cast<double>((m - bm) * p.inv_tau));
    const double total = kd::block_sum(scaled);
    if (threadIdx.x == 0) {
        stats[2 * t] = bm;
        stats[2 * t + 1] = static_cast<float>(log(total));
    }
}

// =========================================================================================================
// 2. Class statistics: entries e < C*C are (i, j) = sum L_i P_j with L = P (official) or log P (paper);
// entries C*C + k are sum P_k log P_k.

template <typename T> __device__ void icsd_gram(const KdIcsdArgs& args) {
    const KdIcsdParams& p = args.p;
    KD_SHARED_ARRAY(float, tile, KD_ICSD_TILE_FLOATS);
    const int which = blockIdx.x >= static_cast<unsigned>(p.gram_blocks);
    const int64_t blk = blockIdx.x - which * p.gram_blocks;
    const T* x = kd::ptr<const T>(which ? args.teacher : args.student);
    const float* stats = kd::ptr<const float>(args.stats) + which * 2 * segments(p);
    double* partial = kd::ptr<double>(args.partials) + (which * p.gram_blocks + blk) * (p.classes * p.classes + p.classes);
    const int C = p.classes, TP = p.tile_pixels;
    const int RS = TP + 1;  // row stride: a warp reading one pixel of many classes hits distinct banks
    const int64_t E = static_cast<int64_t>(C) * C + C;
    const int64_t pixels = p.batch * p.plane;
    float* tp = tile;              // P[c][q] at c * RS + q
    float* tl = tile + C * RS;     // log P[c][q]
    for (int64_t e = threadIdx.x; e < E; e += kBlockThreads) partial[e] = 0.0;
    for (int64_t tix = 0; tix < p.tiles_per_block; ++tix) {
        const int64_t first = (blk * p.tiles_per_block + tix) * TP;
        if (first >= pixels) break;
        for (int64_t f = threadIdx.x; f < static_cast<int64_t>(C) * TP; f += kBlockThreads) {
            const int c = static_cast<int>(f / TP), q = static_cast<int>(f % TP);
            const int64_t px = first + q;
            float lp = -CUDART_INF_F, pr = 0.f;
            if (px < pixels) {
                const int64_t b = px / p.plane, l = px % p.plane;
                const float v = kd::to_float(x[(b * C + c) * p.plane + l]);
                lp = log_prob(stats, segment(p, b, c, l), v, p.inv_tau);
                pr = expf(lp);
            }
            tp[c * RS + q] = pr;
            tl[c * RS + q] = px < pixels ? lp : 0.f;
        }
        __syncthreads();
        for (int64_t e = threadIdx.x; e < E; e += kBlockThreads) {
            float acc = 0.f;
            if (e < static_cast<int64_t>(C) * C) {
                const int i = static_cast<int>(e / C), j = static_cast<int>(e % C);
                const float* li = (p.paper ? tl : tp) + i * RS;
                const float* pj = tp + j * RS;
                for (int q = 0; q < TP; ++q) acc = fmaf(li[q], pj[q], acc);
            } else {
                const int k = static_cast<int>(e - static_cast<int64_t>(C) * C);
                for (int q = 0; q < TP; ++q) acc = fmaf(tp[k * RS + q], tl[k * RS + q], acc);
            }
            partial[e] += acc;
        }
        __syncthreads();
    }
}

// =========================================================================================================
// 3. Epilogue, one block.
//
// `mats` (doubles): tot[2][E], m[2][C*C], norm[2][C], mh[2][C*C], u[C*C].
// `coef` (floats): official: W[C*C] = (U + U^T) / B, a[C] / B; paper: U[C*C] / B, c[C] / B, r[C] / B.

template <typename T> __device__ void icsd_epilogue(const KdIcsdArgs& args) {
    const KdIcsdParams& p = args.p;
    const int C = p.classes;
    const int64_t CC = static_cast<int64_t>(C) * C, E = CC + C;
    const double inv_b = 1.0 / static_cast<double>(p.batch);
    const double eps = 1e-12;
    const double* partials = kd::ptr<const double>(args.partials);
    double* tot = kd::ptr<double>(args.mats);
    double* m = tot + 2 * E;
    double* norm = m + 2 * CC;
    double* mh = norm + 2 * C;
    double* u = mh + 2 * CC;

    for (int64_t f = threadIdx.x; f < 2 * E; f += kBlockThreads) {
        const int which = f >= E;
        const int64_t e = f - which * E;
        double s = 0.0;
        for (int64_t blk = 0; blk < p.gram_blocks; ++blk) s += partials[(which * p.gram_blocks + blk) * E + e];
        tot[f] = s;
    }
    __syncthreads();
    for (int64_t f = threadIdx.x; f < 2 * CC; f += kBlockThreads) {
        const int which = f >= CC;
        const int64_t e = f - which * CC;
        const int i = static_cast<int>(e / C), j = static_cast<int>(e % C);
        const double* t = tot + which * E;
        double v;
        if (p.paper) {
            v = i == j ? 0.0 : (t[CC + j] - t[e]) * inv_b;
        } else {
            v = (t[CC + (i > j ? i : j)] - t[e]) * inv_b;
        }
        m[f] = v;
    }
    __syncthreads();
    for (int64_t r = threadIdx.x; r < 2 * C; r += kBlockThreads) {
        double s = 0.0;
        for (int j = 0; j < C; ++j) s += m[r * C + j] * m[r * C + j];
        norm[r] = sqrt(s);
    }
    __syncthreads();
    float* const sim_s = kd::ptr<float>(args.sim_student);
    float* const sim_t = kd::ptr<float>(args.sim_teacher);
    for (int64_t f = threadIdx.x; f < 2 * CC; f += kBlockThreads) {
        const int64_t r = f / C;
        const double n = norm[r];
        const double v = m[f] / (n > eps ? n : eps);
        mh[f] = v;
        float* const sim = f >= CC ? sim_t : sim_s;
        if (sim) sim[f >= CC ? f - CC : f] = static_cast<float>(v);
    }
    __syncthreads();
    if (p.flags & KD_WANT_LOSS) {
        double s = 0.0;
        for (int64_t e = threadIdx.x; e < CC; e += kBlockThreads) {
            const double d = mh[e] - mh[CC + e];
            s += d * d;
        }
        const double total = kd::block_sum(s);
        if (threadIdx.x == 0) *kd::ptr<float>(args.loss) = static_cast<float>(static_cast<double>(p.loss_scale) * total);
    }
    if (!(p.flags & KD_WANT_GRAD_STUDENT)) return;
    const double gscale = kd::grad_factor(p.grad_scale, p.flags, args.upstream);
    // U = dL/dM, row by row: the backward of the row normalisation.
    for (int64_t i = threadIdx.x; i < C; i += kBlockThreads) {
        const double n = norm[i];
        double proj = 0.0;
        for (int j = 0; j < C; ++j) proj += gscale * (mh[i * C + j] - mh[CC + i * C + j]) * mh[i * C + j];
        for (int j = 0; j < C; ++j) {
            const double gh = gscale * (mh[i * C + j] - mh[CC + i * C + j]);
            u[i * C + j] = n >= eps ? (gh - proj * mh[i * C + j]) / n : gh / eps;
        }
    }
    __syncthreads();
    float* coef = kd::ptr<float>(args.coef);
    for (int64_t e = threadIdx.x; e < CC; e += kBlockThreads) {
        const int i = static_cast<int>(e / C), j = static_cast<int>(e % C);
        coef[e] = static_cast<float>((p.paper ? u[e] : u[e] + u[j * C + i]) * inv_b);
    }
    for (int64_t k = threadIdx.x; k < C; k += kBlockThreads) {
        if (p.paper) {
            double c = 0.0, r = 0.0;
            for (int i = 0; i < C; ++i) {
                c += u[i * C + k];
                r += u[k * C + i];
            }
            coef[CC + k] = static_cast<float>(c * inv_b);
            coef[CC + C + k] = static_cast<float>(r * inv_b);
        } else {
            double a = u[k * C + k];
            for (int i = 0; i < k; ++i) a += u[i * C + k] + u[k * C + i];
            coef[CC + k] = static_cast<float>(a * inv_b);
        }
    }
}

// =========================================================================================================
// 4 and 5. The gradient. A block owns the positions of one image: official, `grad_cols` columns
// (w0 .. w0 + grad_cols) for every h (one step per h); paper, `steps_per_block` tiles of `grad_cols`
// consecutive positions. Each step stages P and log P of every class at the tile's positions in shared memory;
// thread entry n = threadIdx.x + 256 r is (class n / grad_cols, position n % grad_cols).

struct GradTile {
    int64_t b, group;
};

// Position of tile slot q at step s of the block, or -1 beyond the image.
__device__ __forceinline__ int64_t grad_position(const KdIcsdParams& p, int64_t group, int64_t s, int q) {
    if (!p.paper) {
        const int64_t w = group * p.grad_cols + q;
        return w < p.width ? s * p.width + w : -1;
    }
    const int64_t l = (group * p.steps_per_block + s) * p.grad_cols + q;
    return l < p.plane ? l : -1;
}

__device__ __forceinline__ int64_t grad_steps(const KdIcsdParams& p) { return p.paper ? p.steps_per_block : p.height; }

template <typename T>
__device__ __forceinline__ void stage(const KdIcsdParams& p, const T* x, const float* stats, int64_t b, int64_t group,
                                      int64_t s, float* tp, float* tl) {
    const int C = p.classes, TW = p.grad_cols;
    for (int f = threadIdx.x; f < C * TW; f += kBlockThreads) {
        const int c = f / TW, q = f % TW;
        const int64_t l = grad_position(p, group, s, q);
        float lp = 0.f, pr = 0.f;
        if (l >= 0) {
            lp = log_prob(stats, segment(p, b, c, l), kd::to_float(x[(b * C + c) * p.plane + l]), p.inv_tau);
            pr = expf(lp);
        }
        tp[f] = pr;
        tl[f] = lp;
    }
}

// Calls `visit(r, n, k, q)` for each tile entry this thread owns: register slot r, entry n = k * TW + q of
// class k and column q. Every pass over the tile walks it the same way, so its register arrays stay indexed by
// the unrolled r.
template <typename Visit> __device__ __forceinline__ void for_each_entry(const KdIcsdParams& p, Visit visit) {
    const int TW = p.grad_cols;
#pragma unroll
    for (int r = 0; r < KD_ICSD_MAX_ENTRIES; ++r) {
        const int n = threadIdx.x + r * kBlockThreads;
        if (n < p.classes * TW) visit(r, n, n / TW, n % TW);
    }
}

// Both backward kernels walk the block's positions step by step: stage the step's P and log P into the tile,
// then `visit(s, r, n, k, q)` each of this thread's entries; the barriers keep the tile whole while it is read.
template <typename T, typename Visit>
__device__ __forceinline__ void for_each_staged_entry(const KdIcsdParams& p, const T* x, const float* stats, int64_t b,
                                                      int64_t group, float* tp, float* tl, Visit visit) {
    for (int64_t s = 0; s < grad_steps(p); ++s) {
        stage(p, x, stats, b, group, s, tp, tl);
        __syncthreads();
        for_each_entry(p, [&](int r, int n, int k, int q) { visit(s, r, n, k, q); });
        __syncthreads();
    }
}

// The per-element quantity whose P-weighted sum is the softmax-backward dot: Q_k (official) or R_k (paper);
// `extra` gets -V_k + r_k P_k (paper) or 0.
__device__ __forceinline__ float grad_q(const KdIcsdParams& p, const float* coef, const float* tp, const float* tl, int k,
                                        int q, float& extra) {
    const int C = p.classes, TW = p.grad_cols;
    const int64_t CC = static_cast<int64_t>(C) * C;
    if (!p.paper) {
        float acc = coef[CC + k] * tl[k * TW + q];
        for (int j = 0; j < C; ++j) acc = fmaf(-coef[static_cast<int64_t>(k) * C + j], tp[j * TW + q], acc);
        extra = 0.f;
        return acc;
    }
    float r = coef[CC + k] * tl[k * TW + q], v = 0.f;
    for (int i = 0; i < C; ++i) {
        r = fmaf(-coef[static_cast<int64_t>(i) * C + k], tl[i * TW + q], r);
        v = fmaf(coef[static_cast<int64_t>(k) * C + i], tp[i * TW + q], v);
    }
    extra = coef[CC + C + k] * tp[k * TW + q] - v;
    return r;
}

template <typename T> __device__ void icsd_dot(const KdIcsdArgs& args) {
    const KdIcsdParams& p = args.p;
    KD_SHARED_ARRAY(float, tile, 2 * kBlockThreads * KD_ICSD_MAX_ENTRIES);
    const int C = p.classes, TW = p.grad_cols;
    const int64_t b = blockIdx.x / p.grad_groups, group = blockIdx.x % p.grad_groups;
    const T* x = kd::ptr<const T>(args.student);
    const float* stats = kd::ptr<const float>(args.stats);
    const float* coef = kd::ptr<const float>(args.coef);
    float* dots = kd::ptr<float>(args.dots);
    float* tp = tile;
    float* tl = tile + C * TW;
    float acc[KD_ICSD_MAX_ENTRIES];
#pragma unroll
    for (int r = 0; r < KD_ICSD_MAX_ENTRIES; ++r) acc[r] = 0.f;
    for_each_staged_entry(p, x, stats, b, group, tp, tl, [&](int64_t, int r, int n, int k, int q) {
        float extra;
        const float qv = grad_q(p, coef, tp, tl, k, q, extra);
        acc[r] = fmaf(tp[n], qv, acc[r]);
    });
    if (!p.paper) {
        for_each_entry(p, [&](int r, int, int k, int q) {
            const int64_t w = group * TW + q;
            if (w < p.width) dots[(b * C + k) * p.width + w] = acc[r];
        });
        return;
    }
    // Paper: the block's partial per class, summed over its positions in a fixed order.
    for_each_entry(p, [&](int r, int n, int, int) { tile[n] = acc[r]; });
    __syncthreads();
    for (int k = threadIdx.x; k < C; k += kBlockThreads) {
        double s = 0.0;
        for (int q = 0; q < TW; ++q) s += tile[k * TW + q];
        dots[(b * p.grad_groups + group) * C + k] = static_cast<float>(s);
    }
}

template <typename T> __device__ void icsd_grad(const KdIcsdArgs& args) {
    const KdIcsdParams& p = args.p;
    KD_SHARED_ARRAY(float, tile, 2 * kBlockThreads * KD_ICSD_MAX_ENTRIES);
    KD_SHARED_ARRAY(float, plane_dot, kBlockThreads * KD_ICSD_MAX_ENTRIES);
    const int C = p.classes, TW = p.grad_cols;
    const int64_t b = blockIdx.x / p.grad_groups, group = blockIdx.x % p.grad_groups;
    const T* x = kd::ptr<const T>(args.student);
    T* grad = kd::ptr<T>(args.grad_student);
    const float* stats = kd::ptr<const float>(args.stats);
    const float* coef = kd::ptr<const float>(args.coef);
    const float* dots = kd::ptr<const float>(args.dots);
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    float* tp = tile;
    float* tl = tile + C * TW;
    if (p.paper) {
        // The plane's dot per class: the blocks' partials in a fixed order.
        for (int k = threadIdx.x; k < C; k += kBlockThreads) {
            double s = 0.0;
            for (int64_t g = 0; g < p.grad_groups; ++g) s += dots[(b * p.grad_groups + g) * C + k];
            plane_dot[k] = static_cast<float>(s);
        }
    }
    __syncthreads();
    float dot[KD_ICSD_MAX_ENTRIES];
#pragma unroll
    for (int r = 0; r < KD_ICSD_MAX_ENTRIES; ++r) {
        const int n = threadIdx.x + r * kBlockThreads;
        dot[r] = 0.f;
        if (n < C * TW) {
            const int k = n / TW, q = n % TW;
            if (p.paper) {
                dot[r] = plane_dot[k];
            } else {
                const int64_t w = group * TW + q;
                if (w < p.width) dot[r] = dots[(b * C + k) * p.width + w];
            }
        }
    }
    for_each_staged_entry(p, x, stats, b, group, tp, tl, [&](int64_t s, int r, int n, int k, int q) {
        const int64_t l = grad_position(p, group, s, q);
        if (l >= 0) {
            float extra;
            const float qv = grad_q(p, coef, tp, tl, k, q, extra);
            const float g = p.inv_tau * (tp[n] * (qv - dot[r]) + extra);
            kd::store_grad(grad + (b * C + k) * p.plane + l, g, accumulate);
        }
    });
}

}  // namespace

// AICSD: the two weighted loss terms into one device scalar, without a host round trip.
__device__ __forceinline__ void icsd_mix(const KdIcsdMixArgs& a) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        *kd::ptr<float>(a.out) = a.wa * *kd::ptr<const float>(a.a) + a.wb * *kd::ptr<const float>(a.b);
    }
}

#define KD_ICSD_ENTRY_POINTS(T, NAME)                                                       \
    KD_ENTRY(icsd_stats_##NAME, KdIcsdArgs, kBlockThreads) { icsd_stats<T>(a); }            \
    KD_ENTRY(icsd_gram_##NAME, KdIcsdArgs, kBlockThreads) { icsd_gram<T>(a); }              \
    KD_ENTRY(icsd_epilogue_##NAME, KdIcsdArgs, kBlockThreads) { icsd_epilogue<T>(a); }      \
    KD_ENTRY(icsd_dot_##NAME, KdIcsdArgs, kBlockThreads) { icsd_dot<T>(a); }                \
    KD_ENTRY(icsd_grad_##NAME, KdIcsdArgs, kBlockThreads) { icsd_grad<T>(a); }              \
    KD_ENTRY(icsd_mix_##NAME, KdIcsdMixArgs, kBlockThreads) { icsd_mix(a); }

KD_FOR_EACH_DTYPE(KD_ICSD_ENTRY_POINTS)
