/*
 * IFVD intra-class feature variation distillation (docs/losses.md section 11), forward and backward.
 *
 * Per image n and class k the prototype c = (sum of the features of the pixels labelled k) / (count + 1e-6);
 * each pixel's cosine with its class's prototype (with itself where its label is no class), for the student
 * and the teacher with their own features and prototypes; loss = w / (N*P) * sum (cos_S - cos_T)^2. The
 * student's gradient is direct and through its prototypes.
 *
 * Kernels, in launch order:
 *   1. ifvd_sums:       one block per (image, chunk of pixels): resizes the labels (PyTorch's nearest) into the
 *                       pixel-class map, counts each class's pixels, and sums the student's and the teacher's
 *                       features per class into the chunk's own partial. The labels map is resolved once, here.
 *   2. ifvd_protos:     one block per (image, class): the chunks' partials in chunk order, divided by
 *                       count + 1e-6 (double), and the prototypes' norms.
 *   3. ifvd_cosines:    one block per (image, chunk), the same chunks: both cosines of every pixel, the loss,
 *                       and for a gradient each pixel's coefficients and the chunk's per-class sums of
 *                       (g / max(|F|, eps)) F and of g cos_S, g = d loss / d cos_S.
 *   4. ifvd_proto_grad: one block per (image, class): the prototype's gradient from those sums, over count + 1e-6.
 *   5. ifvd_grad:       grad = alpha * c_k + beta * F + (prototype gradient of k), per element.
 * Fusion, and why it is legal: the prototypes need every pixel of the class, so the cosines wait for the whole
 * of kernel 1; d loss / d c_k needs every pixel's cosine, so the gradient through the prototype (which every
 * pixel of class k receives) waits for the whole of kernel 3. Within those limits each read does every job it
 * can: kernel 1 reads the features once for both tensors' sums, kernel 3 reads them once for both cosines,
 * the loss and the gradient's class sums (the student's second look at the chunk is the same block re-reading
 * what it just read, from L1/L2), kernel 5 reads the student once more to write the gradient. So the teacher
 * is read twice, the student three times: the third read cannot be avoided, because the class sum
 * sum_p (g_p / |F_p|) F_p is a vector over the channels that exists only after every pixel's cosine.
 *
 * Deterministic: the per-class sums of a 32-pixel tile are warp butterflies in a fixed order (classes in
 * increasing order, channels transposed onto the lanes), each (chunk, class, channel) partial belongs to one
 * lane of one warp, which adds the tiles in order; the finishers add the chunks in order; the loss is summed
 * by the last block in block order. Counts are integers (u32 atomics are exact).
 */
#include "common.cuh"
#include "ifvd.h"

