/*
 * The argument block of icsd.cu's kernels: the family's part of the parameter blocks, in plain C under the
 * rules of params.h, whose shared pieces it includes. build.rs generates its Rust twins with bindgen.
 */
#ifndef KD_KERNELS_ICSD_H
#define KD_KERNELS_ICSD_H

#include "params.h"

/*
 * ICSD / AICSD (docs/losses.md section 3). Segments are the softmax groups: a column (b, c, w) along H for the
 * official variant, a plane (b, c) over H*W for the paper variant. E = C*C + C entries per tensor of the
 * class statistics (the Gram-like C x C block, then the C entropies).
 */
typedef struct KdIcsdParams {
    int64_t batch;            /* B */
    int64_t plane;            /* L = H*W */
    int64_t height;           /* H */
    int64_t width;            /* W */
    int64_t tiles_per_block;  /* icsd_gram: pixel tiles per block */
    int64_t steps_per_block;  /* icsd_dot/icsd_grad, paper: position tiles per block */
    int32_t classes;          /* C */
    int32_t flags;            /* KdOutputFlags */
    int32_t paper;            /* 0: official variant, 1: paper variant */
    int32_t gram_blocks;      /* blocks per tensor of icsd_gram */
    int32_t tile_pixels;      /* pixels per tile of icsd_gram */
    int32_t grad_cols;        /* positions per tile of icsd_dot/icsd_grad */
    int32_t grad_groups;      /* blocks per image of icsd_dot/icsd_grad */
    float inv_tau;            /* 1 / tau */
    float loss_scale;         /* w / (C^2 B) */
    float grad_scale;         /* 2 w / (C^2 B) times GradOptions::scale */
} KdIcsdParams;

/* The argument block of icsd_stats, icsd_gram, icsd_epilogue, icsd_dot and icsd_grad. */
typedef struct KdIcsdArgs {
    uint64_t student;       /* const T*: [B, C, H, W] */
    uint64_t teacher;       /* const T*: [B, C, H, W] */
    uint64_t grad_student;  /* T* */
    uint64_t loss;          /* float*: one value */
    uint64_t upstream;      /* const float*: one value, with KD_SCALE_BY_UPSTREAM */
    uint64_t sim_student;   /* float*: [C, C] row-normalised student matrix, or 0 */
    uint64_t sim_teacher;   /* float*: [C, C] row-normalised teacher matrix, or 0 */
    uint64_t stats;         /* float*: workspace, (max, log sum) per segment, student then teacher */
    uint64_t partials;      /* double*: workspace, [2][gram_blocks][E] per-block class statistics */
    uint64_t mats;          /* double*: workspace of the epilogue */
    uint64_t coef;          /* float*: workspace, the backward coefficients (C*C + 2C) */
    uint64_t dots;          /* float*: workspace, the softmax-backward dot per segment (or per block, paper) */
    KdIcsdParams p;
} KdIcsdArgs;

/* The most (class, position) pairs one thread of icsd_dot/icsd_grad holds: C * grad_cols <= 256 * this. */
#define KD_ICSD_MAX_ENTRIES 8
/* Floats of the shared tile of icsd_gram (P and log P, rows padded by one): 2 * C * (tile_pixels + 1) <= this. */
#define KD_ICSD_TILE_FLOATS 8192

/* AICSD: out = wa * a + wb * b on one device float each (the two weighted loss terms). */
typedef struct KdIcsdMixArgs {
    uint64_t a;    /* const float* */
    uint64_t b;    /* const float* */
    uint64_t out;  /* float* */
    float wa;
    float wb;
} KdIcsdMixArgs;

#endif /* KD_KERNELS_ICSD_H */
