/*
 * The argument block of semckd.cu's kernels: the family's part of the parameter blocks, in plain C under the
 * rules of params.h, whose shared pieces it includes. build.rs generates its Rust twins with bindgen.
 */
#ifndef KD_KERNELS_SEMCKD_H
#define KD_KERNELS_SEMCKD_H

#include "params.h"

/*
 * SemCKD (semckd.cu). Layers l = 0..S-1 are the student maps, l = S..S+T-1 the teacher maps; pair (i, j) is
 * index i * T + j. Every table lives in the argument block (at most KD_SEMCKD_MAX_LAYERS per side), so a call
 * uploads nothing and a captured graph replays it as is; the block stays under 4 KB.
 */
#define KD_SEMCKD_MAX_LAYERS 8
#define KD_SEMCKD_MAX_PAIRS (KD_SEMCKD_MAX_LAYERS * KD_SEMCKD_MAX_LAYERS)
#define KD_SEMCKD_GRAM_TILE 64   /* Gram output tile (rows and columns) of one block */
#define KD_SEMCKD_GRAM_K 32      /* columns of X staged in shared memory at a time */
#define KD_SEMCKD_BACK_ROWS 16   /* rows of dX one thread of semckd_gram_back accumulates */

typedef struct KdSemckdParams {
    int64_t dim[2 * KD_SEMCKD_MAX_LAYERS];          /* D = C*H*W of layer l */
    int64_t chunk_len[2 * KD_SEMCKD_MAX_LAYERS];    /* Gram: columns of X per chunk */
    int64_t gram_offset[2 * KD_SEMCKD_MAX_LAYERS];  /* float offset of layer l's partial Grams */
    int32_t gram_first[2 * KD_SEMCKD_MAX_LAYERS + 1]; /* first semckd_gram block of layer l (prefix sums) */
    int32_t back_first[KD_SEMCKD_MAX_LAYERS + 1];   /* first semckd_gram_back block of student layer i */
    int32_t chunks[2 * KD_SEMCKD_MAX_LAYERS];       /* Gram chunks of layer l */
    int32_t channels[2 * KD_SEMCKD_MAX_LAYERS];
    int32_t height[2 * KD_SEMCKD_MAX_LAYERS];
    int32_t width[2 * KD_SEMCKD_MAX_LAYERS];
    int32_t batch;          /* B */
    int32_t embed;          /* d */
    int32_t students;       /* S */
    int32_t teachers;       /* T */
    int32_t gram_tiles;     /* ceil(B / KD_SEMCKD_GRAM_TILE) */
    int32_t flags;          /* KdOutputFlags; KD_WANT_GRAD_STUDENT stands for every gradient */
    float loss_scale;       /* loss_weight / (B*S) */
    float grad_scale;       /* loss_weight / (B*S) * GradOptions::scale */
    float eps;              /* normalisation epsilon; 0 = none (official) */
    int32_t reserved;
} KdSemckdParams;

/* The argument block of every SemCKD kernel. Workspace pointers are float* into the loss's workspace. */
typedef struct KdSemckdArgs {
    uint64_t features[2 * KD_SEMCKD_MAX_LAYERS];    /* const T*: [B, D_l] */
    uint64_t grad_student[KD_SEMCKD_MAX_LAYERS];    /* T*: [B, D_i] */
    uint64_t proj[KD_SEMCKD_MAX_PAIRS];             /* const T*: [B, Ct_j, h, h] */
    uint64_t grad_proj[KD_SEMCKD_MAX_PAIRS];        /* T* */
    uint64_t mlp[8 * KD_SEMCKD_MAX_LAYERS];         /* const float*: layer l's W1, b1, W2, b2 at 4 l + k */
    uint64_t grad_mlp[8 * KD_SEMCKD_MAX_LAYERS];    /* float*: their gradients */
    uint64_t loss;          /* float*: one value */
    uint64_t attention;     /* float*: [B, S, T], optional */
    uint64_t upstream;      /* const float*: one value, with KD_SCALE_BY_UPSTREAM */
    uint64_t gram_partials; /* workspace: per layer, chunks x B x B */
    uint64_t gram;          /* workspace: L x B x B */
    uint64_t hidden;        /* workspace: L x B x 2d (pre-ReLU) */
    uint64_t embedding;     /* workspace: L x B x d (normalised) */
    uint64_t norm;          /* workspace: L x B (the divisor) */
    uint64_t alpha;         /* workspace: B x S x T */
    uint64_t mse;           /* workspace: B x S x T */
    uint64_t dy;            /* workspace: L x B x d, then d loss / d z */
    uint64_t dz;            /* workspace: L x B x d */
    uint64_t du;            /* workspace: L x B x 2d */
    uint64_t dgram;         /* workspace: S x B x B */
    KdSemckdParams p;
} KdSemckdArgs;

/* Adaptive average pooling of [planes, in_h, in_w] to [planes, out_h, out_w] (semckd_pool, semckd_pool_back). */
typedef struct KdPoolArgs {
    uint64_t input;         /* forward: const T* x; backward: const T* grad_out */
    uint64_t output;        /* forward: T* y; backward: T* grad_in */
    int64_t planes;         /* N*C */
    int32_t in_h, in_w, out_h, out_w;
    int32_t flags;          /* KD_ACCUMULATE_GRAD for the backward */
    float scale;            /* backward: factor on the gradient */
} KdPoolArgs;

#endif /* KD_KERNELS_SEMCKD_H */
