/*
 * Deliberately broken kernels, one per check of the emulation (kernels/emulator/checks.h) and one for
 * UndefinedBehaviorSanitizer, and one correct kernel that uses every checked feature: tests/emulator/checks.rs
 * runs each and wants the check's message (or, for the correct one, none). Compiled into the host emulation only (build.rs), never into the fatbins.
 */
#include "../../common.cuh"

struct KdSelftestParams {
    int64_t n;  // floats in each buffer
    int32_t mode;
    int32_t reserved;
};

struct KdSelftestArgs {
    uint64_t input;      // const float*: n floats
    uint64_t output;     // float*: n floats
    uint64_t workspace;  // float*: n + 64 floats, unwritten
    uint64_t counter;    // unsigned int*: one ticket
    KdSelftestParams p;
};

namespace {

using namespace kd;

// Reads one float past the end of the input.
void oob_load(const KdSelftestArgs& a) {
    const float* x = ptr<const float>(a.input);
    float* y = ptr<float>(a.output);
    if (threadIdx.x == 0) y[0] = x[a.p.n];
}

// Writes three floats past the end of the output.
void oob_store(const KdSelftestArgs& a) {
    float* y = ptr<float>(a.output);
    if (threadIdx.x == 0) y[a.p.n + 2] = 1.f;
}

// Writes to an input.
void store_input(const KdSelftestArgs& a) {
    float* x = ptr<float>(a.input);
    if (threadIdx.x == 0) x[1] = 1.f;
}

// A 128-bit load one float past a 16-byte boundary.
void misaligned_vector(const KdSelftestArgs& a) {
    float v[Vec<float>::kLen];
    if (threadIdx.x == 0) {
        load_vec(ptr<const float>(a.input) + 1, v);
        ptr<float>(a.output)[0] = v[0];
    }
}

// WMMA from shared memory: mode 0 at a pointer 16 bytes off its 32-byte alignment, mode 1 with a leading
// dimension of 12 bf16 (24 bytes, not a multiple of 16).
void wmma_operand(const KdSelftestArgs& a) {
    namespace wmma = nvcuda::wmma;
    struct alignas(32) Tile {
        unsigned short v[16 * 32 + 16];
    };
    KD_SHARED(Tile, tile);
    for (int i = threadIdx.x; i < 16 * 32 + 16; i += blockDim.x) tile.v[i] = 0;
    __syncthreads();
    if (threadIdx.x < 32) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> f;
        const auto* base = reinterpret_cast<const __nv_bfloat16*>(tile.v);
        if (a.p.mode == 0) {
            wmma::load_matrix_sync(f, base + 8, 16);
        } else {
            wmma::load_matrix_sync(f, base, 12);
        }
    }
}

// Every thread writes its word, then reads its neighbour's with no barrier between (the words were
// initialised before a barrier, so the read races the write whichever comes first).
void shared_write_read(const KdSelftestArgs& a) {
    KD_SHARED_ARRAY(float, words, kBlockThreads);
    words[threadIdx.x] = 0.f;
    __syncthreads();
    words[threadIdx.x] = static_cast<float>(threadIdx.x);
    const float v = words[(threadIdx.x + 1) % kBlockThreads];
    if (threadIdx.x == 0) ptr<float>(a.output)[0] = v;
}

// Two threads write the same word with no barrier between.
void shared_write_write(const KdSelftestArgs& a) {
    KD_SHARED(float, word);
    if (threadIdx.x < 2) word = static_cast<float>(threadIdx.x);
    __syncthreads();
    if (threadIdx.x == 0) ptr<float>(a.output)[0] = word;
}

// Reads a shared word no thread wrote.
void shared_uninitialised(const KdSelftestArgs& a) {
    KD_SHARED_ARRAY(float, words, kBlockThreads);
    if (threadIdx.x > 0) words[threadIdx.x] = 1.f;
    __syncthreads();
    if (threadIdx.x == 1) ptr<float>(a.output)[0] = words[0];
}

// Reads workspace no kernel of the call wrote.
void workspace_uninitialised(const KdSelftestArgs& a) {
    float* w = ptr<float>(a.workspace);
    if (threadIdx.x == 0) w[0] = 1.f;
    if (threadIdx.x == 1) ptr<float>(a.output)[0] = w[a.p.n - 1];
}

// Half of the block skips a __syncthreads the other half waits at (mode 0), or the halves wait at two
// different ones (mode 1).
void divergent_syncthreads(const KdSelftestArgs& a) {
    if (a.p.mode == 0) {
        if (threadIdx.x < 128) __syncthreads();
    } else if (threadIdx.x < 128) {
        __syncthreads();
    } else {
        __syncthreads();
    }
}

// Lanes 16-31 of warp 0 skip a warp sum (mode 0) or a WMMA load (mode 1) the rest of their warp makes.
void partial_warp(const KdSelftestArgs& a) {
    KD_SHARED(float, out);
    if (threadIdx.x >= 32) return;
    if (a.p.mode == 0) {
        float v = 1.f;
        if (threadIdx.x < 16) v = warp_sum(v);
        if (threadIdx.x == 0) out = v;
    } else {
        namespace wmma = nvcuda::wmma;
        struct alignas(32) Tile {
            float v[16 * 16];
        };
        KD_SHARED(Tile, tile);
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
        wmma::fill_fragment(c, 0.f);
        if (threadIdx.x < 16) wmma::store_matrix_sync(tile.v, c, 16, wmma::mem_row_major);
    }
}