namespace {

using kd::kBlockThreads;
using kd::kWarps;

constexpr int kTile = 32;  // pixels of a tile: one per lane; and channels of a group
constexpr float kCosEps = 1e-8f;
constexpr double kCountEps = 1e-6;
constexpr int kNoClass = 0x7fffffff;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ int warp_min(int v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = min(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
}

__device__ __forceinline__ int warp_sum_int(int v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

// Lane j returns sum over the lanes of v[j]: a butterfly in which each step hands half of the values to the
// partner lane, so 31 shuffles reduce 32 channels (32 plain butterflies would take 160).
__device__ __forceinline__ float transpose_sum(float (&v)[kTile]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int half = 16; half >= 1; half >>= 1) {
        const bool upper = (lane & half) != 0;
#pragma unroll
        for (int i = 0; i < half; ++i) {
            const float send = upper ? v[i] : v[i + half];
            const float keep = upper ? v[i + half] : v[i];
            v[i] = keep + __shfl_xor_sync(kFullMask, send, half);
        }
    }
    return v[0];
}

// The next class of the tile after those already handled (warp-uniform), kNoClass when none is left; the
// lanes of that class mark it handled.
__device__ __forceinline__ int next_class(int& pending) {
    const int k = warp_min(pending >= 0 ? pending : kNoClass);
    if (pending == k) pending = -1;
    return k;
}

// For every class among the lanes' pixels (`cls`, -1 for none), in increasing order: adds the sum over that
// class's lanes of v[j] (channel j of the group) to out[k * stride + lane] on the lanes with `lane_valid`.
// Only this lane of this warp touches those addresses while a block runs, so the order is fixed.
__device__ __forceinline__ void add_class_sums(const float (&v)[kTile], int cls, float* out, int64_t stride,
                                               bool lane_valid) {
    int pending = cls;
    for (int k = next_class(pending); k != kNoClass; k = next_class(pending)) {
        float masked[kTile];
#pragma unroll
        for (int j = 0; j < kTile; ++j) masked[j] = cls == k ? v[j] : 0.f;
        const float s = transpose_sum(masked);
        if (lane_valid) out[static_cast<int64_t>(k) * stride + (threadIdx.x & 31)] += s;
    }
}

// PyTorch's `nearest` source index (no scale factor given): identity for equal sizes, dst / 2 for an exact
// doubling, else floor(dst * (in / out)) in f32, clamped.
__device__ __forceinline__ int64_t nearest_source(int64_t dst, int64_t in, int64_t out, float scale) {
    if (out == in) return dst;
    if (out == 2 * in) return dst >> 1;
    const int64_t s = static_cast<int64_t>(floorf(static_cast<float>(dst) * scale));
    return s < in - 1 ? s : in - 1;
}

// The class of pixel `px` of image n: its resized label if in [0, K), else -1.
__device__ __forceinline__ int label_class(const KdIfvdArgs& a, int64_t n, int64_t px) {
    const KdIfvdParams& p = a.p;
    const int64_t hs = nearest_source(px / p.width, p.label_height, p.height, p.scale_h);
    const int64_t ws = nearest_source(px % p.width, p.label_width, p.width, p.scale_w);
    const int64_t i = (n * p.label_height + hs) * p.label_width + ws;
    int64_t v;
    if (p.label_bytes == 1) {
        v = kd::ptr<const uint8_t>(a.labels)[i];
    } else if (p.label_bytes == 4) {
        v = kd::ptr<const int32_t>(a.labels)[i];
    } else {
        v = kd::ptr<const int64_t>(a.labels)[i];
    }
    return v >= 0 && v < p.classes ? static_cast<int>(v) : -1;
}

__device__ __forceinline__ int channel_groups(int channels) { return (channels + kTile - 1) / kTile; }

// The pixels [begin, end) of the block's chunk.
struct Chunk {
    int64_t n, q, begin, end;
    __device__ __forceinline__ explicit Chunk(const KdIfvdParams& p) {
        n = blockIdx.x / p.chunks;
        q = blockIdx.x % p.chunks;
        begin = q * p.chunk_pixels;
        end = begin + p.chunk_pixels < p.plane ? begin + p.chunk_pixels : p.plane;
    }
    __device__ __forceinline__ int64_t slot(const KdIfvdParams& p) const { return (n * p.chunks + q) * p.classes; }
};

// Zeroes `width` floats at sums + k * width (and moments[k]) for every class k the chunk holds.
__device__ __forceinline__ void zero_present(const unsigned* counts, int classes, float* sums, int64_t width,
                                             float* moments) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int k = warp; k < classes; k += kWarps) {
        if (counts[k] == 0) continue;
        for (int64_t c = lane; c < width; c += 32) sums[k * width + c] = 0.f;
        if (moments != nullptr && lane == 0) moments[k] = 0.f;
    }
    __syncthreads();
}

// Channel j of a group of 32 starting at c0, pixel px (0 outside the tensor or the chunk).
template <typename T>
__device__ __forceinline__ void load_group(const T* x, int64_t plane, int c0, int channels, int64_t px, bool valid,
                                           float (&v)[kTile]) {
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
        v[j] = valid && c0 + j < channels ? kd::to_float(x[static_cast<int64_t>(j) * plane + px]) : 0.f;
    }
}

