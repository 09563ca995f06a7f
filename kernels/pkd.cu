/*
 * PKD (docs/losses.md §7): every level of a feature pyramid standardised per channel over the whole batch,
 * 0.5 * MSE of the standardised student and teacher, and d loss / d student, for all levels in three
 * launches whatever their number:
 *   1. pkd_stats   one block per (level, channel, chunk of KD_PKD_CHUNK values): reads S and T once and
 *                  writes the chunk's count, means, M2 of S and of T, and the co-moment of S and S - T
 *   2. pkd_finish  one warp per (level, channel): merges the channel's chunks in chunk order and writes the
 *                  coefficients pass 3 needs (means; the factors of the standardised difference and of the
 *                  gradient, below)
 *   3. pkd_apply   the same blocks as pkd_stats: reads S and T again, sums (S_hat - T_hat)^2 into the loss
 *                  (one partial per block, the last block sums them in block order) and writes the gradient
 * What is fused, and why it is legal: a channel's statistics need every one of its values (all images), so
 * no gradient can be written before a grid-wide reduction: two reads of the inputs are the least. With
 * x_s = s - mu_S, x_t = t - mu_T, e = std + eps and k = loss_weight / numel, the gradient
 *     dL/ds_j = k ((S_hat_j - T_hat_j) / e_S - x_s,j beta),  beta = sum_i (S_hat_i - T_hat_i) x_s,i / (e_S^2 (M-1) std_S)
 * (the term through mean_i g_i is exactly 0: both standardised channels have mean 0) is linear in the
 * values: k (x_s,j a - x_t,j b), with a and b per channel from the moments of pass 1 (no third read).
 *
 * Numerics. Each thread keeps Welford's running (count, mean, M2, co-moment) in fp32 over its 16 values,
 * shifted by the channel's first value K (so a feature with a large mean keeps its low bits: x - K is exact
 * for x within a factor 2 of K); threads and chunks merge with Chan's parallel formula in double. A constant
 * channel gets mean exactly K and M2 exactly 0 (every update adds 0), hence std 0 and x_hat = 0, and its
 * gradient drops the term through the std, as torch's autograd of `std` does at 0 (§7.3). Identical student
 * and teacher give exactly 0 loss and gradient: every difference of S and T terms is formed as
 * (x_s - x_t) f + x (difference of the factors), both of which are then exactly 0. Every sum has a fixed
 * order (thread-strided, the shuffle tree, warps in order, chunks in order, blocks in order): bitwise reproducible,
 * and, the grid depending on the shapes only, the same on every device.
 */
#include "common.cuh"
#include "pkd.h"

namespace {

using kd::kBlockThreads;
constexpr int kChunk = KD_PKD_CHUNK;
constexpr int kPerThread = kChunk / kBlockThreads;
static_assert(kPerThread * kBlockThreads == kChunk, "a chunk is a whole number of values per thread");

// One level's descriptor and buffers, read with constant indices only: a run-time index into the argument
// block makes some compilers copy the block to local memory.
struct Level {
    KdPkdLevel d;
    uint64_t student, teacher, grad;
};

// The level whose range holds `key`: block `key` of pkd_stats / pkd_apply (kByBlock), else row `key` of the
// coefficient table. Levels are in order, so it is the last level starting at or before `key`.
template <bool kByBlock> __device__ __forceinline__ Level level_of(const KdPkdArgs& a, int64_t key) {
    Level out{a.p.level[0], a.student[0], a.teacher[0], a.grad_student[0]};
#pragma unroll
    for (int i = 1; i < KD_PKD_MAX_LEVELS; ++i) {
        const int64_t first = kByBlock ? a.p.level[i].block_first : a.p.level[i].channel_first;
        if (i < a.p.levels && key >= first) out = Level{a.p.level[i], a.student[i], a.teacher[i], a.grad_student[i]};
    }
    return out;
}

// The statistics of a set of values of one channel: count n, and for S, T and U = S - T their means (S and T
// shifted by the channel's first values) and the M2 of S and T, and D = sum (s - mean_s)(u - mean_u). The
// gradient needs the co-moment of S and T only as M2_S - D, and through D it keeps its precision where the
// student is close to the teacher (D is small, not a difference of two large sums).
struct Moments {
    double n, mean_s, m2_s, mean_t, m2_t, mean_u, d;