// More static shared memory than any GPU allows (48 KiB).
void static_shared_too_large(const KdSelftestArgs& a) {
    KD_SHARED_ARRAY(float, big, 13 * 1024);
    big[threadIdx.x] = 1.f;
    __syncthreads();
    if (threadIdx.x == 0) ptr<float>(a.output)[0] = big[1];
}

// Signed integer overflow (n * n, n from the launch's arguments so that no compiler folds it): undefined
// behaviour, which UndefinedBehaviorSanitizer reports before aborting the process.
void signed_overflow(const KdSelftestArgs& a) {
    const int n = static_cast<int>(a.p.n);
    if (threadIdx.x == 0) ptr<float>(a.output)[0] = static_cast<float>(n * n);
}

// Everything the checks watch, used correctly: vector loads and stores, shared memory between barriers,
// warp sums, WMMA tiles, workspace written before it is read, the "last block done" ticket. Block b copies
// floats [1024 b, 1024 b + 1024) of the input to the workspace and sums them; output[0] = the input's sum.
void correct(const KdSelftestArgs& a) {
    namespace wmma = nvcuda::wmma;
    const float* x = ptr<const float>(a.input);
    float* y = ptr<float>(a.output);
    float* w = ptr<float>(a.workspace);
    const int64_t base = static_cast<int64_t>(blockIdx.x) * kBlockThreads * 4;
    for (int64_t i = base + threadIdx.x * 4; i + 4 <= a.p.n && i < base + kBlockThreads * 4; i += kBlockThreads * 4) {
        float v[4];
        load_vec(x + i, v);
        store_vec(w + i, v);
    }
    __syncthreads();
    float total = 0.f;
    for (int64_t i = base + threadIdx.x; i < a.p.n && i < base + kBlockThreads * 4; i += kBlockThreads) {
        total += w[i];
    }
    const float sum = block_sum(total);
    struct alignas(32) Tile {
        unsigned short in[16 * 16];
        float out[8][16 * 16];
    };
    KD_SHARED(Tile, tile);
    for (int i = threadIdx.x; i < 16 * 16; i += kBlockThreads) tile.in[i] = __bfloat16_as_ushort(__float2bfloat16_rn(1.f));
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.f);
    wmma::load_matrix_sync(fa, reinterpret_cast<const __nv_bfloat16*>(tile.in), 16);
    wmma::load_matrix_sync(fb, reinterpret_cast<const __nv_bfloat16*>(tile.in), 16);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(tile.out[threadIdx.x / 32], fc, 16, wmma::mem_row_major);
    __syncthreads();
    const float product = tile.out[(threadIdx.x / 32 + 1) % 8][threadIdx.x % 256];  // another warp's tile
    // The block partials after the n copied floats; the last block writes the total to output[0].
    sum_into_loss(sum + (product - 16.f), blockIdx.x, gridDim.x, w + a.p.n, ptr<unsigned int>(a.counter), y, 1.f);
}

}  // namespace

KD_ENTRY(selftest_oob_load_f32, KdSelftestArgs, kBlockThreads) { oob_load(a); }
KD_ENTRY(selftest_oob_store_f32, KdSelftestArgs, kBlockThreads) { oob_store(a); }
KD_ENTRY(selftest_store_input_f32, KdSelftestArgs, kBlockThreads) { store_input(a); }
KD_ENTRY(selftest_misaligned_vector_f32, KdSelftestArgs, kBlockThreads) { misaligned_vector(a); }
KD_ENTRY(selftest_wmma_operand_f32, KdSelftestArgs, kBlockThreads) { wmma_operand(a); }
KD_ENTRY(selftest_shared_write_read_f32, KdSelftestArgs, kBlockThreads) { shared_write_read(a); }
KD_ENTRY(selftest_shared_write_write_f32, KdSelftestArgs, kBlockThreads) { shared_write_write(a); }
KD_ENTRY(selftest_shared_uninitialised_f32, KdSelftestArgs, kBlockThreads) { shared_uninitialised(a); }
KD_ENTRY(selftest_workspace_uninitialised_f32, KdSelftestArgs, kBlockThreads) { workspace_uninitialised(a); }
KD_ENTRY(selftest_divergent_syncthreads_f32, KdSelftestArgs, kBlockThreads) { divergent_syncthreads(a); }
KD_ENTRY(selftest_partial_warp_f32, KdSelftestArgs, kBlockThreads) { partial_warp(a); }
KD_ENTRY(selftest_static_shared_too_large_f32, KdSelftestArgs, kBlockThreads) { static_shared_too_large(a); }
KD_ENTRY(selftest_signed_overflow_f32, KdSelftestArgs, kBlockThreads) { signed_overflow(a); }
KD_ENTRY(selftest_correct_f32, KdSelftestArgs, kBlockThreads) { correct(a); }
