/*
 * CIRKD's mini-batch pixel relations (docs/losses.md §10) without a single P x P matrix: for every ordered
 * pair of images (i, j), i = j included, the row softmaxes of s_ij = S_hat_i^T S_hat_j / tau and of t_ij
 * (the teacher's), the KL of each row, and d loss / d student. cirkd_norms, then one launch group per anchor
 * image i = 0, ..., B - 1 (the driver sets `anchor`), then cirkd_finish:
 *   1. cirkd_norms         a thread per (side, image, pooled pixel): the reciprocal of the pixel's clamped
 *                          norm (F.normalize's 1 / max(|x|, eps)); with pooling, also the pixel's K x K
 *                          average (ceil rule) per channel, the pooled copy [B, C, P] floats per side
 *   2. cirkd_forward       a block per (j, tile of KD_CIRKD_OWNED rows of image i): streams the columns in
 *                          tiles of KD_CIRKD_OTHERS, keeping per row the running maxima and sums of
 *                          exponentials of both rows and sum e^(t - max_t) (t - s) (FlashAttention's online
 *                          softmax); writes each row's LSE(t) and LSE(s) - LSE(t) and sums the rows' KL into
 *                          the anchor's loss (the last anchor's last block sums the anchors into the loss)
 *   3. cirkd_grad_rows     a block per tile of image i's pixels p: for every j, recomputes the tiles,
 *                          g = (ps - pt) loss_weight / (P B^2 tau), and d_hat_i[:, p] += sum_j sum_q g S_hat_j[:, q]
 *   4. cirkd_grad_columns  a block per (j, tile of image j's pixels q): the same tiles seen from the columns,
 *                          d_hat_j[:, q] += sum_p g S_hat_i[:, p]
 *   5. cirkd_finish        a thread per (image, pooled pixel): back through the normalisation and the pool
 * (3 to 5 only for a gradient.)
 * What is fused, and why it is legal: a row's KL, sum_q pt (t - s) - LSE(t) + LSE(s), needs only the row's
 * running statistics, which merge exactly under a change of maximum (rescaling by e^(old max - new max)), so
 * a tile of logits is used once and dropped. The gradient of a logit needs the final LSEs of its row, so the
 * backward recomputes the tiles from the features and the stored LSEs. Going one anchor at a time keeps those
 * row statistics to the anchor's B pairs, 2 B P floats, reused by every group (stream order separates the
 * groups). The normalised features are never stored: normalisation is a per-pixel scale, so every pass forms
 * S_hat[c, p] as (the input, or its pooled copy)[c, p] times the pixel's reciprocal norm, through one function
 * (`Features::at`, the same load, conversion and rounded product everywhere, hence the same logits in the
 * forward and both gradient passes). Without pooling (the issue's large maps) that leaves the workspace at
 * O(B P): the norms and the row statistics. With a K x K pool the pooled copy is kept (the inputs' size over
 * K^2, as the official code materialises the pooled tensor too): pooling on the fly would cost K^2 loads and
 * a division per feature element in every tile staging (16 at the auto rule's K = 4), in the passes that
 * re-read each image's features B + 2 times per anchor, to save memory that is a sixteenth of the inputs'.
 * Each gradient element has one owner per launch: pass 3 owns d_hat_i's rows, pass 4 then d_hat_j's
 * columns, and the groups follow each other, so every element is summed in the fixed order (anchor, pass,
 * tile) and no float atomic decides a result. The first contribution to d_hat_j overwrites: anchor 0's row
 * pass for j = 0, anchor 0's column pass for the others. d_hat lives in the gradient buffer itself where that
 * holds it (f32, unpooled, overwriting: the driver points d_hat there), else in an fp32 workspace array:
 * cirkd_finish's thread per pixel reads its pixel's whole column of d_hat before it writes that column's
 * gradient, and no other thread touches the column, so finishing in place is legal.
 *
 * Numerics. Dot products in fp32 over the channels in increasing order whichever side owns the tile, so the
 * backward's logits are bitwise the forward's; sums of exponentials and the KL in double; the loss summed in
 * block order by the last block done. With the student equal to the teacher (same channels) every operation
 * on s and on t is the same, so each row's KL and every g are exactly 0.
 */
