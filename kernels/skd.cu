/*
 * SKD (docs/losses.md §9): pair-wise similarity distillation without the P x P similarity matrices. Per image,
 * with S_hat [Cs, P] and T_hat [Ct, P] the max-pooled (2x2, ceil mode; or not pooled), per-pixel normalised
 * features, |A_S - A_T|_F^2 = |G_SS|^2 - 2 |G_ST|^2 + |G_TT|^2 with the C x C Gram matrices, and
 * dL/dS_hat = 4 w / (N P^2) (G_SS S_hat - G_ST T_hat). Five launches:
 *   1. skd_features  one thread per (image, pooled pixel): pools both inputs, normalises each pixel, writes the
 *                    stacked rows X = [S_hat; T_hat] (and D = S_hat - T_hat when Cs = Ct) to the workspace,
 *                    then each student pixel's norm and the reciprocal of its clamp
 *   2. skd_gram      one block per (image, chunk of pixels, 16 x 16 tile of X X^T): the chunk's partial Gram
 *   3. skd_merge     one thread per Gram entry: the chunks' partials summed in chunk order, in double
 *   4. skd_loss      one block per (image, row): the row's share of the Frobenius terms; the last block sums the
 *                    blocks' shares in block order (only when the loss is wanted)
 *   5. skd_grad      one thread per (image, pooled pixel): d loss / d S_hat from the Gram rows, back through the
 *                    normalisation and the max pool (only when the gradient is wanted)
 * What is fused, and why it is legal: the similarity A = X^T X is bilinear, so every quantity the loss and its
 * gradient need is a contraction over the pixels of the C x C Gram matrices (an exact identity, not an
 * approximation), and the P x P matrices never exist: memory is the pooled features and O(N R^2) Grams. The
 * Grams need every pixel of an image, so the gradient waits for a grid-wide reduction (launches 2 and 3);
 * pooling and normalisation are per pixel, so they fuse into the kernels that read the inputs (1 and 5),
 * which recompute the window maxima rather than storing them (the same loads and comparisons give the same
 * bits and the same argmax).
 *
 * Numerics. The three Frobenius terms are large and nearly cancel when the student is close to its teacher.
 * With Cs = Ct the kernels therefore write them through D = S_hat - T_hat (A_S - A_T = D^T S_hat + T_hat^T D):
 * |A_S - A_T|^2 = <G_DD, G_SS + G_TT> + 2 <G_DT, G_SD> and dL/dS_hat ∝ G_SD S_hat + G_ST D, every term of the
 * size of the difference, and a student equal to its teacher gives D = 0 exactly, hence a loss and a gradient
 * of exactly 0. Gram entries accumulate in fp32 within a chunk (a fixed order: 16-pixel tiles in pixel order),
 * chunks and loss terms in double. Every reduction has a fixed order and the grid depends on the shapes only:
 * bitwise reproducible on every device. Max-pool ties go to the first maximum in row-major order (PyTorch's).
 */
#include "common.cuh"

