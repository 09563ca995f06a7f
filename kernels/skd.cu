/*
 * SKD (docs/losses.md §9): pair-wise similarity distillation without the P x P similarity matrices. Per image,
 * with S_hat [Cs, P] and T_hat [Ct, P] the max-pooled (2x2, ceil mode; or not pooled), per-pixel normalised
 * features, |A_S - A_T|_F^2 = |G_SS|^2 - 2 |G_ST|^2 + |G_TT|^2 with the C x C Gram matrices, and
 * dL/dS_hat = 4 w / (N P^2) (G_SS S_hat - G_ST T_hat). Five launches:
 *   1. skd_norms     one thread per (image, pooled pixel): pools both inputs and writes the reciprocal of each
 *                    side's clamped norm at the pixel (the student's negated where the clamp holds)
 *   2. skd_gram      one block per (image, chunk of pixels, 16 x 16 tile of X X^T, X = [S_hat; T_hat], and
 *                    D = S_hat - T_hat when Cs = Ct): the chunk's partial Gram, its rows pooled and normalised
 *                    from the inputs as they are loaded, in fp32 on CUDA cores; or skd_gram_tc (16-bit inputs
 *                    with Cs = Ct, the planner's choice): the same partials on tensor cores, 64 x 64 tiles
 *   3. skd_merge     one thread per Gram entry: the chunks' partials summed in chunk order, in double
 *   4. skd_loss      one block per (image, row): the row's share of the Frobenius terms; the last block sums the
 *                    blocks' shares in block order (only when the loss is wanted)
 *   5. skd_grad      one thread per (image, pooled pixel): d loss / d S_hat from the Gram rows and the pixel's
 *                    column of X (pooled and normalised again), back through the normalisation and the max
 *                    pool (only when the gradient is wanted)
 * What is fused, and why it is legal: the similarity A = X^T X is bilinear, so every quantity the loss and its
 * gradient need is a contraction over the pixels of the C x C Gram matrices (an exact identity, not an
 * approximation), and the P x P matrices never exist. Pooling and normalisation are per pixel and cheap next
 * to the contraction, so every kernel that needs an entry of X forms it from the inputs and the pixel's norm
 * (one function, `stacked`: the same loads, comparisons and rounded products, hence the same bits and the same
 * argmax everywhere) instead of reading a stored copy: memory beyond the inputs is O(N R^2) for the Grams and
 * their chunk partials plus one float per pooled pixel and side. The Grams need every pixel of an image, so
 * the gradient waits for a grid-wide reduction (launches 2 and 3); the norms need every channel of a pixel, so
 * they come first (launch 1).
 *
 * Numerics. The three Frobenius terms are large and nearly cancel when the student is close to its teacher.
 * With Cs = Ct the kernels therefore write them through D = S_hat - T_hat (A_S - A_T = D^T S_hat + T_hat^T D):
 * |A_S - A_T|^2 = <G_DD, G_SS + G_TT> + 2 <G_DT, G_SD> and dL/dS_hat ∝ G_SD S_hat + G_ST D, every term of the
 * size of the difference, and a student equal to its teacher gives D = 0 exactly, hence a loss and a gradient
 * of exactly 0. Gram entries accumulate in fp32 within a chunk (a fixed order: 16-pixel tiles in pixel order),
 * chunks and loss terms in double. The tensor-core Gram stages each entry of X as a pair of f16 halves (hi and
 * lo of 2^14 times it: 22 significant bits) and sums three MMA products per product in fp32 accumulators that
 * restart every 128 pixels, against the tensor cores' truncated group sums; entries of the size of the
 * difference keep their relative precision in every D-Gram, and D = 0 still gives exact zeros (skd_gram_tc).
 * Only the D-form survives that rounding: with Cs != Ct, and for f32 inputs, the CUDA-core Gram runs. Every reduction has a fixed order and the grid depends on the shapes only:
 * bitwise reproducible on every device. Max-pool ties go to the first maximum in row-major order (PyTorch's).
 */
#include "common.cuh"
#include "skd.h"
#ifndef KD_EMULATE
#include <mma.h>
#endif

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

// The reciprocal of a pixel's clamped norm over the channels (pooled values), 1 / max(|x|, eps) (F.normalize's
// denominator), and whether the clamp holds.
struct Norm {
    float inv;
    bool clamped;
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
    out.clamped = static_cast<float>(sq * r) < static_cast<float>(KD_SKD_NORM_EPS);
    out.inv = out.clamped ? static_cast<float>(1.0 / KD_SKD_NORM_EPS) : static_cast<float>(r);
    return out;
}