#include "common.cuh"
#include "cirkd.h"

namespace {

using kd::kBlockThreads;
using kd::kWarps;
constexpr int kOwned = KD_CIRKD_OWNED;
constexpr int kOthers = KD_CIRKD_OTHERS;
constexpr int kChunk = KD_CIRKD_CHANNEL_CHUNK;
constexpr int kOwnedPerWarp = kOwned / kWarps;
constexpr int kOthersPerLane = kOthers / 32;
// F.normalize's floor under each pixel's norm.
constexpr float kNormEps = 1e-12f;
static_assert(kOwnedPerWarp * kWarps == kOwned, "a tile's owned pixels split evenly over the warps");
static_assert(kOthersPerLane * 32 == kOthers, "a tile's other pixels split evenly over the lanes");
static_assert(kOwned == 32, "the gradient update gives each lane one owned pixel");

// The input window of pooled pixel q: rows [h0, h1), columns [w0, w1) (ceil mode: edge windows are cut at
// the border and average what lies inside).
struct Window {
    int64_t h0, h1, w0, w1;
    float count;
};

__device__ __forceinline__ Window window_of(const KdCirkdParams& p, int64_t q) {
    const int64_t oh = q / p.pooled_width, ow = q - oh * p.pooled_width;
    Window w;
    w.h0 = oh * p.pool;
    w.h1 = min(static_cast<int64_t>(p.height), w.h0 + p.pool);
    w.w0 = ow * p.pool;
    w.w1 = min(static_cast<int64_t>(p.width), w.w0 + p.pool);
    w.count = static_cast<float>((w.h1 - w.h0) * (w.w1 - w.w0));
    return w;
}

// The pooled value of one channel plane.
template <typename T> __device__ __forceinline__ float pooled(const T* plane, const Window& w, int64_t width) {
    float sum = 0.f;
    for (int64_t h = w.h0; h < w.h1; ++h)
        for (int64_t x = w.w0; x < w.w1; ++x) sum += kd::to_float(plane[h * width + x]);
    return sum / w.count;
}

// One image's features on one side as every pass reads them: S_hat[c, p] = source[c * P + p] * inv[p], the
// source being the input itself (unpooled: then P = H W and the layouts agree) or its pooled copy.
template <typename T> struct Features {
    const T* input;       // [C, P], unpooled; null when pooled
    const float* pooled;  // [C, P], the pooled copy; null when unpooled
    const float* inv;     // [P]: the reciprocals of the pixels' clamped norms (cirkd_norms)
};

template <typename T>
__device__ __forceinline__ Features<T> features_of(const KdCirkdArgs& a, bool teacher, int64_t n) {
    const KdCirkdParams& p = a.p;
    const int64_t offset = n * (teacher ? p.teacher_channels : p.student_channels) * p.pixels;
    Features<T> f;
    f.input = p.pool == 1 ? kd::ptr<const T>(teacher ? a.teacher : a.student) + offset : nullptr;
    f.pooled = p.pool == 1 ? nullptr : kd::ptr<const float>(teacher ? a.pooled_teacher : a.pooled_student) + offset;
    f.inv = kd::ptr<const float>(a.inv_norms) + ((teacher ? p.batch : 0) + n) * p.pixels;
    return f;
}

// Element e = c * P + pixel of the source, before normalisation.
template <typename T> __device__ __forceinline__ float raw(const Features<T>& f, int64_t e) {
    return f.input != nullptr ? kd::to_float(f.input[e]) : f.pooled[e];
}

// S_hat[c, pixel]: the one place a normalised feature is formed. Its callers store the rounded product (to
// the shared staging), so nvcc has no addition to fuse it into: the same bits wherever it is formed.
template <typename T>
__device__ __forceinline__ float feature_at(const Features<T>& f, int64_t pixels, int64_t c, int64_t pixel) {
    return raw(f, c * pixels + pixel) * f.inv[pixel];
}

// The squared norm of a pixel's source vector, channels in increasing order (cirkd_norms and cirkd_finish
// both call it, so both see the same clamp).
template <typename T>
__device__ __forceinline__ float squared_norm(const Features<T>& f, int64_t channels, int64_t pixels, int64_t pixel) {
    float sq = 0.f;
    for (int64_t c = 0; c < channels; ++c) {
        const float v = raw(f, c * pixels + pixel);
        sq = fmaf(v, v, sq);
    }
    return sq;
}

// F.normalize's denominator max(|x|, eps), as a reciprocal, and whether the clamp holds.
struct Norm {
    float inv;
    bool clamped;
};

__device__ __forceinline__ Norm norm_of(float squared) {
    const float norm = sqrtf(squared);
    const bool clamped = norm < kNormEps;
    return Norm{1.f / (clamped ? kNormEps : norm), clamped};
}

// ---------------------------------------------------------------------------------------------------------
// 1. The reciprocal norms (and, with pooling, the pooled copy).
template <typename T> __device__ void cirkd_norms(const KdCirkdArgs& a) {
    const KdCirkdParams& p = a.p;
    const int64_t per_side = static_cast<int64_t>(p.batch) * p.pixels;
    const int64_t id = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
    if (id >= 2 * per_side) return;
    const bool teacher = id >= per_side;
    const int64_t local = teacher ? id - per_side : id;
    const int64_t n = local / p.pixels, q = local - n * p.pixels;
    const int64_t channels = teacher ? p.teacher_channels : p.student_channels;
    const Features<T> f = features_of<T>(a, teacher, n);
    if (p.pool != 1) {
        const int64_t plane = static_cast<int64_t>(p.height) * p.width;
        const T* x = kd::ptr<const T>(teacher ? a.teacher : a.student) + n * channels * plane;
        float* copy = kd::ptr<float>(teacher ? a.pooled_teacher : a.pooled_student) + n * channels * p.pixels + q;
        const Window w = window_of(p, q);
        for (int64_t c = 0; c < channels; ++c) copy[c * p.pixels] = pooled(x + c * plane, w, p.width);
    }
    kd::ptr<float>(a.inv_norms)[id] = norm_of(squared_norm(f, channels, p.pixels, q)).inv;
}

// ---------------------------------------------------------------------------------------------------------
// Logit tiles.

// Shared staging of one channel chunk of a tile's features.
struct Staging {
    float* owned;   // [kChunk][kOwned]
    float* others;  // [kChunk][kOthers]
};

// Dot products of the owned pixels [o0, o0 + kOwned) of `own` with the pixels [q0, q0 + kOthers) of `other`
// (one image each): acc[r][k] for owned pixel warp * kOwnedPerWarp + r and other pixel lane + 32 k. Pixels
// past P count as zero vectors. Every thread of the block calls it.
template <typename T>
__device__ __forceinline__ void dot_tile(const Features<T>& own, const Features<T>& other, int64_t channels,
                                         int64_t pixels, int64_t o0, int64_t q0, const Staging& st,
                                         float (&acc)[kOwnedPerWarp][kOthersPerLane]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < kOwnedPerWarp; ++r)
#pragma unroll
        for (int k = 0; k < kOthersPerLane; ++k) acc[r][k] = 0.f;
    for (int64_t c0 = 0; c0 < channels; c0 += kChunk) {
        for (int e = threadIdx.x; e < kChunk * kOwned; e += kBlockThreads) {
            const int64_t c = c0 + e / kOwned, pix = o0 + e % kOwned;
            st.owned[e] = (c < channels && pix < pixels) ? feature_at(own, pixels, c, pix) : 0.f;
        }
        for (int e = threadIdx.x; e < kChunk * kOthers; e += kBlockThreads) {
            const int64_t c = c0 + e / kOthers, pix = q0 + e % kOthers;
            st.others[e] = (c < channels && pix < pixels) ? feature_at(other, pixels, c, pix) : 0.f;
        }
        __syncthreads();
        const int chunk = static_cast<int>(min(static_cast<int64_t>(kChunk), channels - c0));
        for (int c = 0; c < chunk; ++c) {
            float x[kOwnedPerWarp], y[kOthersPerLane];
#pragma unroll
            for (int r = 0; r < kOwnedPerWarp; ++r) x[r] = st.owned[c * kOwned + warp * kOwnedPerWarp + r];
#pragma unroll
            for (int k = 0; k < kOthersPerLane; ++k) y[k] = st.others[c * kOthers + lane + 32 * k];
#pragma unroll
            for (int r = 0; r < kOwnedPerWarp; ++r)
#pragma unroll
                for (int k = 0; k < kOthersPerLane; ++k) acc[r][k] = fmaf(x[r], y[k], acc[r][k]);
        }
        __syncthreads();  // the staging is refilled next
    }
}

