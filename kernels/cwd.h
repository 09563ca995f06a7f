/*
 * The argument block of cwd.cu's kernels: the family's part of the parameter blocks, in plain C under the
 * rules of params.h, whose shared pieces it includes. build.rs generates its Rust twins with bindgen.
 */
#ifndef KD_KERNELS_CWD_H
#define KD_KERNELS_CWD_H

#include "params.h"

/*
 * The single-pass CWD kernel (cwd_fused) keeps, per thread, KD_CWD_FUSED_VECS 16-byte vectors of the
 * student and as many of the teacher in registers: one block holds a chunk of
 * KD_BLOCK_THREADS * KD_CWD_FUSED_VECS * (16 / sizeof(element)) elements of a row.
 */
#define KD_CWD_FUSED_VECS 4

/*
 * Channel-wise distillation: rows are the N*C (n, c) pairs, each a softmax over the H*W positions.
 * A row is split into `chunks` pieces of `chunk_len` elements so that few, long rows still fill the GPU.
 * The two-pass kernels (cwd_stats, cwd_finish) chunk the row itself; the single-pass kernel (cwd_fused)
 * chunks the row padded in front to a 16-byte boundary, with its fixed register chunk as chunk_len.
 */
typedef struct KdCwdParams {
    int64_t rows;           /* N*C */
    int64_t row_len;        /* H*W */
    int64_t chunk_len;      /* elements of a row one block handles; a multiple of 8 */
    int32_t chunks;         /* chunks per row */
    int32_t flags;          /* KdOutputFlags */
    float log2e_over_tau;   /* log2(e) / tau: the kernels work in base 2 (exp2f) */
    float loss_scale;       /* loss_weight * tau^2 / (N*C) */
    float grad_scale;       /* loss_weight * tau / (N*C): d loss / d logit per (p_S - p_T) */
    float reserved;         /* keeps the struct a multiple of 8 bytes */
} KdCwdParams;

/* The argument block of cwd_fused, cwd_stats and cwd_finish (each reads the fields it needs). */
typedef struct KdCwdArgs {
    uint64_t student;       /* const T*: [rows, row_len] */
    uint64_t teacher;       /* const T*: [rows, row_len] */
    uint64_t grad_student;  /* T* */
    uint64_t grad_teacher;  /* T* */
    uint64_t loss;          /* float*: one value */
    uint64_t upstream;      /* const float*: one value, with KD_SCALE_BY_UPSTREAM */
    uint64_t partials;      /* double*: workspace, one statistic (KD_CWD_STAT_DOUBLES) per (row, chunk) */
    uint64_t row_kl;        /* float*: workspace, one KL per row */
    uint64_t counter;       /* unsigned int*: the loss's "last block done" ticket, 0 between launches */
    uint64_t row_sync;      /* unsigned int*: two per row (cwd_fused), 0 between launches */
    KdCwdParams p;
} KdCwdArgs;

/* Doubles per (row, chunk) statistic in the CWD workspace: maxima of S and T, their sums, and A. */
#define KD_CWD_STAT_DOUBLES 5

#endif /* KD_KERNELS_CWD_H */
