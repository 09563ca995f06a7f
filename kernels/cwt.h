/*
 * The argument block of cwt.cu's kernels: the family's part of the parameter blocks, in plain C under the
 * rules of params.h, whose shared pieces it includes. build.rs generates its Rust twins with bindgen.
 */
#ifndef KD_KERNELS_CWT_H
#define KD_KERNELS_CWT_H

#include "params.h"

/*
 * CWT (channel-wise transformation, losses.md 5): a per-pixel MLP Y = W2 ReLU(W1 x + b1) + b2 (Cs -> Ch -> Ct)
 * and the squared error against the teacher. Pixels are p = n*H*W + y*W + x over the N*H*W of the call; a
 * call is processed in chunks of `chunk_pixels` consecutive pixels (one argument block per chunk), so that
 * the workspace (the hidden layer and dL/dY of a chunk, the slots) stays within one hidden-activation tensor.
 * Weight gradients are reduced over pixels in `splits` ranges per chunk; with one split they go straight
 * into the gradients, else split s of every chunk adds into partial slot s and a combine kernel sums the
 * slots in order.
 */
typedef struct KdCwtParams {
    int64_t plane;          /* H*W: the stride between two channels of one pixel */
    int64_t pixel_begin;    /* first pixel of this chunk */
    int64_t chunk_pixels;   /* pixels in this chunk: the row stride of `hidden` and `out_grad` */
    int64_t split_len;      /* pixels of the chunk one weight-gradient split reduces */
    int32_t cs;             /* student channels */
    int32_t ch;             /* hidden width */
    int32_t ct;             /* teacher channels */
    int32_t splits;         /* weight-gradient splits of this chunk */
    int32_t accumulate_slots; /* 1 after the first chunk: weight gradients add into what earlier chunks put */
    int32_t slots;          /* partial slots (= splits; the combine kernel sums them), 0: splits write the gradients */
    int32_t loss_block_base; /* index of this chunk's first loss partial */
    int32_t loss_blocks;    /* loss partials of the whole call */
    int32_t flags;          /* KdOutputFlags (KD_WANT_GRAD_STUDENT: every gradient) */
    float loss_scale;       /* loss_weight / D */
    float grad_scale;       /* 2 * loss_weight / D * GradOptions::scale: dL/dY per (Y - F_t) */
    int32_t tile_pixels;    /* cwt_forward_fused: pixels per block (64, 32 or 16), its hidden tile in shared memory */
} KdCwtParams;

/* The argument block of every CWT kernel (each reads the fields it needs). */
typedef struct KdCwtArgs {
    uint64_t student;       /* const T*: [N, Cs, H, W] */
    uint64_t teacher;       /* const T*: [N, Ct, H, W] */
    uint64_t w1;            /* const float*: [Ch, Cs] */
    uint64_t b1;            /* const float*: [Ch] */
    uint64_t w2;            /* const float*: [Ct, Ch] */
    uint64_t b2;            /* const float*: [Ct] */
    uint64_t loss;          /* float*: one value */
    uint64_t upstream;      /* const float*: one value, with KD_SCALE_BY_UPSTREAM */
    uint64_t grad_student;  /* T*: [N, Cs, H, W] */
    uint64_t grad_w1;       /* float*: [Ch, Cs] */
    uint64_t grad_b1;       /* float*: [Ch] */
    uint64_t grad_w2;       /* float*: [Ct, Ch] */
    uint64_t grad_b2;       /* float*: [Ct] */
    uint64_t hidden;        /* float*: workspace [Ch, chunk_pixels]: A, then dL/dA in the backward */
    uint64_t out_grad;      /* float*: workspace [Ct, chunk_pixels]: dL/dY (backward only) */
    uint64_t partials;      /* float*: workspace, slots x [Ct, Ch+1] (dW2 | db2) then slots x [Ch, Cs+1] (dW1 | db1) */
    uint64_t loss_partials; /* float*: workspace, one per loss block */
    uint64_t counter;       /* unsigned int*: the loss's ticket, 0 between launches */
    KdCwtParams p;
} KdCwtArgs;

#endif /* KD_KERNELS_CWT_H */
