/*
 * DIST, segmentation form (docs/losses.md section 8): Pearson correlations of the class distributions,
 * between classes (per pixel) and within classes (per class, over every pixel of the batch).
 *
 * With p = softmax_C(x / tau) per pixel, the kernels work with q = p - 1/C, which is p centred over its
 * classes (a softmax sums to 1, so its class mean is exactly 1/C). They compute it as
 *     q_c = (expm1(d_c) - mean_c expm1(d_c)) / sum_c exp(d_c),   d_c = (x_c - max x) / tau,
 * so that a nearly uniform pixel keeps the relative accuracy of its small deviations (p - 1/C in fp32 would
 * cancel them away) and a constant pixel gives q = 0 exactly, as in the official code. The inter-class
 * correlation of a pixel is then rho = q_S . q_T / (|q_S| |q_T| + 1e-8). The intra-class correlation of a
 * class needs the means of its column over all N*H*W pixels, so it is built from five moments per class,
 * sum x, sum y, sum x^2, sum y^2, sum x y, of x = q_S - K_S and y = q_T - K_T, where the shifts K are the
 * class's values at pixel 0: a column that is constant over the batch then gives exactly zero deviations,
 * and a nearly constant one no cancellation. Moments are summed in double.
 *
 * Three launches:
 * 1. `dist_stats_*`: every thread takes KD_DIST_PIXELS_PER_THREAD pixels of a tile (reading their C values
 *    of S and T, strided by H*W; consecutive threads take consecutive pixels, so every load of a warp is a
 *    contiguous run of one class), computes their softmaxes and inter-class correlations, and the block sums
 *    the moments of each class in a fixed tree, adding them to its own partial, tile after tile. Fused
 *    because everything here depends on one pixel's own C values (its inter term) or is additive over pixels
 *    (the moments), so one read of S and T gives both.
 * 2. `dist_finish_*`: one block per class sums its moments over the blocks of (1) in block order, and writes
 *    the class's correlation and gradient coefficients; the last class block done sums the correlations
 *    into the loss. Nothing of the intra term's gradient is known before every pixel has been read: this is
 *    the one global dependency, so the student is read twice in all.
 * 3. `dist_grad_*`: one thread per pixel recomputes its softmaxes and inter-class correlation (re-reading
 *    its values, which stay in L1/L2 between the sweeps over its classes) and writes
 *    d loss / d x_c = p_c (g_c - sum_k p_k g_k) / tau, with g = d loss / d p from both terms.
 *
 * Deterministic: every sum has a fixed order (threads, warps, tiles, blocks), whatever the block scheduling.
 */
#include "common.cuh"
#include "dist.h"

