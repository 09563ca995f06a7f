/*
 * SemCKD (docs/losses.md §4): batch Grams, query/key MLPs, attention over teacher layers, the teacher's
 * adaptive average pooling, per-sample MSE of every (student, teacher) pair, the loss and every gradient
 * (regressor outputs, student features through the Gram path, MLP parameters).
 *
 * Six launches whatever S and T (forward only: the first four and a one-block finish):
 *   1. semckd_gram       partial Grams X X^T: one block per (layer, D chunk, 64x64 output tile)
 *   2. semckd_embed      one block per layer: sums the layer's partial Grams in chunk order, then the MLP
 *                        (Linear, ReLU, Linear, L2 normalisation) for the B samples
 *   3. semckd_attend     one block: e = <q_i[b], k_j[b]>, softmax over j -> alpha (and the attention output)
 *   4. semckd_pairs      one block per (pair, sample): pooled teacher on the fly, squared error sum -> MSE,
 *                        and d loss / d Shat = 2 g alpha (Shat - That) / D_ij in the same pass (it needs alpha
 *                        only, not the MSE)
 *   5. semckd_finish     one block per layer: block 0 writes the loss; every block computes its layer's
 *                        d loss / d embedding from alpha and the MSEs (softmax backward), then the MLP backward:
 *                        parameter gradients (sums over samples in sample order) and, for student layers, dGr
 *   6. semckd_gram_back  dX = (dGr + dGr^T) X per student layer
 * Every sum has a fixed order (thread-strided loops, the block tree, chunks in order); no atomics at all, so
 * results are bitwise reproducible. Fusing 2 into 1 would need a "last block done" election per layer; the
 * Grams are small (B x B) so the extra launch costs microseconds.
 */
#include "common.cuh"
#include "semckd.h"

namespace {

using kd::kBlockThreads;
constexpr int kTile = KD_SEMCKD_GRAM_TILE;
constexpr int kK = KD_SEMCKD_GRAM_K;
constexpr int kRows = KD_SEMCKD_BACK_ROWS;

__device__ __forceinline__ int layers_of(const KdSemckdParams& p) { return p.students + p.teachers; }

__device__ __forceinline__ float scale_of_grads(const KdSemckdArgs& a) {
    return kd::grad_factor(a.p.grad_scale, a.p.flags, a.upstream);
}

// ---------------------------------------------------------------------------------------------------------
// 1. Partial Grams.
template <typename T> __device__ void semckd_gram(const KdSemckdArgs& a) {
    const KdSemckdParams& p = a.p;
    const int item = blockIdx.x;
    int l = 0;
    while (l + 1 < layers_of(p) && item >= p.gram_first[l + 1]) ++l;
    const int local = item - p.gram_first[l];
    const int tiles = p.gram_tiles * p.gram_tiles;
    const int chunk = local / tiles, tile = local % tiles;
    const int tr = tile / p.gram_tiles, tc = tile % p.gram_tiles;
    // The layer's entries read with constant indices: a run-time index into the parameter block makes some
    // compilers (sm_80, 16-bit instances) copy it to local memory.
    int64_t D = 0, chunk_len = 0, gram_offset = 0;
    uint64_t features = 0;
#pragma unroll
    for (int i = 0; i < 2 * KD_SEMCKD_MAX_LAYERS; ++i) {
        if (i == l) {
            D = p.dim[i];
            chunk_len = p.chunk_len[i];
            gram_offset = p.gram_offset[i];
            features = a.features[i];
        }
    }
    const int64_t B = p.batch;
    const int64_t k_begin = chunk * chunk_len;
    const int64_t k_end = min(D, k_begin + chunk_len);
    const T* x = kd::ptr<const T>(features);
    KD_SHARED_ARRAY(float, xr, kTile * (kK + 1));
    KD_SHARED_ARRAY(float, xc, kTile * (kK + 1));
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    float acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = 0.f;
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kK) {
        for (int e = threadIdx.x; e < kTile * kK; e += kBlockThreads) {
            const int row = e / kK, kk = e % kK;
            const int64_t k = k0 + kk;
            const int64_t gr = tr * kTile + row, gc = tc * kTile + row;
            xr[row * (kK + 1) + kk] = (gr < B && k < k_end) ? kd::to_float(x[gr * D + k]) : 0.f;
            xc[row * (kK + 1) + kk] = (gc < B && k < k_end) ? kd::to_float(x[gc * D + k]) : 0.f;
        }
        __syncthreads();
        for (int kk = 0; kk < kK; ++kk) {
            float rv[4], cv[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) rv[r] = xr[(ty + 16 * r) * (kK + 1) + kk];
#pragma unroll
            for (int c = 0; c < 4; ++c) cv[c] = xc[(tx + 16 * c) * (kK + 1) + kk];
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[r][c] += rv[r] * cv[c];
        }
        __syncthreads();
    }
    float* out = kd::ptr<float>(a.gram_partials) + gram_offset + chunk * B * B;
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int64_t gr = tr * kTile + ty + 16 * r, gc = tc * kTile + tx + 16 * c;
            if (gr < B && gc < B) out[gr * B + gc] = acc[r][c];
        }
}

