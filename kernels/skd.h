/*
 * The argument block of skd.cu's kernels: the family's part of the parameter blocks, in plain C under the
 * rules of params.h, whose shared pieces it includes. build.rs generates its Rust twins with bindgen.
 */
#ifndef KD_KERNELS_SKD_H
#define KD_KERNELS_SKD_H

#include "params.h"

/*
 * SKD (skd.cu, docs/losses.md section 9). Per image, the stacked rows X = [S_hat; T_hat] (and, when Cs = Ct,
 * the Cs rows of D = S_hat - T_hat after them), R rows of P = H'*W' pooled, normalised pixels, and their Gram
 * matrix X X^T (R x R), whose blocks are the C x C Gram matrices the loss and the gradient are written with.
 * X is never stored: the kernels pool and normalise its entries from the inputs and skd_norms' reciprocals.
 * skd_gram block b is one (image, chunk of chunk_pixels pixels, tile row, tile column) of KD_SKD_TILE x
 * KD_SKD_TILE entries (skd_gram_tc, the tensor-core Gram of 16-bit inputs with Cs = Ct: KD_SKD_TC_TILE x
 * KD_SKD_TC_TILE); skd_merge sums the chunks' partials in chunk order.
 */
#define KD_SKD_TILE 16
#define KD_SKD_TC_TILE 64
#define KD_SKD_NORM_EPS 1e-12 /* F.normalize's floor under each pixel's norm */
#define KD_SKD_CHUNK_PIXELS 1024 /* pixels of a Gram partial, unless that makes more than KD_SKD_MAX_CHUNKS */
#define KD_SKD_MAX_CHUNKS 8

typedef struct KdSkdParams {
    int64_t plane;            /* H*W */
    int64_t pixels;           /* P = H'*W' */
    int64_t chunk_pixels;     /* pixels of one Gram partial (a multiple of KD_SKD_TILE) */
    int32_t batch;            /* N */
    int32_t student_channels; /* Cs */
    int32_t teacher_channels; /* Ct */
    int32_t rows;             /* R: Cs + Ct, plus Cs when Cs = Ct (the rows of D) */
    int32_t height;           /* H */
    int32_t width;            /* W */
    int32_t pooled_height;    /* H' = ceil(H / window) */
    int32_t pooled_width;     /* W' = ceil(W / window) */
    int32_t window;           /* the max pool's side: 2, or 1 for none */
    int32_t chunks;           /* Gram partials per image */
    int32_t tiles;            /* ceil(R / KD_SKD_TILE), or ceil(R / KD_SKD_TC_TILE) for skd_gram_tc */
    int32_t loss_rows;        /* skd_loss blocks per image: max(Cs, Ct) */
    int32_t flags;            /* KdOutputFlags */
    float loss_scale;         /* loss_weight / (N*P^2) */
    float grad_scale;         /* 4 * loss_weight / (N*P^2) * GradOptions::scale */
    float reserved;           /* keeps the struct a multiple of 8 bytes */
} KdSkdParams;

/* The argument block of every SKD kernel (each reads the fields it needs). */
typedef struct KdSkdArgs {
    uint64_t student;       /* const T*: [N, Cs, H, W] */
    uint64_t teacher;       /* const T*: [N, Ct, H, W] */
    uint64_t grad_student;  /* T* */
    uint64_t loss;          /* float*: one value */
    uint64_t upstream;      /* const float*: one value, with KD_SCALE_BY_UPSTREAM */
    uint64_t inv_norms;     /* float*: workspace [2, N, P], 1 / max(|x|, eps) per pooled pixel: student, teacher */
    uint64_t gram_partials; /* float*: workspace [N, chunks, R, R] */
    uint64_t gram;          /* double*: workspace [N, R, R] */
    uint64_t loss_partials; /* float*: workspace, one per skd_loss block */
    uint64_t counter;       /* unsigned int*: the loss's ticket, 0 between launches */
    KdSkdParams p;
} KdSkdArgs;

#endif /* KD_KERNELS_SKD_H */