namespace {

using kd::kBlockThreads;
using kd::kWarps;

constexpr int kPixelsPerThread = KD_DIST_PIXELS_PER_THREAD;
constexpr int kTilePixels = KD_DIST_TILE_PIXELS;
constexpr int kMoments = 5;
constexpr double kEps = 1e-8;  // added to the product of the norms, as the official code does

using kd::recip;

// The softmax of one pixel, enough to give q_c and p_c of any of its classes.
struct PixelSoftmax {
    float m;        // max of the logits (input units)
    float inv_sum;  // 1 / sum_c exp(d_c)
    float mean_u;   // mean_c expm1(d_c)
};

__device__ __forceinline__ float centred(const PixelSoftmax& s, float x, float inv_tau) {
    return (expm1f((x - s.m) * inv_tau) - s.mean_u) * s.inv_sum;
}

__device__ __forceinline__ float prob(const PixelSoftmax& s, float x, float inv_tau) {
    return expf((x - s.m) * inv_tau) * s.inv_sum;
}

// The softmax of the pixel whose class 0 is at `x` (classes `plane` apart), by one thread.
template <typename T>
__device__ __forceinline__ PixelSoftmax pixel_softmax(const T* __restrict__ x, int64_t plane, int classes,
                                                      float inv_tau) {
    float m = -CUDART_INF_F;
    for (int c = 0; c < classes; ++c) m = fmaxf(m, kd::to_float(__ldg(x + c * plane)));
    double sum = 0.0, sum_u = 0.0;
    for (int c = 0; c < classes; ++c) {
        const float d = (kd::to_float(__ldg(x + c * plane)) - m) * inv_tau;
        sum += expf(d);
        sum_u += expm1f(d);
    }
    return {m, static_cast<float>(recip(sum)), static_cast<float>(sum_u * recip(classes))};
}

// The same softmax, computed by the whole block (threads stride over the classes), identical in every
// thread: for the shifts, which every thread needs for every class.
template <typename T>
__device__ __forceinline__ PixelSoftmax block_pixel_softmax2(const T* __restrict__ s, const T* __restrict__ t,
                                                             int64_t plane, int classes, float inv_tau,
                                                             PixelSoftmax& soft_t) {
    float ms = -CUDART_INF_F, mt = -CUDART_INF_F;
    for (int c = threadIdx.x; c < classes; c += blockDim.x) {
        ms = fmaxf(ms, kd::to_float(__ldg(s + c * plane)));
        mt = fmaxf(mt, kd::to_float(__ldg(t + c * plane)));
    }
    kd::block_max2(ms, mt);
    double ss = 0.0, st = 0.0, us = 0.0, ut = 0.0, unused = 0.0;
    for (int c = threadIdx.x; c < classes; c += blockDim.x) {
        const float ds = (kd::to_float(__ldg(s + c * plane)) - ms) * inv_tau;
        const float dt = (kd::to_float(__ldg(t + c * plane)) - mt) * inv_tau;
        ss += expf(ds);
        us += expm1f(ds);
        st += expf(dt);
        ut += expm1f(dt);
    }
    kd::block_sum3(ss, us, unused);
    kd::block_sum3(st, ut, unused);
    const double inv_classes = recip(classes);
    soft_t = {mt, static_cast<float>(recip(st)), static_cast<float>(ut * inv_classes)};
    return {ms, static_cast<float>(recip(ss)), static_cast<float>(us * inv_classes)};
}

// The Pearson correlation of two centred vectors from their dot product and squared norms, and the two
// coefficients of its derivative with respect to the first, d rho / d a_i = b_i * inv_den - second * a_i.
// Where a is constant (|a| = 0) the second term, which vanishes as a approaches a constant, is left out
// rather than evaluated as 0/0 (PyTorch's norm backward does the same); it is left out as well below
// |a| = 1e-30, where it is at most |a| |b|^2 / eps^2 < 1e-13, against the first term's |b| / eps.
struct Correlation {
    double rho, inv_den, second;
};

__device__ __forceinline__ Correlation correlation(double dot, double na2, double nb2) {
    const double na = sqrt(fmax(na2, 0.0)), nb = sqrt(fmax(nb2, 0.0));
    const double inv_den = recip(na * nb + kEps);
    return {dot * inv_den, inv_den, na > 1e-30 ? dot * nb * recip(na) * inv_den * inv_den : 0.0};
}

// Element (n, 0, h, w) of pixel `pix` = n * plane + hw.
__device__ __forceinline__ int64_t pixel_base(int64_t pix, int64_t plane, int classes) {
    const int64_t n = pix / plane;
    return n * plane * classes + (pix - n * plane);
}

template <typename T> __device__ void dist_stats(const KdDistArgs& args) {
    const T* __restrict__ student = kd::ptr<const T>(args.student);
    const T* __restrict__ teacher = kd::ptr<const T>(args.teacher);
    const KdDistParams& p = args.p;
    const int C = p.classes;
    const int64_t plane = p.plane;
    const float inv_tau = p.inv_tau;
    double* __restrict__ moments = kd::ptr<double>(args.moments);
    const int64_t slots = static_cast<int64_t>(C) * p.stats_blocks;  // one moment's (class, block) entries

    // The shifts: q_S and q_T of every class at pixel 0, the same in every block.
    KD_SHARED_ARRAY(float, shift_s, KD_DIST_MAX_CLASSES);
    KD_SHARED_ARRAY(float, shift_t, KD_DIST_MAX_CLASSES);
    {
        PixelSoftmax ref_t;
        const PixelSoftmax ref_s = block_pixel_softmax2(student, teacher, plane, C, inv_tau, ref_t);
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            shift_s[c] = centred(ref_s, kd::to_float(__ldg(student + c * plane)), inv_tau);
            shift_t[c] = centred(ref_t, kd::to_float(__ldg(teacher + c * plane)), inv_tau);
            if (blockIdx.x == 0) {
                float* coefs = kd::ptr<float>(args.coefs) + static_cast<int64_t>(c) * KD_DIST_COEFS;
                coefs[0] = shift_s[c];
                coefs[1] = shift_t[c];
            }
        }
        __syncthreads();
    }

