/*
 * Pixel-wise KD (the "PI" baseline of CWD, the L_KD term of AICSD), forward and backward in one launch.
 *
 * For every pixel (n, h, w), a softmax over the C channels of z = x / tau, and
 *     KL_p = sum_c pT_c (log pT_c - log pS_c),   loss = loss_scale * sum_p KL_p,
 *     d loss / d S_c = loss_scale / tau * (pS_c - pT_c),
 * where loss_scale = lambda * [tau^2] / divisor (divisor N*C*H*W for `mean`, N for `batchmean`, 1 for `sum`,
 * N*H*W for `pixelmean`), all folded on the host. As in cwd.cu, a pixel's KL comes from its maxima mS, mT,
 * the sums sS, sT of 2^(k (x - m)) and A = sum_c 2^(k (T_c - mT)) (T_c - S_c):
 *     KL_p / ln2 = k (A / sT - (mT - mS)) + log2(sS) - log2(sT),
 * differences of inputs only, exactly 0 when S == T or C == 1. Sums in double: the KL of a close student
 * is a small difference of two log-sums.
 *
 * What is fused, and why it is legal: a pixel's softmax involves only its own C values, so a pixel needs
 * no communication beyond the threads that hold its channels to get its max, LSE, KL and gradient. The
 * per-pixel KL values are summed per block in a fixed tree, and the last block to finish sums the block
 * totals in block order, so loss and gradient come from one launch, deterministically.
 *
 * Two kernels. NCHW makes C the strided axis (stride H*W), so both put consecutive pixels on consecutive
 * threads: every load and store of a warp is one contiguous run of the same channel.
 *
 * 1. `pixel_kd_tiled_*` (the default): a block takes a tile of P consecutive pixels of one image; 256 / P
 *    threads per pixel each take every (256 / P)-th channel of it, keep the values they read in shared
 *    memory (S and T are read from DRAM once), exchange their partial statistics with the pixel's other
 *    threads, and write the gradient from the kept values. P is chosen on the host so that the tile fits in
 *    shared memory (P = 256 for the 19 classes of Cityscapes, 32 for 256-channel features). Blocks stride
 *    over the tiles.
 * 2. `pixel_kd_*`, for channel counts whose tile does not fit: one thread per pixel reads its C values twice
 *    (statistics, then gradient), the second read from L1/L2 when the pixel's values are still cached.
 */
#include "common.cuh"
#include "pixel_kd.h"

namespace {

using kd::kBlockThreads;
using kd::kLn2;

template <typename T> __device__ void pixel_kd(const KdPixelKdArgs& args) {
    const T* __restrict__ student = kd::ptr<const T>(args.student);
    const T* __restrict__ teacher = kd::ptr<const T>(args.teacher);
    T* __restrict__ grad_student = kd::ptr<T>(args.grad_student);
    const KdPixelKdParams& p = args.p;
    const float k = p.log2e_over_tau;
    const int64_t plane = p.plane;
    const int64_t image = plane * p.channels;
    const bool want_grad = (p.flags & KD_WANT_GRAD_STUDENT) != 0;
    const float grad_scale = kd::grad_factor(p.grad_scale, p.flags, args.upstream);
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;

    double kl_sum = 0.0;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t pix = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; pix < p.pixels; pix += stride) {
        const int64_t n = pix / plane;
        const int64_t base = n * image + (pix - n * plane);
        const T* s = student + base;
        const T* t = teacher + base;

        // Online statistics (common.cuh): maxima in input units, sums of 2^(k (x - m)), and
        // a = sum 2^(k (T - mT)) (T - S), rescaled with sT. KL_p / ln2 = k (a/sT - (mT - mS)) + log2(sS/sT):
        // differences of inputs only, exactly 0 when S == T or C == 1.
        // Sums in double: see cwd.cu (the KL of a close student is a small difference of two log-sums).
        float ms = -CUDART_INF_F, mt = -CUDART_INF_F;
        double ss = 0.0, st = 0.0, a = 0.0;
        for (int c = 0; c < p.channels; ++c) {
            const float xs = kd::to_float(s[c * plane]);
            const float xt = kd::to_float(t[c * plane]);
            if (xs > ms) {
                ss = ss * exp2f((ms - xs) * k) + 1.0;
                ms = xs;
            } else {
                ss += exp2f((xs - ms) * k);
            }
            if (xt > mt) {
                const double f = exp2f((mt - xt) * k);
                st = st * f + 1.0;
                a = fma(a, f, static_cast<double>(xt - xs));
                mt = xt;
            } else {
                const double e = exp2f((xt - mt) * k);
                st += e;
                a = fma(e, static_cast<double>(xt - xs), a);
            }
        }
        const double log2_ss = log2(ss), log2_st = log2(st);
        kl_sum += kLn2 * (k * (a / st - static_cast<double>(mt - ms)) + log2_ss - log2_st);

        if (want_grad) {
            T* g = grad_student + base;
            for (int c = 0; c < p.channels; ++c) {
                const float ps = exp2f((kd::to_float(s[c * plane]) - ms) * k - static_cast<float>(log2_ss));
                const float pt = exp2f((kd::to_float(t[c * plane]) - mt) * k - static_cast<float>(log2_st));
                kd::store_grad(g + c * plane, grad_scale * (ps - pt), accumulate);
            }
        }
    }