    // Every field from lane `lane ^ offset` (for kd::warp_merge_in_lane_order).
    __device__ __forceinline__ Moments shfl_xor(int offset) const {
        return {kd::shfl_xor(n, offset),    kd::shfl_xor(mean_s, offset), kd::shfl_xor(m2_s, offset),
                kd::shfl_xor(mean_t, offset), kd::shfl_xor(m2_t, offset), kd::shfl_xor(mean_u, offset),
                kd::shfl_xor(d, offset)};
    }
};

// Chan et al.'s pairwise update: the moments of the union of `a` and `b`, `a` first. The same operations on
// every side, so that equal inputs give equal bits (identical S and T: U = 0 and D = 0 exactly; a constant
// teacher: U = S and D = M2_S exactly).
__device__ __forceinline__ Moments merge(const Moments& a, const Moments& b) {
    if (b.n == 0.0) return a;
    if (a.n == 0.0) return b;
    const double n = a.n + b.n;
    const double ds = b.mean_s - a.mean_s, dt = b.mean_t - a.mean_t, du = b.mean_u - a.mean_u;
    const double wb = b.n / n, cross = a.n * wb;
    Moments m;
    m.n = n;
    m.mean_s = a.mean_s + ds * wb;
    m.mean_t = a.mean_t + dt * wb;
    m.mean_u = a.mean_u + du * wb;
    m.m2_s = a.m2_s + b.m2_s + (ds * ds) * cross;
    m.m2_t = a.m2_t + b.m2_t + (dt * dt) * cross;
    m.d = a.d + b.d + (ds * du) * cross;
    return m;
}


// The position (image n, pixel p) of value j of a channel, and the step of kBlockThreads values, so that a
// thread walks its values without a division per value.
struct Walker {
    int64_t n, p, plane, image;  // image: C * plane, the stride between two images of a channel
    int64_t step_n, step_p;
    __device__ __forceinline__ Walker(int64_t j, int64_t plane_, int64_t channels) {
        plane = plane_;
        image = channels * plane_;
        n = j / plane;
        p = j - n * plane;
        step_n = kBlockThreads / plane;
        step_p = kBlockThreads - step_n * plane;
    }
    __device__ __forceinline__ int64_t offset(int64_t channel) const { return n * image + channel * plane + p; }
    __device__ __forceinline__ void advance() {
        n += step_n;
        p += step_p;
        if (p >= plane) {
            p -= plane;
            ++n;
        }
    }
};

// Block b's level, channel and chunk, and the chunk's values [begin, end) of the channel.
struct BlockWork {
    Level level;
    int64_t channel, chunk, begin, end;
};

__device__ __forceinline__ BlockWork block_work(const KdPkdArgs& a) {
    BlockWork w;
    w.level = level_of<true>(a, blockIdx.x);
    const int64_t local = static_cast<int64_t>(blockIdx.x) - w.level.d.block_first;
    w.channel = local / w.level.d.chunks;
    w.chunk = local - w.channel * w.level.d.chunks;
    w.begin = w.chunk * kChunk;
    w.end = min(w.level.d.values, w.begin + kChunk);
    return w;
}

// Loads this thread's values of the block's chunk, S and T (0 past the end), every load issued before any
// value is used; returns how many are values of the chunk, and their offsets in the level's tensors.
template <typename T>
__device__ __forceinline__ int load_chunk(const BlockWork& w, int64_t (&offsets)[kPerThread], float (&s)[kPerThread],
                                          float (&t)[kPerThread]) {
    const T* student = kd::ptr<const T>(w.level.student);
    const T* teacher = kd::ptr<const T>(w.level.teacher);
    const int64_t first = w.begin + threadIdx.x;
    Walker walk(first, w.level.d.plane, w.level.d.channels);
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
        offsets[i] = walk.offset(w.channel);
        walk.advance();
    }
    // A chunk has at most kChunk values, so at most kPerThread of them are this thread's.
    const int count = first >= w.end ? 0 : static_cast<int>((w.end - first + kBlockThreads - 1) / kBlockThreads);
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
        s[i] = i < count ? kd::to_float(student[offsets[i]]) : 0.f;
        t[i] = i < count ? kd::to_float(teacher[offsets[i]]) : 0.f;
    }
    return count;
}