// =========================================================================================================
// 1. Pixel classes, counts and the class sums of each chunk.

template <typename T> __device__ void ifvd_sums(const KdIfvdArgs& a) {
    const KdIfvdParams& p = a.p;
    const Chunk ch(p);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int cs = p.student_channels, ct = p.teacher_channels;
    const int64_t width = static_cast<int64_t>(cs) + ct;
    int* pixel_class = kd::ptr<int>(a.pixel_class) + ch.n * p.plane;
    unsigned* counts = kd::ptr<unsigned>(a.counts) + ch.slot(p);
    float* sums = kd::ptr<float>(a.sums) + ch.slot(p) * width;

    for (int k = threadIdx.x; k < p.classes; k += kBlockThreads) counts[k] = 0u;
    __syncthreads();
    for (int64_t t = ch.begin + warp * kTile; t < ch.end; t += kWarps * kTile) {
        const int64_t px = t + lane;
        const int cls = px < ch.end ? label_class(a, ch.n, px) : -1;
        if (px < ch.end) pixel_class[px] = cls;
        int pending = cls;
        for (int k = next_class(pending); k != kNoClass; k = next_class(pending)) {
            const int members = warp_sum_int(cls == k ? 1 : 0);
            if (lane == 0) atomicAdd(counts + k, static_cast<unsigned>(members));
        }
    }
    __syncthreads();
    zero_present(counts, p.classes, sums, width, nullptr);

    const int gs = channel_groups(cs), gt = channel_groups(ct);
    for (int g = warp; g < gs + gt; g += kWarps) {
        const bool teacher = g >= gs;
        const int c0 = (teacher ? g - gs : g) * kTile, channels = teacher ? ct : cs;
        const T* x = kd::ptr<const T>(teacher ? a.teacher : a.student) + (ch.n * channels + c0) * p.plane;
        float* out = sums + (teacher ? cs : 0) + c0;
        for (int64_t t = ch.begin; t < ch.end; t += kTile) {
            const int64_t px = t + lane;
            const bool valid = px < ch.end;
            const int cls = valid ? pixel_class[px] : -1;
            float v[kTile];
            load_group(x, p.plane, c0, channels, px, valid, v);
            add_class_sums(v, cls, out, width, c0 + lane < channels);
        }
    }
}

// The (image, class) of a finisher block: where its chunk slots start (the chunks of one image are
// `classes` slots apart), its pixel count over every chunk and that count + 1e-6. An absent class (count 0)
// has nothing to finish: no pixel reads its slots.
struct ClassBlock {
    int64_t n, k, slot0, cls;  // image, class, first chunk slot, the (image, class) index
    uint64_t count;
    double denom;
    __device__ __forceinline__ explicit ClassBlock(const KdIfvdArgs& a) {
        const KdIfvdParams& p = a.p;
        n = blockIdx.x / p.classes;
        k = blockIdx.x % p.classes;
        slot0 = n * p.chunks * p.classes + k;
        cls = n * p.classes + k;
        const unsigned* counts = kd::ptr<const unsigned>(a.counts) + slot0;
        count = 0;
        for (int64_t q = 0; q < p.chunks; ++q) count += counts[q * p.classes];
        denom = static_cast<double>(count) + kCountEps;
    }
    // Whether chunk q holds pixels of the class (only then were its partials written).
    __device__ __forceinline__ bool in_chunk(const KdIfvdArgs& a, int64_t q) const {
        return kd::ptr<const unsigned>(a.counts)[slot0 + q * a.p.classes] != 0;
    }
};

// =========================================================================================================
// 2. Prototypes and their norms.

