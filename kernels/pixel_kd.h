/*
 * The argument block of pixel_kd.cu's kernels: the family's part of the parameter blocks, in plain C under the
 * rules of params.h, whose shared pieces it includes. build.rs generates its Rust twins with bindgen.
 */
#ifndef KD_KERNELS_PIXEL_KD_H
#define KD_KERNELS_PIXEL_KD_H

#include "params.h"

/*
 * Pixel-wise KD: one softmax over the C channels of each of the N*H*W pixels.
 * The tiled kernel (pixel_kd_tiled) stages tiles of `tile_pixels` consecutive pixels of one image, all C
 * channels, in shared memory; the per-pixel kernel (pixel_kd) ignores `tile_pixels`.
 */
typedef struct KdPixelKdParams {
    int64_t pixels;           /* N*H*W */
    int64_t plane;            /* H*W: the stride between two channels of one pixel */
    int32_t channels;         /* C */
    int32_t flags;            /* KdOutputFlags */
    float log2e_over_tau;     /* log2(e) / tau */
    float loss_scale;         /* loss_weight * [tau^2] / divisor of the reduction */
    float grad_scale;         /* loss_scale / tau */
    int32_t tile_pixels;      /* pixels per tile: 32, 64, 128 or 256 (a divisor of KD_BLOCK_THREADS) */
} KdPixelKdParams;

/* The argument block of pixel_kd_tiled and pixel_kd. */
typedef struct KdPixelKdArgs {
    uint64_t student;       /* const T*: [N, C, H, W] */
    uint64_t teacher;       /* const T*: [N, C, H, W] */
    uint64_t grad_student;  /* T* */
    uint64_t loss;          /* float*: one value */
    uint64_t upstream;      /* const float*: one value, with KD_SCALE_BY_UPSTREAM */
    uint64_t block_totals;  /* float*: workspace, one partial sum per block */
    uint64_t counter;       /* unsigned int*: the loss's ticket, 0 between launches */
    KdPixelKdParams p;
} KdPixelKdArgs;

#endif /* KD_KERNELS_PIXEL_KD_H */