// A rounded product that nvcc must not fuse into the subtraction forming D: fma(a, b, -(a * b)) is the
// rounding error of a * b, not 0, and a student equal to its teacher must give D = 0 exactly.
__device__ __forceinline__ float product_rn(float a, float b) {
#ifdef KD_EMULATE
    return a * b;  // g++ in ISO C++ mode contracts nothing
#else
    return __fmul_rn(a, b);
#endif
}

// One image's inputs and the reciprocals of its pixels' clamped norms (the student's signed, see skd_norms):
// what forms any entry of its stacked rows X = [S_hat; T_hat; D].
template <typename T> struct Image {
    const T* student;
    const T* teacher;
    const float* inv_student;
    const float* inv_teacher;
};

template <typename T> __device__ __forceinline__ Image<T> image_of(const KdSkdArgs& a, int64_t n) {
    const KdSkdParams& p = a.p;
    const int64_t all_pixels = static_cast<int64_t>(p.batch) * p.pixels;
    const float* inv = kd::ptr<const float>(a.inv_norms) + n * p.pixels;
    Image<T> im;
    im.student = kd::ptr<const T>(a.student) + n * p.student_channels * p.plane;
    im.teacher = kd::ptr<const T>(a.teacher) + n * p.teacher_channels * p.plane;
    im.inv_student = inv;
    im.inv_teacher = inv + all_pixels;
    return im;
}

// Entry (row, pixel) of X, pooled and normalised from the inputs, given the pixel's window and the
// reciprocals of its two norms: S_hat's rows, then T_hat's, then (Cs = Ct) D's, formed from the rounded S_hat
// and T_hat so that equal inputs give exactly 0. Every kernel forms X here: the same bits everywhere.
template <typename T>
__device__ __forceinline__ float stacked(const KdSkdParams& p, const Image<T>& im, const Window& w, float inv_s,
                                         float inv_t, int row) {
    const int cs = p.student_channels, ct = p.teacher_channels;
    int64_t at;
    if (row < cs) return product_rn(window_max(im.student + row * p.plane, w, p.width, at), inv_s);
    if (row < cs + ct) return product_rn(window_max(im.teacher + (row - cs) * p.plane, w, p.width, at), inv_t);
    const int c = row - cs - ct;
    return product_rn(window_max(im.student + c * p.plane, w, p.width, at), inv_s) -
           product_rn(window_max(im.teacher + c * p.plane, w, p.width, at), inv_t);
}

// ---------------------------------------------------------------------------------------------------------
// 1. The reciprocals of the clamped norms, [student; teacher] per pooled pixel of the batch. The student's is
// negated where the clamp holds: the gradient differs there (the clamp is a constant), and one float per pixel
// and side is all the workspace this family keeps per pixel.
template <typename T> __device__ void skd_norms(const KdSkdArgs& a) {
    const KdSkdParams& p = a.p;
    int pixel, n, q;
    if (!pooled_pixel(p, pixel, n, q)) return;
    const Image<T> im = image_of<T>(a, n);
    const Window w = window_of(p, q);
    const Norm s = pixel_norm(im.student, p.student_channels, w, p);
    const Norm t = pixel_norm(im.teacher, p.teacher_channels, w, p);
    float* inv = kd::ptr<float>(a.inv_norms);
    inv[pixel] = s.clamped ? -s.inv : s.inv;
    inv[static_cast<int64_t>(p.batch) * p.pixels + pixel] = t.inv;
}

// The Gram block this block computes: grid = images x chunks x tiles x tiles, the tile column fastest (both
// Gram kernels decode it so, which lets skd_merge read their partials alike).
struct GramBlock {
    int tile_i, tile_j;
    int64_t chunk, n;
};

__device__ __forceinline__ GramBlock gram_block(const KdSkdParams& p) {
    int64_t b = blockIdx.x;
    const int tile_j = static_cast<int>(b % p.tiles);
    b /= p.tiles;
    const int tile_i = static_cast<int>(b % p.tiles);
    b /= p.tiles;
    return GramBlock{tile_i, tile_j, b % p.chunks, b / p.chunks};
}