template <typename T> __device__ void ifvd_protos(const KdIfvdArgs& a) {
    const KdIfvdParams& p = a.p;
    const ClassBlock b(a);
    if (b.count == 0) return;
    const int cs = p.student_channels;
    const int64_t width = static_cast<int64_t>(cs) + p.teacher_channels;
    const float* sums = kd::ptr<const float>(a.sums) + b.slot0 * width;
    float* proto = kd::ptr<float>(a.protos) + b.cls * width;
    double sq_s = 0.0, sq_t = 0.0;
    for (int64_t c = threadIdx.x; c < width; c += kBlockThreads) {
        double s = 0.0;
        for (int64_t q = 0; q < p.chunks; ++q) {
            if (b.in_chunk(a, q)) s += sums[q * p.classes * width + c];
        }
        const float v = static_cast<float>(s / b.denom);
        proto[c] = v;
        (c < cs ? sq_s : sq_t) += static_cast<double>(v) * v;
    }
    sq_s = kd::block_sum(sq_s);
    sq_t = kd::block_sum(sq_t);
    if (threadIdx.x == 0) {
        float* norms = kd::ptr<float>(a.proto_norms) + b.cls * 2;
        norms[0] = static_cast<float>(sqrt(sq_s));
        norms[1] = static_cast<float>(sqrt(sq_t));
    }
}

// =========================================================================================================
// 3. Cosines, loss, and the gradient's per-pixel coefficients and class sums.

// A cosine and what its gradient needs: PyTorch's cosine_similarity, each norm clamped below by 1e-8.
struct Cosine {
    float value, clamped, norm;  // cos, max(|F|, eps), |F|
};

__device__ __forceinline__ Cosine cosine(float dot, float sq, bool own_partner, float partner_norm) {
    const float norm = sqrtf(sq);
    const float clamped = fmaxf(norm, kCosEps);
    // An ignored pixel is its own prototype: F . F / max(|F|, eps)^2.
    const float partner = own_partner ? clamped : fmaxf(partner_norm, kCosEps);
    return {(own_partner ? sq : dot) / (clamped * partner), clamped, norm};
}