// ---------------------------------------------------------------------------------------------------------
// 1. Per-chunk moments.
template <typename T> __device__ void pkd_stats(const KdPkdArgs& a) {
    const BlockWork w = block_work(a);
    int64_t offsets[kPerThread];
    float s[kPerThread], t[kPerThread];
    const int count = load_chunk<T>(w, offsets, s, t);
    // The pivot: the channel's first value (image 0, pixel 0), the same for every chunk of the channel.
    const float ks = kd::to_float(kd::ptr<const T>(w.level.student)[w.channel * w.level.d.plane]);
    const float kt = kd::to_float(kd::ptr<const T>(w.level.teacher)[w.channel * w.level.d.plane]);
    float mean_s = 0.f, m2_s = 0.f, mean_t = 0.f, m2_t = 0.f, mean_u = 0.f, d = 0.f;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
        if (i < count) {
            const float inv = 1.f / static_cast<float>(i + 1);  // a constant once unrolled
            const float xs = s[i] - ks, xt = t[i] - kt, u = xs - xt;
            const float ds = xs - mean_s;
            mean_s += ds * inv;
            m2_s += ds * (xs - mean_s);
            const float dt = xt - mean_t;
            mean_t += dt * inv;
            m2_t += dt * (xt - mean_t);
            mean_u += (u - mean_u) * inv;
            d += ds * (u - mean_u);
        }
    }
    Moments m{static_cast<double>(count), mean_s, m2_s, mean_t, m2_t, mean_u, d};
    m = kd::warp_merge_in_lane_order(m);
    KD_SHARED_ARRAY(Moments, warp_moments, kd::kWarps);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_moments[warp] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        Moments total = warp_moments[0];
#pragma unroll
        for (int i = 1; i < kd::kWarps; ++i) total = merge(total, warp_moments[i]);
        double* out = kd::ptr<double>(a.partials) + static_cast<int64_t>(blockIdx.x) * KD_PKD_STAT_DOUBLES;
        out[0] = total.n;
        out[1] = total.mean_s;
        out[2] = total.m2_s;
        out[3] = total.mean_t;
        out[4] = total.m2_t;
        out[5] = total.mean_u;
        out[6] = total.d;
    }
}

// ---------------------------------------------------------------------------------------------------------
// 2. Per-channel coefficients: one warp per channel of any level.
template <typename T> __device__ void pkd_finish(const KdPkdArgs& a) {
    const int64_t row = static_cast<int64_t>(blockIdx.x) * kd::kWarps + (threadIdx.x >> 5);
    if (row >= a.p.channels) return;  // a whole warp leaves: no shuffle misses a lane
    const int lane = threadIdx.x & 31;
    const Level level = level_of<false>(a, row);
    const KdPkdLevel& d = level.d;
    const int64_t c = row - d.channel_first;
    const double* partials = kd::ptr<const double>(a.partials) + (d.block_first + c * d.chunks) * KD_PKD_STAT_DOUBLES;
    Moments m{0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int64_t k = lane; k < d.chunks; k += 32) {
        const double* q = partials + k * KD_PKD_STAT_DOUBLES;
        m = merge(m, Moments{q[0], q[1], q[2], q[3], q[4], q[5], q[6]});
    }
    m = kd::warp_merge_in_lane_order(m);
    if (lane != 0) return;
    const double ks = kd::to_float(kd::ptr<const T>(level.student)[c * d.plane]);
    const double kt = kd::to_float(kd::ptr<const T>(level.teacher)[c * d.plane]);
    const double dof = static_cast<double>(d.values - 1);
    const double std_s = sqrt(m.m2_s / dof), std_t = sqrt(m.m2_t / dof);
    const double eps = a.p.eps, e_s = std_s + eps, e_t = std_t + eps;
    const double inv_s = 1.0 / e_s, inv_t = 1.0 / e_t;
    // The gradient is k (x_s a - x_t b) (x = value - mean): b = 1 / (e_S e_T) and, with C = M2_S - D the
    // co-moment of S and T, a = 1 / e_S^2 - beta = eps / e_S^3 + C / (e_T e_S^2 (M - 1) std_S). A constant
    // student channel has std_S = 0 and no std term (torch's `std` backward is 0 there): a = 1 / e_S^2.
    // a - b comes from its own closed form, exactly 0 for identical S and T (equal std, D = 0).
    const double b = inv_s * inv_t;
    double a_coef, a_minus_b;
    if (std_s > 0.0) {
        const double std_term = e_t * e_s * e_s * dof * std_s;
        a_coef = eps / (e_s * e_s * e_s) + (m.m2_s - m.d) / std_term;
        a_minus_b = eps * (std_t - std_s) / (e_s * e_s * e_s * e_t) - m.d / std_term;
    } else {
        a_coef = inv_s * inv_s;
        a_minus_b = (std_t - std_s) / (e_s * e_s * e_t);
    }
    const double mean_s = ks + m.mean_s, mean_t = kt + m.mean_t;
    float* out = kd::ptr<float>(a.coef) + row * KD_PKD_COEF_FLOATS;
    const float mean_s_hi = static_cast<float>(mean_s), mean_t_hi = static_cast<float>(mean_t);
    out[0] = mean_s_hi;
    out[1] = static_cast<float>(mean_s - mean_s_hi);
    out[2] = mean_t_hi;
    out[3] = static_cast<float>(mean_t - mean_t_hi);
    // x_s p - x_t q = (x_s - x_t) min(p, q) + (p - q) x_(the side of the larger factor): a difference that is
    // 0 for identical S and T whatever the rounding, and no cancellation where one factor dwarfs the other
    // (a constant channel's 1 / eps).
    const bool loss_fix_on_teacher = inv_s < inv_t;
    out[4] = static_cast<float>(loss_fix_on_teacher ? inv_s : inv_t);
    out[5] = static_cast<float>(inv_s - inv_t);
    const bool grad_fix_on_teacher = fabs(a_coef) < fabs(b);
    out[6] = static_cast<float>(grad_fix_on_teacher ? a_coef : b);
    out[7] = static_cast<float>(a_minus_b);
    out[8] = loss_fix_on_teacher ? 1.f : 0.f;
    out[9] = grad_fix_on_teacher ? 1.f : 0.f;
    out[10] = 0.f;
    out[11] = 0.f;
}