// The running statistics of a row over the columns seen so far (see cirkd_forward).
struct RowStats {
    float max_s, max_t;
    double sum_s, sum_t, cross;

    // Every field from lane `lane ^ offset` (for kd::warp_merge_in_lane_order).
    __device__ __forceinline__ RowStats shfl_xor(int offset) const {
        return {kd::shfl_xor(max_s, offset), kd::shfl_xor(max_t, offset), kd::shfl_xor(sum_s, offset),
                kd::shfl_xor(sum_t, offset), kd::shfl_xor(cross, offset)};
    }
};

__device__ __forceinline__ RowStats empty_stats() { return RowStats{-CUDART_INF_F, -CUDART_INF_F, 0.0, 0.0, 0.0}; }

// e^(from - to) for a running maximum `from` replaced by `to >= from`; 0 for a row that had no value yet.
__device__ __forceinline__ double rescale(float from, float to) {
    return from == -CUDART_INF_F ? 0.0 : exp(static_cast<double>(from) - to);
}

// The statistics of the union of two sets of columns, `a` first.
__device__ __forceinline__ RowStats merge(const RowStats& a, const RowStats& b) {
    RowStats m;
    m.max_s = fmaxf(a.max_s, b.max_s);
    m.max_t = fmaxf(a.max_t, b.max_t);
    if (m.max_s == -CUDART_INF_F) return a;  // both empty
    const double as = rescale(a.max_s, m.max_s), bs = rescale(b.max_s, m.max_s);
    const double at = rescale(a.max_t, m.max_t), bt = rescale(b.max_t, m.max_t);
    m.sum_s = a.sum_s * as + b.sum_s * bs;
    m.sum_t = a.sum_t * at + b.sum_t * bt;
    m.cross = a.cross * at + b.cross * bt;
    return m;
}