    // Per-warp moments of one class, double-buffered (tiles x classes alternate): a warp writes the buffer
    // again only after the next class's barrier, which thread 0 reaches only after summing what it held.
    KD_SHARED_ARRAY(double, warp_moments, 2 * kWarps * kMoments);
    int parity = 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    double rho_sum = 0.0;
    const int64_t tiles = (p.pixels + kTilePixels - 1) / kTilePixels;
    bool first_tile = true;
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        int64_t base[kPixelsPerThread];
        bool active[kPixelsPerThread];
        PixelSoftmax soft_s[kPixelsPerThread], soft_t[kPixelsPerThread];
        double dot[kPixelsPerThread], ns[kPixelsPerThread], nt[kPixelsPerThread];
#pragma unroll
        for (int r = 0; r < kPixelsPerThread; ++r) {
            const int64_t pix = tile * kTilePixels + r * kBlockThreads + threadIdx.x;
            active[r] = pix < p.pixels;
            base[r] = active[r] ? pixel_base(pix, plane, C) : 0;
            if (active[r]) {
                soft_s[r] = pixel_softmax(student + base[r], plane, C, inv_tau);
                soft_t[r] = pixel_softmax(teacher + base[r], plane, C, inv_tau);
            }
            dot[r] = ns[r] = nt[r] = 0.0;
        }
        for (int c = 0; c < C; ++c) {
            double m[kMoments] = {0.0, 0.0, 0.0, 0.0, 0.0};  // x, y, x^2, y^2, x y
#pragma unroll
            for (int r = 0; r < kPixelsPerThread; ++r) {
                if (!active[r]) continue;
                const int64_t at = base[r] + c * plane;
                const float qs = centred(soft_s[r], kd::to_float(__ldg(student + at)), inv_tau);
                const float qt = centred(soft_t[r], kd::to_float(__ldg(teacher + at)), inv_tau);
                dot[r] = fma(static_cast<double>(qs), static_cast<double>(qt), dot[r]);
                ns[r] = fma(static_cast<double>(qs), static_cast<double>(qs), ns[r]);
                nt[r] = fma(static_cast<double>(qt), static_cast<double>(qt), nt[r]);
                const double x = qs - shift_s[c], y = qt - shift_t[c];
                m[0] += x;
                m[1] += y;
                m[2] = fma(x, x, m[2]);
                m[3] = fma(y, y, m[3]);
                m[4] = fma(x, y, m[4]);
            }
            double* buffer = warp_moments + parity * kWarps * kMoments;
            parity ^= 1;
#pragma unroll
            for (int k = 0; k < kMoments; ++k) {
                m[k] = kd::warp_sum(m[k]);
                if (lane == 0) buffer[warp * kMoments + k] = m[k];
            }
            __syncthreads();
            if (threadIdx.x == 0) {
#pragma unroll
                for (int k = 0; k < kMoments; ++k) {
                    double total = 0.0;
                    for (int w = 0; w < kWarps; ++w) total += buffer[w * kMoments + k];
                    double* slot = moments + k * slots + static_cast<int64_t>(c) * p.stats_blocks + blockIdx.x;
                    *slot = first_tile ? total : *slot + total;
                }
            }
        }
#pragma unroll
        for (int r = 0; r < kPixelsPerThread; ++r) {
            if (active[r]) rho_sum += correlation(dot[r], ns[r], nt[r]).rho;
        }
        first_tile = false;
    }
    const double block_rho = kd::block_sum(rho_sum);  // in thread 0
    if (threadIdx.x == 0) kd::ptr<double>(args.pixel_rho)[blockIdx.x] = block_rho;
}