// ---------------------------------------------------------------------------------------------------------
// 2. Per-chunk partial Gram matrices, one 16 x 16 tile per block.
template <typename T> __device__ void skd_gram(const KdSkdArgs& a) {
    const KdSkdParams& p = a.p;
    const auto [tile_i, tile_j, chunk, n] = gram_block(p);
    const int ty = threadIdx.x / kTile, tx = threadIdx.x % kTile;
    // Rows of the two tiles, [row][pixel], padded against bank conflicts.
    KD_SHARED_ARRAY(float, rows_i, kTile * (kTile + 1));
    KD_SHARED_ARRAY(float, rows_j, kTile * (kTile + 1));
    const Image<T> im = image_of<T>(a, n);
    const int load_i = tile_i * kTile + ty, load_j = tile_j * kTile + ty;
    const int begin = static_cast<int>(chunk * p.chunk_pixels);
    const int end = static_cast<int>(min(p.pixels, chunk * p.chunk_pixels + p.chunk_pixels));
    float acc = 0.f;
    for (int k0 = begin; k0 < end; k0 += kTile) {
        const int k = k0 + tx;
        float xi = 0.f, xj = 0.f;
        if (k < end) {
            const Window w = window_of(p, k);
            const float inv_s = fabsf(im.inv_student[k]), inv_t = im.inv_teacher[k];
            if (load_i < p.rows) xi = stacked(p, im, w, inv_s, inv_t, load_i);
            if (load_j < p.rows) xj = stacked(p, im, w, inv_s, inv_t, load_j);
        }
        rows_i[ty * (kTile + 1) + tx] = xi;
        rows_j[ty * (kTile + 1) + tx] = xj;
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
// 2'. The same partials on tensor cores (16-bit inputs with Cs = Ct, the planner's GramPath::TensorCores): one
// 64 x 64 tile per block, warp w computing the 16 x 32 entries at rows 16 (w / 2), columns 32 (w % 2).
//
// Precision. Every operand v (an entry of X, |v| <= 2) is staged as an f16 pair of x = 2^14 v: hi = f16(x),
// lo = f16(x - hi) (x - hi is exact in fp32), and a product is lo*hi + hi*lo + hi*hi, accumulated in fp32 by
// the MMA. The pair holds 22 significant bits, about fp32's, where a single 16-bit rounding (2^-11 or
// 2^-8) fails the loss's tolerance in the D-form; the 2^14 lifts f16's subnormal floor (2^-24) to 2^-38 in
// units of v, so the lo half of a small entry of D keeps its bits (bf16 pairs would keep 16 bits, f16 pairs
// unscaled would lose lo below 2^-14). The tensor cores add each group of products to the accumulator
// truncated toward zero, a bias of up to 2^-23 relative per group that grows with the pixels summed: the
// accumulators therefore restart every kTcSpan pixels and each span's sum is added, rounded to nearest, to
// fp32 registers (a fixed order). Entries of D are exact zeros when the student equals its teacher, so are
// their pairs and every D-Gram entry: the loss and the gradient stay exactly 0. With Cs != Ct there is no D
// and the loss is a difference of large Frobenius terms that this rounding does not survive: those calls,
// and f32 inputs, take skd_gram. (Its f32 instance exists because every entry point has one; the planner
// never launches it.)
constexpr int kTcTile = KD_SKD_TC_TILE;
constexpr int kTcStep = 32;           // pixels staged per step (two m16n16k16 steps)
constexpr int kTcSpan = 128;          // pixels an accumulator sums before it is flushed (see above)
constexpr int kTcLd = kTcStep + 8;    // staged rows padded (f16 elements; WMMA wants multiples of 8)
constexpr int kTcLdC = kTcTile + 4;   // floats; multiples of 4
constexpr float kTcScale = 16384.f;   // 2^14: see the precision note
static_assert(kTcTile * kTcTile % kBlockThreads == 0 && kBlockThreads == 256, "8 warps of 16 x 32 entries");
static_assert(kTcSpan % kTcStep == 0, "spans end on step boundaries");

// The staged rows of both tiles as f16 pairs, [row][pixel] (matrix_b reads tile j's column-major), and the
// accumulators on their way to the registers. Bits as unsigned short: __shared__ storage cannot have
// constructors. 32-byte alignment: WMMA's loads and stores need it. Not a union: a flush's reads and the next
// step's staging are not separated by a barrier.
struct alignas(32) GramTcTile {
    unsigned short i_hi[kTcTile * kTcLd], i_lo[kTcTile * kTcLd];
    unsigned short j_hi[kTcTile * kTcLd], j_lo[kTcTile * kTcLd];
    float c[kTcTile * kTcLdC];
};

__device__ __forceinline__ void split_f16(float v, unsigned short& hi, unsigned short& lo) {
    const float x = v * kTcScale;  // exact: a power of 2, no overflow (|v| <= 2)
    const __half h = __float2half_rn(x);
    hi = __half_as_ushort(h);
    lo = __half_as_ushort(__float2half_rn(x - __half2float(h)));
}

template <typename T> __device__ void skd_gram_tc(const KdSkdArgs& a) {
    namespace wmma = nvcuda::wmma;
    using Half = __half;
    const KdSkdParams& p = a.p;
    const auto [tile_i, tile_j, chunk, n] = gram_block(p);
    KD_SHARED(GramTcTile, s);
    const Image<T> im = image_of<T>(a, n);
    const int tid = static_cast<int>(threadIdx.x), warp = tid / 32;
    const int wm = (warp / 2) * 16, wn = (warp % 2) * 32;
    // The staging: this thread's pixel of a step (256 is a multiple of kTcStep) and its rows tid / kTcStep + 8 r.
    const int kk = tid % kTcStep, first_row = tid / kTcStep;
    constexpr int kRowStride = kBlockThreads / kTcStep;
    const int begin = static_cast<int>(chunk * p.chunk_pixels);
    const int end = static_cast<int>(min(p.pixels, chunk * p.chunk_pixels + p.chunk_pixels));
    constexpr int kPerThread = kTcTile * kTcTile / kBlockThreads;
    float acc[kPerThread];
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) acc[e] = 0.f;
    for (int span = begin; span < end; span += kTcSpan) {
        const int span_end = min(end, span + kTcSpan);
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2];
        wmma::fill_fragment(c[0], 0.f);
        wmma::fill_fragment(c[1], 0.f);
        for (int k0 = span; k0 < span_end; k0 += kTcStep) {
            const int k = k0 + kk;
            Window w{};
            float inv_s = 0.f, inv_t = 0.f;
            if (k < span_end) {
                w = window_of(p, k);
                inv_s = fabsf(im.inv_student[k]);
                inv_t = im.inv_teacher[k];
            }
#pragma unroll 2  // fully unrolled, the loads in flight would crowd the registers
            for (int r = 0; r < kTcTile / kRowStride; ++r) {
                const int row = first_row + r * kRowStride, at = row * kTcLd + kk;
                const int gi = tile_i * kTcTile + row, gj = tile_j * kTcTile + row;
                split_f16(k < span_end && gi < p.rows ? stacked(p, im, w, inv_s, inv_t, gi) : 0.f, s.i_hi[at],
                          s.i_lo[at]);
                split_f16(k < span_end && gj < p.rows ? stacked(p, im, w, inv_s, inv_t, gj) : 0.f, s.j_hi[at],
                          s.j_lo[at]);
            }
            __syncthreads();
#pragma unroll
            for (int k16 = 0; k16 < kTcStep; k16 += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, Half, wmma::row_major> a_hi, a_lo;
                const int at_a = wm * kTcLd + k16;
                wmma::load_matrix_sync(a_hi, reinterpret_cast<const Half*>(s.i_hi + at_a), kTcLd);
                wmma::load_matrix_sync(a_lo, reinterpret_cast<const Half*>(s.i_lo + at_a), kTcLd);
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    // (pixel, column) of X_j^T is X_j's [column][pixel]: column-major.
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, Half, wmma::col_major> b_hi, b_lo;
                    const int at_b = (wn + 16 * j) * kTcLd + k16;
                    wmma::load_matrix_sync(b_hi, reinterpret_cast<const Half*>(s.j_hi + at_b), kTcLd);
                    wmma::load_matrix_sync(b_lo, reinterpret_cast<const Half*>(s.j_lo + at_b), kTcLd);
                    wmma::mma_sync(c[j], a_lo, b_hi, c[j]);
                    wmma::mma_sync(c[j], a_hi, b_lo, c[j]);
                    wmma::mma_sync(c[j], a_hi, b_hi, c[j]);
                }
            }
            __syncthreads();
        }
        wmma::store_matrix_sync(s.c + wm * kTcLdC + wn, c[0], kTcLdC, wmma::mem_row_major);
        wmma::store_matrix_sync(s.c + wm * kTcLdC + wn + 16, c[1], kTcLdC, wmma::mem_row_major);
        __syncthreads();
#pragma unroll
        for (int e = 0; e < kPerThread; ++e) {
            const int entry = tid + e * kBlockThreads;
            acc[e] += s.c[(entry / kTcTile) * kTcLdC + entry % kTcTile];
        }
    }
    const int64_t r = p.rows;
    float* out = kd::ptr<float>(a.gram_partials) + (n * p.chunks + chunk) * r * r;
    constexpr float kUnscale = 1.f / (kTcScale * kTcScale);  // 2^-28, exact
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
        const int entry = tid + e * kBlockThreads;
        const int i = tile_i * kTcTile + entry / kTcTile, j = tile_j * kTcTile + entry % kTcTile;
        if (i < p.rows && j < p.rows) out[i * r + j] = acc[e] * kUnscale;
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

