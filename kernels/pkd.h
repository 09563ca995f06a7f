/*
 * The argument block of pkd.cu's kernels: the family's part of the parameter blocks, in plain C under the
 * rules of params.h, whose shared pieces it includes. build.rs generates its Rust twins with bindgen.
 */
#ifndef KD_KERNELS_PKD_H
#define KD_KERNELS_PKD_H

#include "params.h"

/*
 * PKD (pkd.cu, docs/losses.md section 7): per level l and channel c, the standardisation over the
 * M_l = N*H*W values of the channel. A level's channel is cut into chunks of KD_PKD_CHUNK values; block b of
 * pkd_stats and of pkd_apply is one (level, channel, chunk), levels in order, then channels, then chunks. The
 * level table lives in the argument block (at most KD_PKD_MAX_LEVELS levels), so a call uploads nothing.
 */
#define KD_PKD_MAX_LEVELS 8
#define KD_PKD_CHUNK 4096        /* values of one channel per block: 16 per thread */
#define KD_PKD_STAT_DOUBLES 7    /* per block: count, means of S, T, S - T, M2 of S and T, co-moment of S and S - T */
#define KD_PKD_COEF_FLOATS 12    /* per channel: means (hi, lo) of S and T, the loss and gradient factors, pad */

typedef struct KdPkdLevel {
    int64_t plane;          /* H*W */
    int64_t values;         /* M = N*H*W: the values of one channel */
    int32_t channels;       /* C */
    int32_t chunks;         /* blocks per channel: ceil(M / KD_PKD_CHUNK) */
    int32_t block_first;    /* the level's first block of pkd_stats / pkd_apply */
    int32_t channel_first;  /* the level's first row of the coefficient table */
    float loss_scale;       /* 0.5 / (N*C*H*W) */
    float grad_scale;       /* loss_weight / (N*C*H*W) * GradOptions::scale */
} KdPkdLevel;

typedef struct KdPkdParams {
    KdPkdLevel level[KD_PKD_MAX_LEVELS];
    int32_t levels;         /* L */
    int32_t channels;       /* sum of C over the levels: rows of the coefficient table */
    int32_t flags;          /* KdOutputFlags */
    float loss_weight;
    float eps;              /* added to the standard deviation: 1e-6 */
    int32_t reserved;
} KdPkdParams;

/* The argument block of pkd_stats, pkd_finish and pkd_apply (each reads the fields it needs). */
typedef struct KdPkdArgs {
    uint64_t student[KD_PKD_MAX_LEVELS];       /* const T*: [N, C, H, W] of level l */
    uint64_t teacher[KD_PKD_MAX_LEVELS];       /* const T* */
    uint64_t grad_student[KD_PKD_MAX_LEVELS];  /* T* */
    uint64_t loss;          /* float*: one value */
    uint64_t upstream;      /* const float*: one value, with KD_SCALE_BY_UPSTREAM */
    uint64_t partials;      /* double*: workspace, KD_PKD_STAT_DOUBLES per block */
    uint64_t coef;          /* float*: workspace, KD_PKD_COEF_FLOATS per channel */
    uint64_t loss_partials; /* float*: workspace, one per block of pkd_apply */
    uint64_t counter;       /* unsigned int*: the loss's ticket, 0 between launches */
    KdPkdParams p;
} KdPkdArgs;

#endif /* KD_KERNELS_PKD_H */