template <typename T> __device__ void ifvd_cosines(const KdIfvdArgs& a) {
    const KdIfvdParams& p = a.p;
    KD_SHARED_ARRAY(float, partial, kWarps * kTile * 4);
    const Chunk ch(p);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int cs = p.student_channels, ct = p.teacher_channels;
    const int64_t width = static_cast<int64_t>(cs) + ct;
    const bool want_grad = (p.flags & KD_WANT_GRAD_STUDENT) != 0;
    const int* pixel_class = kd::ptr<const int>(a.pixel_class) + ch.n * p.plane;
    const float* protos = kd::ptr<const float>(a.protos) + ch.n * p.classes * width;
    const float* norms = kd::ptr<const float>(a.proto_norms) + ch.n * p.classes * 2;
    float* wsums = kd::ptr<float>(a.sums) + ch.slot(p) * cs;
    float* moments = kd::ptr<float>(a.moments) + ch.slot(p);
    float* alpha_out = kd::ptr<float>(a.coef) + ch.n * p.plane;
    float* beta_out = alpha_out + static_cast<int64_t>(p.batch) * p.plane;
    if (want_grad) zero_present(kd::ptr<const unsigned>(a.counts) + ch.slot(p), p.classes, wsums, cs, moments);
    const float gfac = want_grad ? kd::grad_factor(p.grad_scale, p.flags, a.upstream) : 0.f;
    const int gs = channel_groups(cs), gt = channel_groups(ct);
    float loss = 0.f;

    for (int64_t t = ch.begin; t < ch.end; t += kTile) {
        const int64_t px = t + lane;
        const bool valid = px < ch.end;
        const int cls = valid ? pixel_class[px] : -1;
        // This warp's share of the four channel sums: F.c and F.F of the student, then of the teacher.
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        for (int g = warp; g < gs + gt; g += kWarps) {
            const bool teacher = g >= gs;
            const int c0 = (teacher ? g - gs : g) * kTile, channels = teacher ? ct : cs;
            const T* x = kd::ptr<const T>(teacher ? a.teacher : a.student) + (ch.n * channels + c0) * p.plane;
            float v[kTile];
            load_group(x, p.plane, c0, channels, px, valid, v);
            float dot = 0.f, sq = 0.f;
            if (cls >= 0) {
                const float* c = protos + cls * width + (teacher ? cs : 0) + c0;
#pragma unroll
                for (int j = 0; j < kTile; ++j) {
                    if (c0 + j < channels) dot += v[j] * c[j];
                }
            }
#pragma unroll
            for (int j = 0; j < kTile; ++j) sq += v[j] * v[j];
            acc[2 * teacher] += dot;
            acc[2 * teacher + 1] += sq;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) partial[(warp * kTile + lane) * 4 + i] = acc[i];
        __syncthreads();
        // Every warp adds the warps' shares in the same order, so each holds the same cosines.
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            acc[i] = 0.f;
            for (int w = 0; w < kWarps; ++w) acc[i] += partial[(w * kTile + lane) * 4 + i];
        }
        const bool ignored = cls < 0;
        const int64_t slot = ignored ? 0 : 2 * static_cast<int64_t>(cls);
        const float nb_s = ignored ? 0.f : norms[slot], nb_t = ignored ? 0.f : norms[slot + 1];
        const Cosine s = cosine(acc[0], acc[1], ignored, nb_s);
        const Cosine tc = cosine(acc[2], acc[3], ignored, nb_t);
        const float diff = valid ? s.value - tc.value : 0.f;
        if (warp == 0) loss += diff * diff;
        if (want_grad) {
            const float g = gfac * diff;
            // d cos / d F = partner / (|F|c |partner|c) - cos / (|F|c |F|) F (the second term 0 at F = 0).
            const float radial = s.norm > 0.f ? s.value / (s.clamped * s.norm) : 0.f;
            const float cb = fmaxf(nb_s, kCosEps);
            if (warp == 0) {
                if (valid) {
                    // An ignored pixel is both arguments of its cosine: twice the one-sided derivative, along F.
                    alpha_out[px] = ignored ? 0.f : g / (s.clamped * cb);
                    beta_out[px] = ignored ? 2.f * g * (1.f / (s.clamped * s.clamped) - radial) : -g * radial;
                }
                int pending = cls;
                for (int k = next_class(pending); k != kNoClass; k = next_class(pending)) {
                    const float m = kd::warp_sum(cls == k ? g * s.value : 0.f);
                    if (lane == 0) moments[k] += m;
                }
            }
            const float weight = ignored ? 0.f : g / s.clamped;
            for (int g2 = warp; g2 < gs; g2 += kWarps) {
                const int c0 = g2 * kTile;
                const T* x = kd::ptr<const T>(a.student) + (ch.n * cs + c0) * p.plane;
                float v[kTile];
                load_group(x, p.plane, c0, cs, px, valid, v);
#pragma unroll
                for (int j = 0; j < kTile; ++j) v[j] *= weight;
                add_class_sums(v, cls, wsums + c0, cs, c0 + lane < cs);
            }
        }
        __syncthreads();  // `partial` is rewritten by the next tile
    }
    if (p.flags & KD_WANT_LOSS) {
        const float total = kd::block_sum(loss);
        kd::sum_into_loss(total, blockIdx.x, gridDim.x, kd::ptr<float>(a.loss_partials), kd::ptr<unsigned>(a.counter),
                          kd::ptr<float>(a.loss), p.loss_scale);
    }
}

// =========================================================================================================
// 4. The gradient through each prototype, d loss / d c_k, over count + 1e-6 (what each pixel of k receives):
//    sum_p g_p (F_p / (|F_p|c |c_k|c) - cos_p / (|c_k|c |c_k|) c_k).