namespace {

using kd::kBlockThreads;
constexpr int kTile = KD_SKD_TILE;
static_assert(kTile * kTile == kBlockThreads, "one Gram tile entry per thread");

// A pooling window: its first input element's offset in the plane and its extent (edge windows of ceil mode
// are smaller).
struct Window {
    int64_t offset;
    int rows, cols;
};

// 32-bit index arithmetic (the planner keeps N*P, H and W under 2^31): a 64-bit division is an out-of-line
// subroutine whose call made ptxas spill registers on sm_80 (the build refuses spills).
__device__ __forceinline__ Window window_of(const KdSkdParams& p, int q) {
    const int oh = q / p.pooled_width, ow = q - oh * p.pooled_width;
    const int h0 = oh * p.window, w0 = ow * p.window;
    Window w;
    w.offset = static_cast<int64_t>(h0) * p.width + w0;
    w.rows = min(p.window, p.height - h0);
    w.cols = min(p.window, p.width - w0);
    return w;
}

// This thread's pooled pixel: its index over the batch, its image and its index in the image; false past the
// last pixel.
__device__ __forceinline__ bool pooled_pixel(const KdSkdParams& p, int& pixel, int& n, int& q) {
    const int pixels = static_cast<int>(p.pixels);
    pixel = static_cast<int>(blockIdx.x) * kBlockThreads + static_cast<int>(threadIdx.x);
    if (pixel >= p.batch * pixels) return false;
    n = pixel / pixels;
    q = pixel - n * pixels;
    return true;
}

// The window's maximum in one channel plane, and where it is (plane offset): strictly greater wins, so a tie
// keeps the first maximum in row-major order.
template <typename T>
__device__ __forceinline__ float window_max(const T* plane, const Window& w, int64_t width, int64_t& at) {
    float best = -CUDART_INF_F;
    at = w.offset;
    for (int r = 0; r < w.rows; ++r) {
        for (int c = 0; c < w.cols; ++c) {
            const int64_t o = w.offset + r * width + c;
            const float v = kd::to_float(plane[o]);
            if (v > best) {
                best = v;
                at = o;
            }
        }
    }
    return best;
}

// 1 / sqrt(x) for a finite x > 0, in double. CUDA's rsqrt rather than a square root and a division: their
// IEEE out-of-line slow paths spill registers on sm_80 (the build refuses spills).
__device__ __forceinline__ double rsqrt_positive(double x) {
#ifdef KD_EMULATE
    return 1.0 / sqrt(x);
#else
    return rsqrt(x);
#endif
}

// A pixel's norm over the channels (pooled values), F.normalize's denominator before the clamp, and the
// reciprocal of the clamped norm, 1 / max(|x|, eps).
struct Norm {
    float norm, inv;
};

// The norm of a pixel of image `x`: squares summed in double, in channel order.
template <typename T>
__device__ __forceinline__ Norm pixel_norm(const T* x, int channels, const Window& w, const KdSkdParams& p) {
    double sq = 0.0;
    int64_t at;
#pragma unroll 1
    for (int c = 0; c < channels; ++c) {
        const double v = window_max(x + c * p.plane, w, p.width, at);
        sq += v * v;
    }
    const double r = sq > 0.0 ? rsqrt_positive(sq) : 0.0;
    Norm out;
    out.norm = static_cast<float>(sq * r);
    out.inv = out.norm < static_cast<float>(KD_SKD_NORM_EPS) ? static_cast<float>(1.0 / KD_SKD_NORM_EPS)
                                                              : static_cast<float>(r);
    return out;
}

// ---------------------------------------------------------------------------------------------------------
// 1. Pooled, normalised features, stacked [S_hat; T_hat; D] per image.
template <typename T> __device__ void skd_features(const KdSkdArgs& a) {
    const KdSkdParams& p = a.p;
    int pixel, n, q;
    if (!pooled_pixel(p, pixel, n, q)) return;
    const int cs = p.student_channels, ct = p.teacher_channels;
    const T* s = kd::ptr<const T>(a.student) + static_cast<int64_t>(n) * cs * p.plane;
    const T* t = kd::ptr<const T>(a.teacher) + static_cast<int64_t>(n) * ct * p.plane;
    const Window w = window_of(p, q);
    const Norm norm_s = pixel_norm(s, cs, w, p);
    const float inv_s = norm_s.inv, inv_t = pixel_norm(t, ct, w, p).inv;
    const int64_t all_pixels = static_cast<int64_t>(p.batch) * p.pixels;
    float* student_norms = kd::ptr<float>(a.features) + all_pixels * p.rows;
    student_norms[pixel] = norm_s.norm;
    student_norms[all_pixels + pixel] = inv_s;
    float* x = kd::ptr<float>(a.features) + static_cast<int64_t>(n) * p.rows * p.pixels + q;
    const bool with_difference = p.rows > cs + ct;
    int64_t at;
#pragma unroll 1
    for (int c = 0; c < cs; ++c) {
        const float hs = window_max(s + c * p.plane, w, p.width, at) * inv_s;
        x[c * p.pixels] = hs;
        if (with_difference) {
            const float ht = window_max(t + c * p.plane, w, p.width, at) * inv_t;
            x[(cs + c) * p.pixels] = ht;
            x[(cs + ct + c) * p.pixels] = hs - ht;  // exactly 0 where the student equals its teacher
        }
    }
    if (!with_difference) {
#pragma unroll 1
        for (int c = 0; c < ct; ++c) x[(cs + c) * p.pixels] = window_max(t + c * p.plane, w, p.width, at) * inv_t;
    }
}

// ---------------------------------------------------------------------------------------------------------
// 2. Per-chunk partial Gram matrices, one 16 x 16 tile per block.
template <typename T> __device__ void skd_gram(const KdSkdArgs& a) {
    const KdSkdParams& p = a.p;
    int64_t b = blockIdx.x;
    const int tile_j = static_cast<int>(b % p.tiles);
    b /= p.tiles;
    const int tile_i = static_cast<int>(b % p.tiles);
    b /= p.tiles;
    const int64_t chunk = b % p.chunks, n = b / p.chunks;
    const int ty = threadIdx.x / kTile, tx = threadIdx.x % kTile;
    // Rows of the two tiles, [row][pixel], padded against bank conflicts.
    KD_SHARED_ARRAY(float, rows_i, kTile * (kTile + 1));
    KD_SHARED_ARRAY(float, rows_j, kTile * (kTile + 1));
    const float* x = kd::ptr<const float>(a.features) + n * p.rows * p.pixels;
    const int load_i = tile_i * kTile + ty, load_j = tile_j * kTile + ty;
    const int64_t begin = chunk * p.chunk_pixels, end = min(p.pixels, begin + p.chunk_pixels);
    float acc = 0.f;
    for (int64_t k0 = begin; k0 < end; k0 += kTile) {
        const int64_t k = k0 + tx;
        rows_i[ty * (kTile + 1) + tx] = (load_i < p.rows && k < end) ? x[load_i * p.pixels + k] : 0.f;
        rows_j[ty * (kTile + 1) + tx] = (load_j < p.rows && k < end) ? x[load_j * p.pixels + k] : 0.f;
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kTile; ++kk) acc += rows_i[ty * (kTile + 1) + kk] * rows_j[tx * (kTile + 1) + kk];
        __syncthreads();
    }
    const int i = tile_i * kTile + ty, j = tile_j * kTile + tx;
    if (i < p.rows && j < p.rows) {
        const int64_t r = p.rows;
        kd::ptr<float>(a.gram_partials)[((n * p.chunks + chunk) * r + i) * r + j] = acc;
    }
}