// ---------------------------------------------------------------------------------------------------------
// 3. Loss partials and gradient.
template <typename T> __device__ void pkd_apply(const KdPkdArgs& a) {
    const BlockWork w = block_work(a);
    const KdPkdParams& p = a.p;
    int64_t offsets[kPerThread];
    float s[kPerThread], t[kPerThread];
    const int count = load_chunk<T>(w, offsets, s, t);
    const float* coef = kd::ptr<const float>(a.coef) + (w.level.d.channel_first + w.channel) * KD_PKD_COEF_FLOATS;
    const float mean_s_hi = coef[0], mean_s_lo = coef[1], mean_t_hi = coef[2], mean_t_lo = coef[3];
    const float loss_main = coef[4], loss_fix = coef[5], grad_main = coef[6], grad_fix = coef[7];
    const bool loss_fix_on_teacher = coef[8] != 0.f, grad_fix_on_teacher = coef[9] != 0.f;
    const bool want_grad = (p.flags & KD_WANT_GRAD_STUDENT) != 0;
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    const float k = want_grad ? kd::grad_factor(w.level.d.grad_scale, p.flags, a.upstream) : 0.f;
    T* grad = kd::ptr<T>(w.level.grad);
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
        if (i < count) {
            const float xs = (s[i] - mean_s_hi) - mean_s_lo;
            const float xt = (t[i] - mean_t_hi) - mean_t_lo;
            const float dx = xs - xt;
            // S_hat - T_hat = x_s / e_S - x_t / e_T, and the gradient k (x_s a - x_t b), as set up in pkd_finish.
            const float diff = dx * loss_main + (loss_fix_on_teacher ? xt : xs) * loss_fix;
            sq += diff * diff;
            if (want_grad) {
                const float g = dx * grad_main + (grad_fix_on_teacher ? xt : xs) * grad_fix;
                kd::store_grad(grad + offsets[i], k * g, accumulate);
            }
        }
    }
    if (p.flags & KD_WANT_LOSS) {
        const double block = kd::block_sum(static_cast<double>(sq));
        kd::sum_into_loss(static_cast<float>(block * w.level.d.loss_scale), blockIdx.x, gridDim.x,
                          kd::ptr<float>(a.loss_partials), kd::ptr<unsigned int>(a.counter), kd::ptr<float>(a.loss),
                          p.loss_weight);
    }
}

}  // namespace

#define PKD_ENTRIES(T, NAME)                                                              \
    KD_ENTRY(pkd_stats_##NAME, KdPkdArgs, kBlockThreads) { pkd_stats<T>(a); }              \
    KD_ENTRY(pkd_finish_##NAME, KdPkdArgs, kBlockThreads) { pkd_finish<T>(a); }            \
    KD_ENTRY(pkd_apply_##NAME, KdPkdArgs, kBlockThreads) { pkd_apply<T>(a); }
KD_FOR_EACH_DTYPE(PKD_ENTRIES)