// d loss / d S_hat at (channel c, the pixel of window w), before its factor: G_SS S_hat - G_ST T_hat, or, with
// the rows of D, G_SD S_hat + G_ST D (exactly 0 where D = 0). fp32 accumulation over the Gram row, in row order.
template <typename T>
__device__ __forceinline__ float d_hat(const KdSkdParams& p, const double* g, const Image<T>& im, const Window& w,
                                       float inv_s, float inv_t, int c) {
    const int cs = p.student_channels, ct = p.teacher_channels, r = p.rows;
    const bool with_difference = r > cs + ct;
    const double* row = g + static_cast<int64_t>(c) * r;
    // First product: a Gram block against S_hat (G_SS, or G_SD); second: G_ST against T_hat, or D.
    const double* first = row + (with_difference ? cs + ct : 0);
    const double* second = row + cs;
    const int second_rows = with_difference ? cs + ct : cs;
    float u = 0.f, v = 0.f;
    // Not unrolled (nor the channel loops): unrolled, their addresses made ptxas spill on sm_80 to sm_90.
#pragma unroll 1
    for (int b = 0; b < cs; ++b) u += static_cast<float>(first[b]) * stacked(p, im, w, inv_s, inv_t, b);
#pragma unroll 1
    for (int b = 0; b < ct; ++b) {
        v += static_cast<float>(second[b]) * stacked(p, im, w, inv_s, inv_t, second_rows + b);
    }
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
    const Image<T> im = image_of<T>(a, n);
    const T* s = im.student;
    const double* g = kd::ptr<const double>(a.gram) + static_cast<int64_t>(n) * p.rows * p.rows;
    const Window w = window_of(p, q);
    // The reciprocals of the norms from skd_norms: no square root or division here, whose out-of-line slow
    // paths would spill registers on sm_80 (the build refuses spills).
    const float signed_inv = im.inv_student[q], inv_t = im.inv_teacher[q];
    const float inv = fabsf(signed_inv);
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    const float k = kd::grad_factor(p.grad_scale, p.flags, a.upstream);
    T* grad = kd::ptr<T>(a.grad_student) + static_cast<int64_t>(n) * cs * p.plane;
    int64_t at;
    // Through x / max(|x|, eps) as autograd differentiates it: g / |x| - x (x . g) / |x|^3 where |x| >= eps,
    // g / eps below (the clamp is constant there).
    const bool clamp = signed_inv < 0.f;
    double dot = 0.0;
    if (!clamp) {
        for (int c = 0; c < cs; ++c) {
            const float v = window_max(s + c * p.plane, w, p.width, at);
            dot += static_cast<double>(v) * d_hat(p, g, im, w, inv, inv_t, c);
        }
    }
    const float radial = clamp ? 0.f : static_cast<float>(dot) * (inv * inv * inv);
    for (int c = 0; c < cs; ++c) {
        const float v = window_max(s + c * p.plane, w, p.width, at);
        const float dx = k * (d_hat(p, g, im, w, inv, inv_t, c) * inv - v * radial);
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

// The tensor-core Gram multiplies split f16 halves for either 16-bit input (the planner never launches its f32
// instance).
// check-ptx: mma=f16 on=f16,bf16 skd_gram_tc

#define SKD_ENTRIES(T, NAME)                                                               \
    KD_ENTRY(skd_norms_##NAME, KdSkdArgs, kBlockThreads) { skd_norms<T>(a); }               \
    KD_ENTRY(skd_gram_##NAME, KdSkdArgs, kBlockThreads) { skd_gram<T>(a); }                 \
    KD_ENTRY(skd_gram_tc_##NAME, KdSkdArgs, kBlockThreads, 2) { skd_gram_tc<T>(a); }         \
    KD_ENTRY(skd_merge_##NAME, KdSkdArgs, kBlockThreads) { skd_merge<T>(a); }               \
    KD_ENTRY(skd_loss_##NAME, KdSkdArgs, kBlockThreads) { skd_loss<T>(a); }                 \
    KD_ENTRY(skd_grad_##NAME, KdSkdArgs, kBlockThreads) { skd_grad<T>(a); }
KD_FOR_EACH_DTYPE(SKD_ENTRIES)