// The block's image pair and tile: block b of cirkd_forward is (j, tile) with the tile fastest, i the anchor.
struct PairTile {
    int64_t i, j, o0;
};

__device__ __forceinline__ PairTile pair_tile(const KdCirkdParams& p) {
    const int64_t tile = blockIdx.x % p.tiles, j = blockIdx.x / p.tiles;
    return PairTile{p.anchor, j, tile * kOwned};
}

// The loss of one anchor's launch group: the last block of the group sums the blocks' partials in block order
// into the anchor's total, and the last anchor's then sums the anchors' totals in anchor order (earlier
// groups finished before this launch began) into the loss. Every thread of the block calls it.
__device__ __forceinline__ void sum_anchor_into_loss(const KdCirkdArgs& a, double kl_sum) {
    const KdCirkdParams& p = a.p;
    const double block = kd::block_sum(kl_sum);
    float* partials = kd::ptr<float>(a.loss_partials);
    if (threadIdx.x == 0) partials[blockIdx.x] = static_cast<float>(block);
    if (!kd::is_last_block_done(kd::ptr<unsigned int>(a.counter), gridDim.x)) return;
    const double anchor_total = kd::block_sum_of_partials(partials, gridDim.x);
    if (threadIdx.x != 0) return;
    double* totals = kd::ptr<double>(a.anchor_losses);
    totals[p.anchor] = anchor_total;
    if (p.anchor != p.batch - 1) return;
    double total = 0.0;
    for (int64_t i = 0; i + 1 < p.batch; ++i) total += __ldcg(totals + i);
    total += anchor_total;
    *kd::ptr<float>(a.loss) = static_cast<float>(static_cast<double>(p.loss_scale) * total);
}