// ---------------------------------------------------------------------------------------------------------
// 2. Gram combine and MLP forward, one block per layer.
template <typename T> __device__ void semckd_embed(const KdSemckdArgs& a) {
    const KdSemckdParams& p = a.p;
    const int l = blockIdx.x;
    const int B = p.batch, d = p.embed, h2 = 2 * p.embed;
    const float* partials = kd::ptr<const float>(a.gram_partials) + p.gram_offset[l];
    float* gram = kd::ptr<float>(a.gram) + static_cast<int64_t>(l) * B * B;
    for (int64_t e = threadIdx.x; e < static_cast<int64_t>(B) * B; e += kBlockThreads) {
        float s = 0.f;
        for (int c = 0; c < p.chunks[l]; ++c) s += partials[c * static_cast<int64_t>(B) * B + e];
        gram[e] = s;
    }
    __syncthreads();
    const float* w1 = kd::ptr<const float>(a.mlp[4 * l + 0]);
    const float* b1 = kd::ptr<const float>(a.mlp[4 * l + 1]);
    const float* w2 = kd::ptr<const float>(a.mlp[4 * l + 2]);
    const float* b2 = kd::ptr<const float>(a.mlp[4 * l + 3]);
    float* u = kd::ptr<float>(a.hidden) + static_cast<int64_t>(l) * B * h2;
    float* y = kd::ptr<float>(a.embedding) + static_cast<int64_t>(l) * B * d;
    float* norm = kd::ptr<float>(a.norm) + static_cast<int64_t>(l) * B;
    for (int e = threadIdx.x; e < B * h2; e += kBlockThreads) {
        const int b = e / h2, k = e % h2;
        float s = b1[k];
        for (int c = 0; c < B; ++c) s += w1[k * B + c] * gram[b * B + c];
        u[e] = s;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < B * d; e += kBlockThreads) {
        const int b = e / d, m = e % d;
        float s = b2[m];
        for (int k = 0; k < h2; ++k) s += w2[m * h2 + k] * fmaxf(u[b * h2 + k], 0.f);
        y[e] = s;  // z for now
    }
    __syncthreads();
    for (int b = threadIdx.x; b < B; b += kBlockThreads) {
        float s = 0.f;
        for (int m = 0; m < d; ++m) s += y[b * d + m] * y[b * d + m];
        float n = sqrtf(s);
        if (p.eps > 0.f && n < p.eps) n = p.eps;
        norm[b] = n;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < B * d; e += kBlockThreads) y[e] = y[e] / norm[e / d];
}

