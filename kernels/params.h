/*
 * Parameter blocks of every kernel, declared once in C.
 *
 * The kernels take these structs by value; build.rs runs bindgen on this header to generate the Rust
 * #[repr(C)] twins (src/ffi/params_bindings.rs), so the two sides cannot drift: a field added here
 * without the Rust side following fails the build. Keep this header plain C (no templates, no CUDA
 * qualifiers) so bindgen and nvcc read it the same way, and order fields from widest to narrowest so the
 * layout has no padding that could differ between compilers.
 */
#ifndef KD_KERNELS_PARAMS_H
#define KD_KERNELS_PARAMS_H

#include <stdint.h>

/* Threads per block of every kernel. */
#define KD_BLOCK_THREADS 256

/*
 * The single-pass CWD kernel (cwd_fused) keeps, per thread, KD_CWD_FUSED_VECS 16-byte vectors of the
 * student and as many of the teacher in registers: one block holds a chunk of
 * KD_BLOCK_THREADS * KD_CWD_FUSED_VECS * (16 / sizeof(element)) elements of a row.
 */
#define KD_CWD_FUSED_VECS 4

/* What a launch must produce; the same bits for every loss family. */
enum KdOutputFlags {
    KD_WANT_LOSS = 1,          /* write the scalar loss */
    KD_WANT_GRAD_STUDENT = 2,  /* write d loss / d student */
    KD_WANT_GRAD_TEACHER = 4,  /* write d loss / d teacher (CWD only) */
    KD_SCALE_BY_UPSTREAM = 8,  /* multiply gradients by the device scalar `upstream` (d total / d loss) */
    KD_ACCUMULATE_GRAD = 16    /* add the gradients into their buffers instead of overwriting (cuBLAS beta = 1) */
};

/*
 * Every kernel takes exactly one argument: its family's `Kd*Args` block, by value. The block holds the
 * device addresses of the buffers (as uint64_t: a CUdeviceptr on the GPU, a host address in the emulation;
 * 0 for an output the flags turn off) and then the family's parameter block `p`. The argument list is
 * therefore written once, here, and bindgen gives Rust the same layout.
 */

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

#endif /* KD_KERNELS_PARAMS_H */