// ---------------------------------------------------------------------------------------------------------
// 3. The Gram matrices: chunks summed in chunk order.
template <typename T> __device__ void skd_merge(const KdSkdArgs& a) {
    const KdSkdParams& p = a.p;
    const int64_t r2 = static_cast<int64_t>(p.rows) * p.rows;
    const int64_t e = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
    if (e >= static_cast<int64_t>(p.batch) * r2) return;
    const int64_t n = e / r2, entry = e - n * r2;
    const float* partial = kd::ptr<const float>(a.gram_partials) + n * p.chunks * r2 + entry;
    double sum = 0.0;
    for (int c = 0; c < p.chunks; ++c) sum += static_cast<double>(partial[c * r2]);
    kd::ptr<double>(a.gram)[e] = sum;
}

// ---------------------------------------------------------------------------------------------------------
// 4. The loss: block (image, a) sums row a's terms.
template <typename T> __device__ void skd_loss(const KdSkdArgs& a) {
    const KdSkdParams& p = a.p;
    const int64_t n = blockIdx.x / p.loss_rows;
    const int row = static_cast<int>(blockIdx.x - n * p.loss_rows);
    const int cs = p.student_channels, ct = p.teacher_channels, r = p.rows;
    const double* g = kd::ptr<const double>(a.gram) + n * r * r;
    double acc = 0.0;
    if (r > cs + ct) {
        // <G_DD, G_SS + G_TT> + 2 <G_DT, G_SD>, row `row` of each (Cs = Ct = C; D's rows start at 2C).
        const int c = cs, d = 2 * cs;
        for (int j = threadIdx.x; j < c; j += kBlockThreads) {
            const double dd = g[(d + row) * r + d + j], ss = g[row * r + j], tt = g[(c + row) * r + c + j];
            const double dt = g[(d + row) * r + c + j], sd = g[row * r + d + j];
            acc += dd * (ss + tt) + 2.0 * (dt * sd);
        }
    } else {
        // |G_SS|^2 - 2 |G_ST|^2 + |G_TT|^2, row `row` of each that has it.
        if (row < cs) {
            for (int j = threadIdx.x; j < cs; j += kBlockThreads) acc += g[row * r + j] * g[row * r + j];
            for (int j = threadIdx.x; j < ct; j += kBlockThreads) {
                const double st = g[row * r + cs + j];
                acc -= 2.0 * (st * st);
            }
        }
        if (row < ct) {
            for (int j = threadIdx.x; j < ct; j += kBlockThreads) {
                const double tt = g[(cs + row) * r + cs + j];
                acc += tt * tt;
            }
        }
    }
    const double block = kd::block_sum(acc);
    kd::sum_into_loss(static_cast<float>(block), blockIdx.x, gridDim.x, kd::ptr<float>(a.loss_partials),
                      kd::ptr<unsigned int>(a.counter), kd::ptr<float>(a.loss), p.loss_scale);
}