// ---------------------------------------------------------------------------------------------------------
// 2. Forward: each row's LSEs and KL, and the loss.
template <typename T> __device__ void cirkd_forward(const KdCirkdArgs& a) {
    const KdCirkdParams& p = a.p;
    KD_SHARED_ARRAY(float, owned, kChunk * kOwned);
    KD_SHARED_ARRAY(float, others, kChunk * kOthers);
    const Staging st{owned, others};
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t P = p.pixels, cs = p.student_channels, ct = p.teacher_channels;
    const PairTile pt = pair_tile(p);
    const Features<T> s_i = features_of<T>(a, false, pt.i), s_j = features_of<T>(a, false, pt.j);
    const Features<T> t_i = features_of<T>(a, true, pt.i), t_j = features_of<T>(a, true, pt.j);
    RowStats row[kOwnedPerWarp];
#pragma unroll
    for (int r = 0; r < kOwnedPerWarp; ++r) row[r] = empty_stats();
    for (int64_t q0 = 0; q0 < P; q0 += kOthers) {
        float s[kOwnedPerWarp][kOthersPerLane], t[kOwnedPerWarp][kOthersPerLane];
        dot_tile(s_i, s_j, cs, P, pt.o0, q0, st, s);
        dot_tile(t_i, t_j, ct, P, pt.o0, q0, st, t);
#pragma unroll
        for (int r = 0; r < kOwnedPerWarp; ++r) {
            // This lane's columns of the tile as one more set of columns of the row.
            RowStats add = empty_stats();
#pragma unroll
            for (int k = 0; k < kOthersPerLane; ++k) {
                if (q0 + lane + 32 * k < P) {
                    add.max_s = fmaxf(add.max_s, s[r][k] * p.inv_tau);
                    add.max_t = fmaxf(add.max_t, t[r][k] * p.inv_tau);
                }
            }
#pragma unroll
            for (int k = 0; k < kOthersPerLane; ++k) {
                if (q0 + lane + 32 * k < P) {
                    const float sv = s[r][k] * p.inv_tau, tv = t[r][k] * p.inv_tau;
                    // Exponentials in double: for a student close to its teacher the KL is the small
                    // remainder of sum pt (t - s) and LSE(t) - LSE(s), which float sums would swamp.
                    const double et = exp(static_cast<double>(tv) - add.max_t);
                    add.sum_s += exp(static_cast<double>(sv) - add.max_s);
                    add.sum_t += et;
                    // t - s from the dot products (exact where they are close), then scaled.
                    add.cross += et * static_cast<double>((t[r][k] - s[r][k]) * p.inv_tau);
                }
            }
            row[r] = merge(row[r], add);
        }
    }
    double kl_sum = 0.0;
    float* lse = kd::ptr<float>(a.lse);
    const int64_t pair_rows = pt.j * P, side = static_cast<int64_t>(p.batch) * P;
#pragma unroll
    for (int r = 0; r < kOwnedPerWarp; ++r) {
        const RowStats m = kd::warp_merge_in_lane_order(row[r]);
        const int64_t pix = pt.o0 + warp * kOwnedPerWarp + r;
        if (lane == 0 && pix < P) {
            // LSE(s) - LSE(t) kept apart from LSE(t), so that the backward's ps / pt keeps its relative
            // precision where the two are close. It is exactly 0 for equal rows.
            const double lse_t = m.max_t + log(m.sum_t);
            const double delta = (static_cast<double>(m.max_s) - m.max_t) + (log(m.sum_s) - log(m.sum_t));
            lse[pair_rows + pix] = static_cast<float>(lse_t);
            lse[side + pair_rows + pix] = static_cast<float>(delta);
            kl_sum += m.cross * kd::recip(m.sum_t) + delta;
        }
    }
    if (p.flags & KD_WANT_LOSS) sum_anchor_into_loss(a, kl_sum);
}