// ---------------------------------------------------------------------------------------------------------
// 3. Attention, one block.
template <typename T> __device__ void semckd_attend(const KdSemckdArgs& a) {
    const KdSemckdParams& p = a.p;
    const int B = p.batch, d = p.embed, S = p.students, Tn = p.teachers;
    const float* y = kd::ptr<const float>(a.embedding);
    float* alpha = kd::ptr<float>(a.alpha);
    float* attention = kd::ptr<float>(a.attention);
    for (int r = threadIdx.x; r < B * S; r += kBlockThreads) {
        const int b = r / S, i = r % S;
        const float* q = y + (static_cast<int64_t>(i) * B + b) * d;
        float e[KD_SEMCKD_MAX_LAYERS];
        float m = -CUDART_INF_F;
        for (int j = 0; j < Tn; ++j) {
            const float* k = y + (static_cast<int64_t>(S + j) * B + b) * d;
            float s = 0.f;
            for (int c = 0; c < d; ++c) s += q[c] * k[c];
            e[j] = s;
            m = fmaxf(m, s);
        }
        float z = 0.f;
        for (int j = 0; j < Tn; ++j) {
            e[j] = expf(e[j] - m);
            z += e[j];
        }
        for (int j = 0; j < Tn; ++j) {
            alpha[r * Tn + j] = e[j] / z;
            if (attention) attention[r * Tn + j] = e[j] / z;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// 4. Pairs: MSE and d loss / d Shat, one block per (pair, sample).
template <typename T> __device__ void semckd_pairs(const KdSemckdArgs& a) {
    const KdSemckdParams& p = a.p;
    const int B = p.batch, S = p.students, Tn = p.teachers;
    const int pair = blockIdx.x / B, b = blockIdx.x % B;
    const int i = pair / Tn, j = pair % Tn;
    const int h = min(p.height[i], p.height[S + j]);
    const int C = p.channels[S + j], th = p.height[S + j], tw = p.width[S + j];
    const int64_t plane = static_cast<int64_t>(h) * h, D = C * plane;
    const T* proj = kd::ptr<const T>(a.proj[pair]) + b * D;
    const T* teacher = kd::ptr<const T>(a.features[S + j]) + static_cast<int64_t>(b) * C * th * tw;
    const bool want_grad = (a.p.flags & KD_WANT_GRAD_STUDENT) != 0;
    const bool accumulate = (a.p.flags & KD_ACCUMULATE_GRAD) != 0;
    const float alpha = kd::ptr<const float>(a.alpha)[(b * S + i) * Tn + j];
    T* grad = want_grad ? kd::ptr<T>(a.grad_proj[pair]) + b * D : nullptr;
    const float coef = want_grad ? 2.f * scale_of_grads(a) * alpha / static_cast<float>(D) : 0.f;
    double acc = 0.0;
    for (int64_t e = threadIdx.x; e < D; e += kBlockThreads) {
        const int64_t c = e / plane;
        const int oy = static_cast<int>((e % plane) / h), ox = static_cast<int>(e % h);
        const int y0 = oy * th / h, y1 = ((oy + 1) * th + h - 1) / h;
        const int x0 = ox * tw / h, x1 = ((ox + 1) * tw + h - 1) / h;
        const T* t = teacher + c * th * tw;
        float s = 0.f;
        for (int yy = y0; yy < y1; ++yy)
            for (int xx = x0; xx < x1; ++xx) s += kd::to_float(t[yy * tw + xx]);
        const float diff = kd::to_float(proj[e]) - s / static_cast<float>((y1 - y0) * (x1 - x0));
        acc += static_cast<double>(diff) * diff;
        if (want_grad) kd::store_grad(grad + e, coef * diff, accumulate);
    }
    const double total = kd::block_sum(acc);
    if (threadIdx.x == 0) kd::ptr<float>(a.mse)[(b * S + i) * Tn + j] = static_cast<float>(total / D);
}

// ---------------------------------------------------------------------------------------------------------
// 5. Loss, softmax backward and MLP backward, one block per layer (one block in all without gradients).
__device__ __forceinline__ void store_param_grad(float* p, float g, bool accumulate) {
    *p = accumulate ? *p + g : g;
}

template <typename T> __device__ void semckd_finish(const KdSemckdArgs& a) {
    const KdSemckdParams& p = a.p;
    const int B = p.batch, d = p.embed, h2 = 2 * p.embed, S = p.students, Tn = p.teachers;
    const float* alpha = kd::ptr<const float>(a.alpha);
    const float* mse = kd::ptr<const float>(a.mse);
    const int l = blockIdx.x;
    if (l == 0 && (p.flags & KD_WANT_LOSS)) {
        double acc = 0.0;
        for (int e = threadIdx.x; e < B * S * Tn; e += kBlockThreads) acc += static_cast<double>(alpha[e]) * mse[e];
        const double total = kd::block_sum(acc);
        if (threadIdx.x == 0) *kd::ptr<float>(a.loss) = static_cast<float>(total * p.loss_scale);
    }
    if (!(p.flags & KD_WANT_GRAD_STUDENT)) return;
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    const float gs = scale_of_grads(a);
    const float* emb = kd::ptr<const float>(a.embedding);
    float* dy = kd::ptr<float>(a.dy) + static_cast<int64_t>(l) * B * d;
    float* dz = kd::ptr<float>(a.dz) + static_cast<int64_t>(l) * B * d;
    float* du = kd::ptr<float>(a.du) + static_cast<int64_t>(l) * B * h2;
    const float* y = emb + static_cast<int64_t>(l) * B * d;
    const float* u = kd::ptr<const float>(a.hidden) + static_cast<int64_t>(l) * B * h2;
    const float* norm = kd::ptr<const float>(a.norm) + static_cast<int64_t>(l) * B;
    const float* gram = kd::ptr<const float>(a.gram) + static_cast<int64_t>(l) * B * B;
    const bool student = l < S;
    // de[b, i, j] = alpha (g - sum_j' alpha g'), g = gs * mse.
    auto de = [&](int b, int i, int j) {
        const float* al = alpha + (b * S + i) * Tn;
        const float* ms = mse + (b * S + i) * Tn;
        float gbar = 0.f;
        for (int jj = 0; jj < Tn; ++jj) gbar += al[jj] * gs * ms[jj];
        return al[j] * (gs * ms[j] - gbar);
    };
    for (int e = threadIdx.x; e < B * d; e += kBlockThreads) {
        const int b = e / d, m = e % d;
        float s = 0.f;
        if (student) {
            for (int j = 0; j < Tn; ++j) s += de(b, l, j) * emb[(static_cast<int64_t>(S + j) * B + b) * d + m];
        } else {
            for (int i = 0; i < S; ++i) s += de(b, i, l - S) * emb[(static_cast<int64_t>(i) * B + b) * d + m];
        }
        dy[e] = s;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < B * d; e += kBlockThreads) {
        const int b = e / d;
        const bool clamped = p.eps > 0.f && norm[b] == p.eps;
        float dot = 0.f;
        if (!clamped)
            for (int m = 0; m < d; ++m) dot += dy[b * d + m] * y[b * d + m];
        dz[e] = (dy[e] - dot * y[e]) / norm[b];
    }
    __syncthreads();
    const float* w1 = kd::ptr<const float>(a.mlp[4 * l + 0]);
    const float* w2 = kd::ptr<const float>(a.mlp[4 * l + 2]);
    float* gw1 = kd::ptr<float>(a.grad_mlp[4 * l + 0]);
    float* gb1 = kd::ptr<float>(a.grad_mlp[4 * l + 1]);
    float* gw2 = kd::ptr<float>(a.grad_mlp[4 * l + 2]);
    float* gb2 = kd::ptr<float>(a.grad_mlp[4 * l + 3]);
    for (int e = threadIdx.x; e < d * h2; e += kBlockThreads) {
        const int m = e / h2, k = e % h2;
        float s = 0.f;
        for (int b = 0; b < B; ++b) s += dz[b * d + m] * fmaxf(u[b * h2 + k], 0.f);
        store_param_grad(gw2 + e, s, accumulate);
    }
    for (int m = threadIdx.x; m < d; m += kBlockThreads) {
        float s = 0.f;
        for (int b = 0; b < B; ++b) s += dz[b * d + m];
        store_param_grad(gb2 + m, s, accumulate);
    }
    for (int e = threadIdx.x; e < B * h2; e += kBlockThreads) {
        const int b = e / h2, k = e % h2;
        float s = 0.f;
        for (int m = 0; m < d; ++m) s += w2[m * h2 + k] * dz[b * d + m];
        du[e] = u[e] > 0.f ? s : 0.f;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < h2 * B; e += kBlockThreads) {
        const int k = e / B, c = e % B;
        float s = 0.f;
        for (int b = 0; b < B; ++b) s += du[b * h2 + k] * gram[b * B + c];
        store_param_grad(gw1 + e, s, accumulate);
    }
    for (int k = threadIdx.x; k < h2; k += kBlockThreads) {
        float s = 0.f;
        for (int b = 0; b < B; ++b) s += du[b * h2 + k];
        store_param_grad(gb1 + k, s, accumulate);
    }
    if (student) {
        float* dgram = kd::ptr<float>(a.dgram) + static_cast<int64_t>(l) * B * B;
        for (int e = threadIdx.x; e < B * B; e += kBlockThreads) {
            const int b = e / B, c = e % B;
            float s = 0.f;
            for (int k = 0; k < h2; ++k) s += w1[k * B + c] * du[b * h2 + k];
            dgram[e] = s;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// 6. dX = (dGr + dGr^T) X: one block per (student layer, 16 rows, 256 columns).
template <typename T> __device__ void semckd_gram_back(const KdSemckdArgs& a) {
    const KdSemckdParams& p = a.p;
    const int item = blockIdx.x;
    int i = 0;
    while (i + 1 < p.students && item >= p.back_first[i + 1]) ++i;
    const int local = item - p.back_first[i];
    const int B = p.batch;
    const int row_blocks = (B + kRows - 1) / kRows;
    const int rb = local % row_blocks;
    const int64_t col = static_cast<int64_t>(local / row_blocks) * kBlockThreads + threadIdx.x;
    const int64_t D = p.dim[i];
    const T* x = kd::ptr<const T>(a.features[i]);
    const float* dg = kd::ptr<const float>(a.dgram) + static_cast<int64_t>(i) * B * B;
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    KD_SHARED_ARRAY(float, m, kRows * 64);
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0.f;
    for (int c0 = 0; c0 < B; c0 += 64) {
        for (int e = threadIdx.x; e < kRows * 64; e += kBlockThreads) {
            const int r = rb * kRows + e / 64, c = c0 + e % 64;
            m[e] = (r < B && c < B) ? dg[r * B + c] + dg[c * B + r] : 0.f;
        }
        __syncthreads();
        if (col < D) {
            const int cend = min(64, B - c0);
            for (int c = 0; c < cend; ++c) {
                const float xv = kd::to_float(x[(c0 + c) * D + col]);
#pragma unroll
                for (int r = 0; r < kRows; ++r) acc[r] += m[r * 64 + c] * xv;
            }
        }
        __syncthreads();
    }
    if (col < D) {
        T* g = kd::ptr<T>(a.grad_student[i]);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            const int row = rb * kRows + r;
            if (row < B) kd::store_grad(g + row * D + col, acc[r], accumulate);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Adaptive average pooling (the caller's student side, §4.3): one thread per output element, and for the
// backward one thread per input element gathering the windows that contain it (no atomics).
__device__ __forceinline__ int pool_start(int o, int in, int out) { return static_cast<int>((static_cast<int64_t>(o) * in) / out); }
__device__ __forceinline__ int pool_end(int o, int in, int out) {
    return static_cast<int>((static_cast<int64_t>(o + 1) * in + out - 1) / out);
}

template <typename T> __device__ void semckd_pool(const KdPoolArgs& a) {
    const int64_t plane = static_cast<int64_t>(a.out_h) * a.out_w;
    const int64_t e = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
    if (e >= a.planes * plane) return;
    const int64_t pl = e / plane;
    const int oy = static_cast<int>((e % plane) / a.out_w), ox = static_cast<int>(e % a.out_w);
    const int y0 = pool_start(oy, a.in_h, a.out_h), y1 = pool_end(oy, a.in_h, a.out_h);
    const int x0 = pool_start(ox, a.in_w, a.out_w), x1 = pool_end(ox, a.in_w, a.out_w);
    const T* x = kd::ptr<const T>(a.input) + pl * a.in_h * a.in_w;
    float s = 0.f;
    for (int yy = y0; yy < y1; ++yy)
        for (int xx = x0; xx < x1; ++xx) s += kd::to_float(x[yy * a.in_w + xx]);
    kd::ptr<T>(a.output)[e] = kd::from_float<T>(s / static_cast<float>((y1 - y0) * (x1 - x0)));
}

template <typename T> __device__ void semckd_pool_back(const KdPoolArgs& a) {
    const int64_t plane = static_cast<int64_t>(a.in_h) * a.in_w;
    const int64_t e = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
    if (e >= a.planes * plane) return;
    const int64_t pl = e / plane;
    const int y = static_cast<int>((e % plane) / a.in_w), x = static_cast<int>(e % a.in_w);
    const T* g = kd::ptr<const T>(a.input) + pl * a.out_h * a.out_w;
    // Output rows whose window holds y: start(oy) <= y < end(oy); the candidates lie around y * out / in.
    const int oy_lo = max(0, static_cast<int>(static_cast<int64_t>(y) * a.out_h / a.in_h) - 1);
    const int oy_hi = min(a.out_h - 1, static_cast<int>(static_cast<int64_t>(y + 1) * a.out_h / a.in_h) + 1);
    const int ox_lo = max(0, static_cast<int>(static_cast<int64_t>(x) * a.out_w / a.in_w) - 1);
    const int ox_hi = min(a.out_w - 1, static_cast<int>(static_cast<int64_t>(x + 1) * a.out_w / a.in_w) + 1);
    float s = 0.f;
    for (int oy = oy_lo; oy <= oy_hi; ++oy) {
        const int y0 = pool_start(oy, a.in_h, a.out_h), y1 = pool_end(oy, a.in_h, a.out_h);
        if (y < y0 || y >= y1) continue;
        for (int ox = ox_lo; ox <= ox_hi; ++ox) {
            const int x0 = pool_start(ox, a.in_w, a.out_w), x1 = pool_end(ox, a.in_w, a.out_w);
            if (x < x0 || x >= x1) continue;
            s += kd::to_float(g[oy * a.out_w + ox]) / static_cast<float>((y1 - y0) * (x1 - x0));
        }
    }
    kd::store_grad(kd::ptr<T>(a.output) + e, a.scale * s, (a.flags & KD_ACCUMULATE_GRAD) != 0);
}

}  // namespace

#define SEMCKD_ENTRIES(T, NAME)                                                                        \
    KD_ENTRY(semckd_gram_##NAME, KdSemckdArgs, kBlockThreads) { semckd_gram<T>(a); }                   \
    KD_ENTRY(semckd_embed_##NAME, KdSemckdArgs, kBlockThreads) { semckd_embed<T>(a); }                 \
    KD_ENTRY(semckd_attend_##NAME, KdSemckdArgs, kBlockThreads) { semckd_attend<T>(a); }               \
    KD_ENTRY(semckd_pairs_##NAME, KdSemckdArgs, kBlockThreads) { semckd_pairs<T>(a); }                 \
    KD_ENTRY(semckd_finish_##NAME, KdSemckdArgs, kBlockThreads) { semckd_finish<T>(a); }               \
    KD_ENTRY(semckd_gram_back_##NAME, KdSemckdArgs, kBlockThreads) { semckd_gram_back<T>(a); }        \
    KD_ENTRY(semckd_pool_##NAME, KdPoolArgs, kBlockThreads) { semckd_pool<T>(a); }                      \
    KD_ENTRY(semckd_pool_back_##NAME, KdPoolArgs, kBlockThreads) { semckd_pool_back<T>(a); }
KD_FOR_EACH_DTYPE(SEMCKD_ENTRIES)