template <typename T> __device__ void ifvd_proto_grad(const KdIfvdArgs& a) {
    const KdIfvdParams& p = a.p;
    const ClassBlock b(a);
    if (b.count == 0) return;
    const int cs = p.student_channels;
    const int64_t width = static_cast<int64_t>(cs) + p.teacher_channels;
    const float* moments = kd::ptr<const float>(a.moments) + b.slot0;
    const float* wsums = kd::ptr<const float>(a.sums) + b.slot0 * cs;
    double moment = 0.0;
    for (int64_t q = 0; q < p.chunks; ++q) {
        if (b.in_chunk(a, q)) moment += moments[q * p.classes];
    }
    const double nb = kd::ptr<const float>(a.proto_norms)[b.cls * 2];
    const double cb = nb > kCosEps ? nb : kCosEps;
    const double radial = nb > 0.0 ? moment / (cb * nb) : 0.0;
    const float* proto = kd::ptr<const float>(a.protos) + b.cls * width;
    float* out = kd::ptr<float>(a.proto_grad) + b.cls * cs;
    for (int64_t c = threadIdx.x; c < cs; c += kBlockThreads) {
        double s = 0.0;
        for (int64_t q = 0; q < p.chunks; ++q) {
            if (b.in_chunk(a, q)) s += wsums[q * p.classes * cs + c];
        }
        out[c] = static_cast<float>((s / cb - radial * proto[c]) / b.denom);
    }
}

// =========================================================================================================
// 5. The student's gradient.

template <typename T> __device__ void ifvd_grad(const KdIfvdArgs& a) {
    const KdIfvdParams& p = a.p;
    const int cs = p.student_channels;
    const int64_t row = blockIdx.x / p.grad_blocks, part = blockIdx.x % p.grad_blocks;
    const int64_t n = row / cs, c = row % cs;
    const int64_t width = static_cast<int64_t>(cs) + p.teacher_channels;
    const T* x = kd::ptr<const T>(a.student) + row * p.plane;
    T* grad = kd::ptr<T>(a.grad_student) + row * p.plane;
    const int* pixel_class = kd::ptr<const int>(a.pixel_class) + n * p.plane;
    const float* alpha = kd::ptr<const float>(a.coef) + n * p.plane;
    const float* beta = alpha + static_cast<int64_t>(p.batch) * p.plane;
    const float* protos = kd::ptr<const float>(a.protos) + n * p.classes * width + c;
    const float* proto_grad = kd::ptr<const float>(a.proto_grad) + n * p.classes * cs + c;
    const bool accumulate = (p.flags & KD_ACCUMULATE_GRAD) != 0;
    const int64_t begin = part * p.grad_pixels;
    const int64_t end = begin + p.grad_pixels < p.plane ? begin + p.grad_pixels : p.plane;
    for (int64_t px = begin + threadIdx.x; px < end; px += kBlockThreads) {
        const int cls = pixel_class[px];
        float g = beta[px] * kd::to_float(x[px]);
        if (cls >= 0) g += alpha[px] * protos[cls * width] + proto_grad[static_cast<int64_t>(cls) * cs];
        kd::store_grad(grad + px, g, accumulate);
    }
}

}  // namespace

#define KD_IFVD_ENTRY_POINTS(T, NAME)                                                          \
    KD_ENTRY(ifvd_sums_##NAME, KdIfvdArgs, kBlockThreads) { ifvd_sums<T>(a); }                 \
    KD_ENTRY(ifvd_protos_##NAME, KdIfvdArgs, kBlockThreads) { ifvd_protos<T>(a); }             \
    KD_ENTRY(ifvd_cosines_##NAME, KdIfvdArgs, kBlockThreads) { ifvd_cosines<T>(a); }           \
    KD_ENTRY(ifvd_proto_grad_##NAME, KdIfvdArgs, kBlockThreads) { ifvd_proto_grad<T>(a); }     \
    KD_ENTRY(ifvd_grad_##NAME, KdIfvdArgs, kBlockThreads) { ifvd_grad<T>(a); }

KD_FOR_EACH_DTYPE(KD_IFVD_ENTRY_POINTS)