// ---------------------------------------------------------------------------------------------------------
// 3 and 4. Gradient of the normalised student, anchor i's share. kOwnerIsRow: the block owns rows p of image
// i and visits every j (pass 3); else it owns columns q of image j and visits the anchor i only (pass 4). The
// LSEs are those of the rows, so of the owned pixels in pass 3 and of the others in pass 4.

// sum_k g[k] y[k] over one channel's run of the other image's source, in k order.
template <typename S> __device__ __forceinline__ float weighted_sum(const float* g, const S* y, int64_t cols) {
    float acc = 0.f;
    for (int64_t k = 0; k < cols; ++k) acc = fmaf(g[k], kd::to_float(y[k]), acc);
    return acc;
}

template <typename T, bool kOwnerIsRow> __device__ void grad_pass(const KdCirkdArgs& a) {
    const KdCirkdParams& p = a.p;
    KD_SHARED_ARRAY(float, owned, kChunk * kOwned);
    KD_SHARED_ARRAY(float, others, kChunk * kOthers);
    // One padding column, so that the lanes (the owned pixels) read g from distinct banks.
    KD_SHARED_ARRAY(float, g_tile, kOwned * (kOthers + 1));
    const Staging st{owned, others};
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t P = p.pixels, cs = p.student_channels, ct = p.teacher_channels;
    const int64_t o = kOwnerIsRow ? p.anchor : blockIdx.x / p.tiles, o0 = (blockIdx.x % p.tiles) * kOwned;
    const Features<T> s_o = features_of<T>(a, false, o), t_o = features_of<T>(a, true, o);
    const float* lse = kd::ptr<const float>(a.lse);
    const int64_t side = static_cast<int64_t>(p.batch) * P;
    float* d_hat = kd::ptr<float>(a.d_hat) + o * cs * P;
    // The other images: every j for the rows, the anchor alone for the columns.
    for (int64_t x = kOwnerIsRow ? 0 : p.anchor; x < (kOwnerIsRow ? p.batch : p.anchor + 1); ++x) {
        const int64_t j = kOwnerIsRow ? x : o;
        const float* lse_t = lse + j * P;
        const float* delta = lse_t + side;
        const Features<T> s_x = features_of<T>(a, false, x), t_x = features_of<T>(a, true, x);
        for (int64_t q0 = 0; q0 < P; q0 += kOthers) {
            float s[kOwnedPerWarp][kOthersPerLane], t[kOwnedPerWarp][kOthersPerLane];
            dot_tile(s_o, s_x, cs, P, o0, q0, st, s);
            dot_tile(t_o, t_x, ct, P, o0, q0, st, t);
#pragma unroll
            for (int r = 0; r < kOwnedPerWarp; ++r) {
                const int64_t own = o0 + warp * kOwnedPerWarp + r;
#pragma unroll
                for (int k = 0; k < kOthersPerLane; ++k) {
                    const int64_t oth = q0 + lane + 32 * k;
                    float g = 0.f;
                    if (own < P && oth < P) {
                        const int64_t row = kOwnerIsRow ? own : oth;
                        // ps - pt = pt (e^((s - t) - (LSE(s) - LSE(t))) - 1): relative precision where
                        // the student is close to the teacher, and exactly 0 for equal rows.
                        const float pt = expf(t[r][k] * p.inv_tau - lse_t[row]);
                        const float log_ratio = (s[r][k] - t[r][k]) * p.inv_tau - delta[row];
                        // Times the other pixel's reciprocal norm, so that the sum below runs over the
                        // source values: g S_hat[c, q] = (g inv[q]) source[c, q], without a product per term.
                        g = p.logit_grad_scale * (pt * expm1f(log_ratio)) * s_x.inv[oth];
                    }
                    g_tile[(warp * kOwnedPerWarp + r) * (kOthers + 1) + lane + 32 * k] = g;
                }
            }
            __syncthreads();
            // Lane = owned pixel, warps stride over the channels: every d_hat element of the tile has one
            // thread, which adds the columns in order.
            const int64_t own = o0 + lane;
            const int64_t cols = min(static_cast<int64_t>(kOthers), P - q0);
            // This launch's first contribution to the tile's d_hat elements overwrites (see the file's head).
            const bool first = q0 == 0 && p.anchor == 0 && (kOwnerIsRow ? x == 0 : o != 0);
            if (own < P) {
                const float* g = g_tile + lane * (kOthers + 1);
                for (int64_t c = warp; c < cs; c += kWarps) {
                    const int64_t e = c * P + q0;
                    const float acc = s_x.input != nullptr ? weighted_sum(g, s_x.input + e, cols)
                                                           : weighted_sum(g, s_x.pooled + e, cols);
                    float* d = d_hat + c * P + own;
                    *d = first ? acc : *d + acc;
                }
            }
            __syncthreads();  // g_tile is rewritten next
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// 5. Back through the normalisation (PyTorch's autograd of x / clamp_min(|x|, eps)) and the average pool. The
// thread owns its pixel's column of d_hat and of the gradient: it reads the whole column (the dot product)
// before its first store, which is what lets d_hat be the gradient buffer itself.
template <typename T> __device__ void cirkd_finish(const KdCirkdArgs& a) {
    const KdCirkdParams& p = a.p;
    const int64_t id = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
    if (id >= static_cast<int64_t>(p.batch) * p.pixels) return;
    const int64_t n = id / p.pixels, q = id - n * p.pixels;
    const int64_t channels = p.student_channels, plane = static_cast<int64_t>(p.height) * p.width;
    const Features<T> f = features_of<T>(a, false, n);
    const float* d = kd::ptr<const float>(a.d_hat) + n * channels * p.pixels + q;
    T* grad = kd::ptr<T>(a.grad_student) + n * channels * plane;
    const Window w = window_of(p, q);
    const Norm norm = norm_of(squared_norm(f, channels, p.pixels, q));
    float dot = 0.f;
    for (int64_t c = 0; c < channels; ++c) dot = fmaf(raw(f, c * p.pixels + q), d[c * p.pixels], dot);
    const float inv = norm.inv;
    const float radial = norm.clamped ? 0.f : dot * inv * inv * inv;
    const float k = kd::grad_factor(p.grad_scale, p.flags, a.upstream) / w.count;
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    for (int64_t c = 0; c < channels; ++c) {
        const float v = raw(f, c * p.pixels + q);
        const float share = k * (d[c * p.pixels] * inv - v * radial);
        for (int64_t h = w.h0; h < w.h1; ++h)
            for (int64_t col = w.w0; col < w.w1; ++col)
                kd::store_grad(grad + c * plane + h * p.width + col, share, accumulate);
    }
}

}  // namespace

// cirkd_forward asks for one resident block per SM only: its double-precision exponentials take about 140
// registers a thread, which ptxas would otherwise squeeze into 128 and spill. The gradient passes ask for
// two (up to 128 registers): left to itself ptxas gives cirkd_grad_rows 64 and spills its tiles.
#define CIRKD_ENTRIES(T, NAME)                                                                    \
    KD_ENTRY(cirkd_norms_##NAME, KdCirkdArgs, kBlockThreads) { cirkd_norms<T>(a); }                \
    KD_ENTRY(cirkd_forward_##NAME, KdCirkdArgs, kBlockThreads, 1) { cirkd_forward<T>(a); }            \
    KD_ENTRY(cirkd_grad_rows_##NAME, KdCirkdArgs, kBlockThreads, 2) { grad_pass<T, true>(a); }         \
    KD_ENTRY(cirkd_grad_columns_##NAME, KdCirkdArgs, kBlockThreads, 2) { grad_pass<T, false>(a); }     \
    KD_ENTRY(cirkd_finish_##NAME, KdCirkdArgs, kBlockThreads) { cirkd_finish<T>(a); }
KD_FOR_EACH_DTYPE(CIRKD_ENTRIES)