    if (p.flags & KD_WANT_LOSS) {
        const double block_total = kd::block_sum(kl_sum);  // in thread 0
        kd::sum_into_loss(static_cast<float>(block_total), blockIdx.x, gridDim.x, kd::ptr<float>(args.block_totals),
                          kd::ptr<unsigned int>(args.counter), kd::ptr<float>(args.loss), p.loss_scale);
    }
}

// Shared-memory tiles of P pixels x C channels of S and of T, channel-major ([c][pixel]): the values a
// thread holds between its two uses of them (a register array cannot have a run-time length).
template <typename T> __device__ void pixel_kd_tiled(const KdPixelKdArgs& args) {
    const T* __restrict__ student = kd::ptr<const T>(args.student);
    const T* __restrict__ teacher = kd::ptr<const T>(args.teacher);
    T* __restrict__ grad_student = kd::ptr<T>(args.grad_student);
    const KdPixelKdParams& p = args.p;
    KD_DYNAMIC_SHARED(tile_bytes);
    // Per-thread partial statistics, exchanged between the threads of a pixel: entry `threadIdx.x`.
    KD_SHARED_ARRAY(float, part_ms, kBlockThreads);
    KD_SHARED_ARRAY(float, part_mt, kBlockThreads);
    KD_SHARED_ARRAY(double, part_ss, kBlockThreads);
    KD_SHARED_ARRAY(double, part_st, kBlockThreads);
    KD_SHARED_ARRAY(double, part_a, kBlockThreads);

    const int P = p.tile_pixels;
    const int C = p.channels;
    const int per_pixel = kBlockThreads / P;  // threads per pixel
    const int px = static_cast<int>(threadIdx.x) % P, sub = static_cast<int>(threadIdx.x) / P;
    T* tile_s = reinterpret_cast<T*>(tile_bytes);
    T* tile_t = tile_s + static_cast<int64_t>(C) * P;
    const float k = p.log2e_over_tau;
    const bool want_grad = (p.flags & KD_WANT_GRAD_STUDENT) != 0;
    const float grad_scale = kd::grad_factor(p.grad_scale, p.flags, args.upstream);
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    const int64_t plane = p.plane;
    const int64_t image_elems = plane * C;
    const int64_t tiles_per_image = (plane + P - 1) / P;
    const int64_t tiles = (p.pixels / plane) * tiles_per_image;

    double kl_sum = 0.0;
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const int64_t n = tile / tiles_per_image;
        const int64_t first = (tile - n * tiles_per_image) * P;  // the tile's first pixel in its image
        const int width = static_cast<int>(min(static_cast<int64_t>(P), plane - first));  // pixels in the tile
        const int64_t base = n * image_elems + first;  // element (n, 0, first)

        // Stage this thread's channels of its pixel (each thread reads back only what it staged itself, so
        // no barrier is needed before use; consecutive threads read consecutive pixels of a channel), and
        // take their maxima on the way...
        const bool active = px < width;
        float ms = -CUDART_INF_F, mt = -CUDART_INF_F;
        if (active) {
            const T* s = student + base + px;
            const T* t = teacher + base + px;
#pragma unroll 4
            for (int c = sub; c < C; c += per_pixel) {
                const T vs = __ldg(s + static_cast<int64_t>(c) * plane), vt = __ldg(t + static_cast<int64_t>(c) * plane);
                tile_s[c * P + px] = vs;
                tile_t[c * P + px] = vt;
                ms = fmaxf(ms, kd::to_float(vs));
                mt = fmaxf(mt, kd::to_float(vt));
            }
        }
        // ...exchanged for the pixel's maxima...
        part_ms[threadIdx.x] = ms;
        part_mt[threadIdx.x] = mt;
        __syncthreads();
        for (int q = 0; q < per_pixel; ++q) {
            ms = fmaxf(ms, part_ms[q * P + px]);
            mt = fmaxf(mt, part_mt[q * P + px]);
        }
        // ...then the sums relative to the pixel's maxima, added up in the order of the threads.
        double ss = 0.0, st = 0.0, a = 0.0;
        if (active) {
            for (int c = sub; c < C; c += per_pixel) {
                const float xs = kd::to_float(tile_s[c * P + px]), xt = kd::to_float(tile_t[c * P + px]);
                ss += exp2f((xs - ms) * k);
                const double e = exp2f((xt - mt) * k);
                st += e;
                a = fma(e, static_cast<double>(xt - xs), a);
            }
        }
        part_ss[threadIdx.x] = ss;
        part_st[threadIdx.x] = st;
        part_a[threadIdx.x] = a;
        __syncthreads();
        ss = st = a = 0.0;
        for (int q = 0; q < per_pixel; ++q) {
            ss += part_ss[q * P + px];
            st += part_st[q * P + px];
            a += part_a[q * P + px];
        }
        const double log2_ss = log2(ss), log2_st = log2(st);
        if (active && sub == 0) kl_sum += kLn2 * (k * (a / st - static_cast<double>(mt - ms)) + log2_ss - log2_st);

        if (want_grad && active) {
            T* g = grad_student + base + px;
            for (int c = sub; c < C; c += per_pixel) {
                const float ps = exp2f((kd::to_float(tile_s[c * P + px]) - ms) * k - static_cast<float>(log2_ss));
                const float pt = exp2f((kd::to_float(tile_t[c * P + px]) - mt) * k - static_cast<float>(log2_st));
                kd::store_grad(g + static_cast<int64_t>(c) * plane, grad_scale * (ps - pt), accumulate);
            }
        }
        // No barrier before the next tile: a thread reads back only the values it staged itself, and each
        // partials array is rewritten only after the barrier that follows every read of its previous values.
    }

    if (p.flags & KD_WANT_LOSS) {
        const double block_total = kd::block_sum(kl_sum);  // in thread 0
        kd::sum_into_loss(static_cast<float>(block_total), blockIdx.x, gridDim.x, kd::ptr<float>(args.block_totals),
                          kd::ptr<unsigned int>(args.counter), kd::ptr<float>(args.loss), p.loss_scale);
    }
}

}  // namespace

// Both kernels take the same argument block; the host picks one (src/pixel_kd/plan.rs).
#define KD_PIXEL_KD_ENTRY_POINTS(T, NAME)                                                          \
    KD_ENTRY(pixel_kd_tiled_##NAME, KdPixelKdArgs, kBlockThreads) { pixel_kd_tiled<T>(a); } \
    KD_ENTRY(pixel_kd_##NAME, KdPixelKdArgs, kBlockThreads) { pixel_kd<T>(a); }

KD_FOR_EACH_DTYPE(KD_PIXEL_KD_ENTRY_POINTS)
