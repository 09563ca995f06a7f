/*
 * The argument block of cirkd.cu's kernels: the family's part of the parameter blocks, in plain C under the
 * rules of params.h, whose shared pieces it includes. build.rs generates its Rust twins with bindgen.
 */
#ifndef KD_KERNELS_CIRKD_H
#define KD_KERNELS_CIRKD_H

#include "params.h"

/*
 * CIRKD (cirkd.cu, docs/losses.md section 10): mini-batch pixel relations without P x P matrices. Features are
 * normalised where they are read, from the inputs (or, with pooling, their pooled copy in the workspace,
 * [B, C, P] floats per side) and cirkd_norms' reciprocal norm per pixel and side; a logit tile is
 * KD_CIRKD_OWNED pixels of one image (the pixels a block owns) against KD_CIRKD_OTHERS pixels of another,
 * the channels staged KD_CIRKD_CHANNEL_CHUNK at a time. The relations are taken one anchor image i at a time
 * (B launch groups, `anchor` = i): cirkd_forward has a block per (j, tile of rows of image i),
 * cirkd_grad_rows one per tile of image i's pixels, cirkd_grad_columns one per (j, tile of image j's pixels);
 * cirkd_norms and cirkd_finish, launched once, a thread per (side or image, pooled pixel).
 */
#define KD_CIRKD_OWNED 32
#define KD_CIRKD_OTHERS 64
#define KD_CIRKD_CHANNEL_CHUNK 32

typedef struct KdCirkdParams {
    int64_t pixels;           /* P = H' * W' after pooling */
    int32_t batch;            /* B */
    int32_t student_channels; /* Cs */
    int32_t teacher_channels; /* Ct */
    int32_t height;           /* H */
    int32_t width;            /* W */
    int32_t pool;             /* K: the pooling window's side and stride (1: none) */
    int32_t pooled_height;    /* H' = ceil(H / K) */
    int32_t pooled_width;     /* W' = ceil(W / K) */
    int32_t tiles;            /* ceil(P / KD_CIRKD_OWNED) */
    int32_t flags;            /* KdOutputFlags */
    int32_t anchor;           /* i: the anchor image of this launch group (forward and gradient passes) */
    float inv_tau;            /* 1 / tau */
    float loss_scale;         /* loss_weight / (P * B^2) */
    float logit_grad_scale;   /* loss_weight / (P * B^2 * tau): d loss / d (S_hat_i . S_hat_j) per (ps - pt) */
    float grad_scale;         /* GradOptions::scale */
} KdCirkdParams;

/* The argument block of every CIRKD kernel. */
typedef struct KdCirkdArgs {
    uint64_t student;       /* const T*: [B, Cs, H, W] */
    uint64_t teacher;       /* const T*: [B, Ct, H, W] */
    uint64_t loss;          /* float*: one value */
    uint64_t grad_student;  /* T* */
    uint64_t upstream;      /* const float*: one value, with KD_SCALE_BY_UPSTREAM */
    uint64_t inv_norms;      /* float*: workspace [2, B, P], 1 / max(|x|, eps) per pixel, student then teacher */
    uint64_t pooled_student; /* float*: workspace [B, Cs, P], the pooled student (pool > 1 only) */
    uint64_t pooled_teacher; /* float*: workspace [B, Ct, P] (pool > 1 only) */
    uint64_t lse;           /* float*: workspace [2, B, P], rows (anchor, j, p): LSE(t), then LSE(s) - LSE(t) */
    uint64_t d_hat;         /* float*: [B, Cs, P], d loss / d S_hat: grad_student itself when that is f32,
                               unpooled and overwritten, else workspace */
    uint64_t loss_partials; /* float*: workspace, one per cirkd_forward block of a launch group */
    uint64_t anchor_losses; /* double*: workspace [B], the KL sum of each anchor's pairs */
    uint64_t counter;       /* unsigned int*: the loss's ticket, 0 between launches */
    KdCirkdParams p;
} KdCirkdArgs;

#endif /* KD_KERNELS_CIRKD_H */