// d loss / d S_hat at (channel c, pixel q), before its factor: G_SS S_hat - G_ST T_hat, or, with the rows of D,
// G_SD S_hat + G_ST D (exactly 0 where D = 0). fp32 accumulation over the Gram row, in row order.
__device__ __forceinline__ float d_hat(const KdSkdParams& p, const double* g, const float* x, int c, int64_t q) {
    const int cs = p.student_channels, ct = p.teacher_channels, r = p.rows;
    const bool with_difference = r > cs + ct;
    const double* row = g + static_cast<int64_t>(c) * r;
    // First product: a Gram block against S_hat (G_SS, or G_SD); second: G_ST against T_hat, or D.
    const double* first = row + (with_difference ? cs + ct : 0);
    const double* second = row + cs;
    const float* second_rows = x + static_cast<int64_t>(with_difference ? cs + ct : cs) * p.pixels;
    float u = 0.f, v = 0.f;
    // Not unrolled (nor the channel loops): unrolled, their addresses made ptxas spill on sm_80 to sm_90.
#pragma unroll 1
    for (int b = 0; b < cs; ++b) u += static_cast<float>(first[b]) * x[b * p.pixels + q];
#pragma unroll 1
    for (int b = 0; b < ct; ++b) v += static_cast<float>(second[b]) * second_rows[b * p.pixels + q];
    return with_difference ? u + v : u - v;
}

// ---------------------------------------------------------------------------------------------------------
// 5. The gradient: one thread per pooled pixel writes its windows' elements (each input element lies in
// exactly one window), the maximum's d loss / d x and the others' 0.
template <typename T> __device__ void skd_grad(const KdSkdArgs& a) {
    const KdSkdParams& p = a.p;
    int pixel, n, q;
    if (!pooled_pixel(p, pixel, n, q)) return;
    const int cs = p.student_channels;
    const T* s = kd::ptr<const T>(a.student) + static_cast<int64_t>(n) * cs * p.plane;
    const double* g = kd::ptr<const double>(a.gram) + static_cast<int64_t>(n) * p.rows * p.rows;
    const float* x = kd::ptr<const float>(a.features) + static_cast<int64_t>(n) * p.rows * p.pixels;
    const Window w = window_of(p, q);
    // The norm and its clamp's reciprocal from skd_features: no square root or division here, whose
    // out-of-line slow paths would spill registers on sm_80 (the build refuses spills).
    const int64_t all_pixels = static_cast<int64_t>(p.batch) * p.pixels;
    const float* student_norms = kd::ptr<const float>(a.features) + all_pixels * p.rows;
    const float norm = student_norms[pixel], inv = student_norms[all_pixels + pixel];
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    const float k = kd::grad_factor(p.grad_scale, p.flags, a.upstream);
    T* grad = kd::ptr<T>(a.grad_student) + static_cast<int64_t>(n) * cs * p.plane;
    int64_t at;
    // Through x / max(|x|, eps) as autograd differentiates it: g / |x| - x (x . g) / |x|^3 where |x| >= eps,
    // g / eps below (the clamp is constant there).
    const bool clamp = norm < static_cast<float>(KD_SKD_NORM_EPS);
    double dot = 0.0;
    if (!clamp) {
        for (int c = 0; c < cs; ++c) {
            const float v = window_max(s + c * p.plane, w, p.width, at);
            dot += static_cast<double>(v) * d_hat(p, g, x, c, q);
        }
    }
    const float radial = clamp ? 0.f : static_cast<float>(dot) * (inv * inv * inv);
    for (int c = 0; c < cs; ++c) {
        const float v = window_max(s + c * p.plane, w, p.width, at);
        const float dx = k * (d_hat(p, g, x, c, q) * inv - v * radial);
        T* plane = grad + c * p.plane;
        for (int rr = 0; rr < w.rows; ++rr) {
            for (int cc = 0; cc < w.cols; ++cc) {
                const int64_t o = w.offset + rr * p.width + cc;
                kd::store_grad(plane + o, o == at ? dx : 0.f, accumulate);
            }
        }
    }
}

}  // namespace

#define SKD_ENTRIES(T, NAME)                                                               \
    KD_ENTRY(skd_features_##NAME, KdSkdArgs, kBlockThreads) { skd_features<T>(a); }         \
    KD_ENTRY(skd_gram_##NAME, KdSkdArgs, kBlockThreads) { skd_gram<T>(a); }                 \
    KD_ENTRY(skd_merge_##NAME, KdSkdArgs, kBlockThreads) { skd_merge<T>(a); }               \
    KD_ENTRY(skd_loss_##NAME, KdSkdArgs, kBlockThreads) { skd_loss<T>(a); }                 \
    KD_ENTRY(skd_grad_##NAME, KdSkdArgs, kBlockThreads) { skd_grad<T>(a); }
KD_FOR_EACH_DTYPE(SKD_ENTRIES)