// Sums `count` doubles other blocks wrote (through L2), thread-strided then the block tree; valid in thread 0.
__device__ __forceinline__ double block_sum_of_doubles(const double* values, int64_t count) {
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += __ldcg(values + i);
    return kd::block_sum(acc);
}

// One block per class: its moments over the batch, its correlation and gradient coefficients; the last
// class done writes the loss.
template <typename T> __device__ void dist_finish(const KdDistArgs& args) {
    const KdDistParams& p = args.p;
    const int c = blockIdx.x;
    const int64_t blocks = p.stats_blocks;
    const int64_t slots = static_cast<int64_t>(p.classes) * blocks;
    const double* moments = kd::ptr<const double>(args.moments) + static_cast<int64_t>(c) * blocks;
    double m[kMoments];
    {
        double acc[kMoments] = {0.0, 0.0, 0.0, 0.0, 0.0};
        for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) {
#pragma unroll
            for (int k = 0; k < kMoments; ++k) acc[k] += __ldcg(moments + k * slots + b);
        }
        double unused = 0.0;
        kd::block_sum3(acc[0], acc[1], acc[2]);
        kd::block_sum3(acc[3], acc[4], unused);
#pragma unroll
        for (int k = 0; k < kMoments; ++k) m[k] = acc[k];
    }
    if (threadIdx.x == 0) {
        const double inv_count = recip(static_cast<double>(p.pixels));
        const double mean_x = m[0] * inv_count, mean_y = m[1] * inv_count;
        const Correlation r =
            correlation(m[4] - m[0] * mean_y, m[2] - m[0] * mean_x, m[3] - m[1] * mean_y);
        float* coefs = kd::ptr<float>(args.coefs) + static_cast<int64_t>(c) * KD_DIST_COEFS;
        coefs[2] = static_cast<float>(mean_x);
        coefs[3] = static_cast<float>(mean_y);
        coefs[4] = static_cast<float>(r.inv_den);
        coefs[5] = static_cast<float>(r.second);
        kd::ptr<double>(args.class_rho)[c] = r.rho;
    }
    if (!(p.flags & KD_WANT_LOSS)) return;  // the same in every block: none takes a ticket
    if (kd::is_last_block_done(kd::ptr<unsigned int>(args.counter), gridDim.x)) {
        const double pixel_rho = block_sum_of_doubles(kd::ptr<const double>(args.pixel_rho), blocks);
        const double class_rho = block_sum_of_doubles(kd::ptr<const double>(args.class_rho), p.classes);
        if (threadIdx.x == 0) {
            const double inter = 1.0 - pixel_rho * recip(static_cast<double>(p.pixels));
            const double intra = 1.0 - class_rho * recip(static_cast<double>(p.classes));
            *kd::ptr<float>(args.loss) = static_cast<float>(static_cast<double>(p.inter_loss_weight) * inter +
                                                            static_cast<double>(p.intra_loss_weight) * intra);
        }
    }
}

