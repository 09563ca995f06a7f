/*
 * Pixel-wise KD (the "PI" baseline of CWD, the L_KD term of AICSD), forward and backward in one launch.
 *
 * For every pixel (n, h, w), a softmax over the C channels of z = x / tau, and
 *     KL_p = sum_c pT_c (log pT_c - log pS_c),   loss = loss_scale * sum_p KL_p,
 *     d loss / d S_c = loss_scale / tau * (pS_c - pT_c),
 * where loss_scale = lambda * [tau^2] / divisor (divisor N*C*H*W for `mean`, N for `batchmean`, 1 for `sum`,
 * N*H*W for `pixelmean`), all folded on the host.
 *
 * What is fused, and why it is legal: a pixel's softmax involves only its own C values, so one thread owns a
 * pixel and needs no communication to get its max, LSE, KL and gradient. It reads the pixel's C values once
 * for the online statistics and once more for the gradient (the second read hits L1/L2: a block's pixels span
 * 256 * C * 2 values). The per-pixel KL values are summed per block in a fixed tree, and the last block to
 * finish sums the block totals in block order, so loss and gradient come from one launch, deterministically.
 *
 * NCHW makes C the strided axis (stride H*W): consecutive threads take consecutive pixels, so every load of
 * a warp is one contiguous run of 32 values of the same channel.
 */
#include "common.cuh"

namespace {

using kd::kBlockThreads;
using kd::kLn2;

template <typename T>
__device__ void pixel_kd(const T* __restrict__ student, const T* __restrict__ teacher,
                         float* __restrict__ block_totals, unsigned int* __restrict__ counter,
                         float* __restrict__ loss, T* __restrict__ grad_student,
                         const float* __restrict__ upstream, const KdPixelKdParams p) {
    const float k = p.log2e_over_tau;
    const int64_t plane = p.plane;
    const int64_t image = plane * p.channels;
    const bool want_grad = (p.flags & KD_WANT_GRAD_STUDENT) != 0;
    const float grad_scale = p.grad_scale * ((p.flags & KD_SCALE_BY_UPSTREAM) ? *upstream : 1.f);

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
                g[c * plane] = kd::from_float<T>(grad_scale * (ps - pt));
            }
        }
    }

    if (p.flags & KD_WANT_LOSS) {
        const double block_total = kd::block_sum(kl_sum);
        if (threadIdx.x == 0) block_totals[blockIdx.x] = static_cast<float>(block_total);
        if (kd::is_last_block_done(counter, gridDim.x)) {
            const double total = kd::block_sum_of_partials(block_totals, gridDim.x);
            if (threadIdx.x == 0) *loss = static_cast<float>(static_cast<double>(p.loss_scale) * total);
        }
    }
}

}  // namespace

#define KD_PIXEL_KD_ENTRY_POINT(T, NAME)                                                                   \
    extern "C" __global__ void __launch_bounds__(kBlockThreads)                                           \
        pixel_kd_##NAME(const T* student, const T* teacher, float* block_totals, unsigned int* counter,   \
                        float* loss, T* grad_student, const float* upstream, KdPixelKdParams p) {          \
        pixel_kd<T>(student, teacher, block_totals, counter, loss, grad_student, upstream, p);            \
    }

KD_FOR_EACH_DTYPE(KD_PIXEL_KD_ENTRY_POINT)
