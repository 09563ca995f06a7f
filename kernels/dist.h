/*
 * The argument block of dist.cu's kernels: the family's part of the parameter blocks, in plain C under the
 * rules of params.h, whose shared pieces it includes. build.rs generates its Rust twins with bindgen.
 */
#ifndef KD_KERNELS_DIST_H
#define KD_KERNELS_DIST_H

#include "params.h"

/*
 * DIST (docs/losses.md section 8). The N*H*W pixels are taken in tiles of KD_DIST_TILE_PIXELS by the
 * stats_blocks blocks of dist_stats, which write, per (class, block), five moments of the shifted softmaxes
 * over the block's pixels, and per block the sum of its pixels' inter-class correlations; dist_finish (one
 * block per class) turns the moments into the intra-class correlations, the per-class gradient coefficients
 * and the loss; dist_grad writes the gradient.
 */
#define KD_DIST_MAX_CLASSES 2048
#define KD_DIST_PIXELS_PER_THREAD 2
#define KD_DIST_TILE_PIXELS (KD_BLOCK_THREADS * KD_DIST_PIXELS_PER_THREAD)
/* Floats per class of the coefficient array: the shifts of S and T, the means of the shifted values, the
 * reciprocal of the correlation's denominator and the factor on the student's own deviation. */
#define KD_DIST_COEFS 6

typedef struct KdDistParams {
    int64_t pixels;            /* N*H*W */
    int64_t plane;             /* H*W: the stride between two classes of one pixel */
    int32_t classes;           /* C */
    int32_t flags;             /* KdOutputFlags */
    int32_t stats_blocks;      /* blocks of dist_stats (the moments' partials per class) */
    float inv_tau;             /* 1 / tau */
    float inter_loss_weight;   /* loss_weight * tau^2 * beta */
    float intra_loss_weight;   /* loss_weight * tau^2 * gamma */
    float inter_grad_scale;    /* loss_weight * tau * beta / (N*H*W), times GradOptions::scale */
    float intra_grad_scale;    /* loss_weight * tau * gamma / C, times GradOptions::scale */
} KdDistParams;

/* The argument block of dist_stats, dist_finish and dist_grad (each reads the fields it needs). */
typedef struct KdDistArgs {
    uint64_t student;       /* const T*: [N, C, H, W] */
    uint64_t teacher;       /* const T*: [N, C, H, W] */
    uint64_t grad_student;  /* T* */
    uint64_t loss;          /* float*: one value */
    uint64_t upstream;      /* const float*: one value, with KD_SCALE_BY_UPSTREAM */
    uint64_t moments;       /* double*: workspace [5][C][stats_blocks] */
    uint64_t pixel_rho;     /* double*: workspace [stats_blocks], each block's sum of inter-class correlations */
    uint64_t class_rho;     /* double*: workspace [C], the intra-class correlations */
    uint64_t coefs;         /* float*: workspace [C][KD_DIST_COEFS] */
    uint64_t counter;       /* unsigned int*: the loss's ticket, 0 between launches */
    KdDistParams p;
} KdDistArgs;

#endif /* KD_KERNELS_DIST_H */
