/*
 * The argument block of ifvd.cu's kernels: the family's part of the parameter blocks, in plain C under the
 * rules of params.h, whose shared pieces it includes. build.rs generates its Rust twins with bindgen.
 */
#ifndef KD_KERNELS_IFVD_H
#define KD_KERNELS_IFVD_H

#include "params.h"

/*
 * IFVD (docs/losses.md section 11). Pixels p < P = H*W of image n are split into `chunks` chunks of
 * `chunk_pixels` (a multiple of 32: one pixel per lane of a warp); classes are 0..K-1 and -1 marks an ignored
 * pixel. Channels are read in groups of 32 (one channel per lane once a warp has transposed its sums).
 */
typedef struct KdIfvdParams {
    int64_t plane;            /* P = H*W */
    int64_t chunk_pixels;     /* pixels of a chunk of ifvd_sums / ifvd_cosines (a multiple of 32) */
    int64_t grad_pixels;      /* pixels of a row one ifvd_grad block writes */
    int32_t batch;            /* N */
    int32_t student_channels; /* Cs */
    int32_t teacher_channels; /* Ct */
    int32_t classes;          /* K */
    int32_t chunks;           /* chunks per image */
    int32_t grad_blocks;      /* ifvd_grad blocks per row (n, c) */
    int32_t height;           /* H */
    int32_t width;            /* W */
    int32_t label_height;     /* Hl */
    int32_t label_width;      /* Wl */
    int32_t label_bytes;      /* 1 (uint8), 4 (int32) or 8 (int64) */
    int32_t flags;            /* KdOutputFlags */
    float scale_h;            /* Hl / H in f32 (PyTorch's nearest scale) */
    float scale_w;            /* Wl / W in f32 */
    float loss_scale;         /* loss_weight / (N*P) */
    float grad_scale;         /* 2 * loss_weight / (N*P) * GradOptions::scale */
} KdIfvdParams;

/* The argument block of every IFVD kernel. Workspace arrays are indexed (image, chunk, class, channel). */
typedef struct KdIfvdArgs {
    uint64_t student;       /* const T*: [N, Cs, H, W] */
    uint64_t teacher;       /* const T*: [N, Ct, H, W] */
    uint64_t labels;        /* const uint8_t / int32_t / int64_t*: [N, Hl, Wl] */
    uint64_t loss;          /* float*: one value */
    uint64_t grad_student;  /* T* */
    uint64_t upstream;      /* const float*: one value, with KD_SCALE_BY_UPSTREAM */
    uint64_t pixel_class;   /* int32_t*: workspace [N, P], the resized label's class, -1 ignored */
    uint64_t counts;        /* uint32_t*: workspace [N, chunks, K], pixels of class k in the chunk */
    uint64_t sums;          /* float*: workspace [N, chunks, K, Cs+Ct] class sums; then [N, chunks, K, Cs] the
                               gradient's weighted student sums */
    uint64_t protos;        /* float*: workspace [N, K, Cs+Ct], the prototypes */
    uint64_t proto_norms;   /* float*: workspace [N, K, 2], |c_S| and |c_T| */
    uint64_t moments;       /* float*: workspace [N, chunks, K], sums of g * cos_S */
    uint64_t coef;          /* float*: workspace [2, N, P], each pixel's gradient coefficients */
    uint64_t proto_grad;    /* float*: workspace [N, K, Cs], the prototype's gradient over count + 1e-6 */
    uint64_t loss_partials; /* float*: workspace, one per ifvd_cosines block */
    uint64_t counter;       /* unsigned int*: the loss's ticket, 0 between launches */
    KdIfvdParams p;
} KdIfvdArgs;

#endif /* KD_KERNELS_IFVD_H */