// d loss / d p_c of one pixel (scaled by 1/tau): the inter term's coefficients `inter` are the pixel's, the
// intra term's are class c's (`coefs`).
__device__ __forceinline__ float grad_p(float qs, float qt, const Correlation& inter, float inter_scale,
                                        const float* __restrict__ coefs, float intra_scale) {
    const float x = (qs - __ldg(coefs)) - __ldg(coefs + 2);
    const float y = (qt - __ldg(coefs + 1)) - __ldg(coefs + 3);
    const float g_inter = static_cast<float>(inter.second) * qs - static_cast<float>(inter.inv_den) * qt;
    const float g_intra = __ldg(coefs + 5) * x - __ldg(coefs + 4) * y;
    return inter_scale * g_inter + intra_scale * g_intra;
}

template <typename T> __device__ void dist_grad(const KdDistArgs& args) {
    const T* __restrict__ student = kd::ptr<const T>(args.student);
    const T* __restrict__ teacher = kd::ptr<const T>(args.teacher);
    T* __restrict__ grad_student = kd::ptr<T>(args.grad_student);
    const float* __restrict__ coefs = kd::ptr<const float>(args.coefs);
    const KdDistParams& p = args.p;
    const int C = p.classes;
    const int64_t plane = p.plane;
    const float inv_tau = p.inv_tau;
    const float factor = kd::grad_factor(1.f, p.flags, args.upstream);
    const float inter_scale = factor * p.inter_grad_scale, intra_scale = factor * p.intra_grad_scale;
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;

    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t pix = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; pix < p.pixels; pix += stride) {
        const int64_t base = pixel_base(pix, plane, C);
        const T* s = student + base;
        const T* t = teacher + base;
        const PixelSoftmax soft_s = pixel_softmax(s, plane, C, inv_tau);
        const PixelSoftmax soft_t = pixel_softmax(t, plane, C, inv_tau);
        double dot = 0.0, ns = 0.0, nt = 0.0;
        for (int c = 0; c < C; ++c) {
            const double qs = centred(soft_s, kd::to_float(__ldg(s + c * plane)), inv_tau);
            const double qt = centred(soft_t, kd::to_float(__ldg(t + c * plane)), inv_tau);
            dot = fma(qs, qt, dot);
            ns = fma(qs, qs, ns);
            nt = fma(qt, qt, nt);
        }
        const Correlation inter = correlation(dot, ns, nt);
        // sum_c p_c g_c, the softmax's backward term.
        double pg = 0.0;
        for (int c = 0; c < C; ++c) {
            const float xs = kd::to_float(__ldg(s + c * plane)), xt = kd::to_float(__ldg(t + c * plane));
            const float g = grad_p(centred(soft_s, xs, inv_tau), centred(soft_t, xt, inv_tau), inter, inter_scale,
                                   coefs + c * KD_DIST_COEFS, intra_scale);
            pg = fma(static_cast<double>(prob(soft_s, xs, inv_tau)), static_cast<double>(g), pg);
        }
        T* g_out = grad_student + base;
        for (int c = 0; c < C; ++c) {
            const float xs = kd::to_float(__ldg(s + c * plane)), xt = kd::to_float(__ldg(t + c * plane));
            const float g = grad_p(centred(soft_s, xs, inv_tau), centred(soft_t, xt, inv_tau), inter, inter_scale,
                                   coefs + c * KD_DIST_COEFS, intra_scale);
            kd::store_grad(g_out + c * plane, prob(soft_s, xs, inv_tau) * (g - static_cast<float>(pg)), accumulate);
        }
    }
}

}  // namespace

#define KD_DIST_ENTRY_POINTS(T, NAME)                                                  \
    KD_ENTRY(dist_stats_##NAME, KdDistArgs, kBlockThreads) { dist_stats<T>(a); }   \
    KD_ENTRY(dist_finish_##NAME, KdDistArgs, kBlockThreads) { dist_finish<T>(a); } \
    KD_ENTRY(dist_grad_##NAME, KdDistArgs, kBlockThreads) { dist_grad<T>(a); }

KD_FOR_EACH_DTYPE(KD_DIST_ENTRY_POINTS)
