/*
 * kd_kernels.h: the C ABI of kd-kernels (crates/kd-kernels-capi: libkd_kernels.so / libkd_kernels.a).
 *
 * Knowledge-distillation losses of dense prediction, on raw pointers: device addresses for the CUDA
 * kernels (the caller's buffers and stream, e.g. libtorch's `tensor.data_ptr()` and
 * `at::cuda::getCurrentCUDAStream().stream()`), host pointers for the CPU reference. What each loss
 * computes is in docs/losses.md; the parameters and their defaults are those of the Rust crate.
 *
 * Conventions
 *  - Tensors are contiguous NCHW; `shape` points to `ndim` dimensions (4 for these losses).
 *  - Every function returns a kd_status; on anything but KD_OK, kd_last_error_message() (per thread) says
 *    what went wrong and what to fix. No function aborts the process on bad input; a Rust panic is caught
 *    at the boundary and returned as KD_ERR_PANIC.
 *  - CUDA calls queue work on `stream` (a CUstream; NULL is the legacy default stream) and never
 *    synchronise with the host. The loss is written as one f32 at the `loss` device address, the gradients
 *    in the input dtype. A device address of 0 means "absent": what a call computes follows from which
 *    outputs are given (the loss, the student gradient, the teacher gradient for CWD, the gradients times
 *    the device f32 at `upstream`).
 *  - CPU calls compute in double: the loss into `*loss` (may be NULL), the gradients (NULL: not computed)
 *    rounded once to the input dtype. KD_DTYPE_F64 is accepted on the CPU only.
 *  - kd_grad_options: `scale` multiplies every gradient (never the loss); `accumulate` != 0 adds into
 *    the gradient buffers instead of overwriting them.
 */
#ifndef KD_KERNELS_H
#define KD_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kd_status {
    KD_OK = 0,
    /** A required pointer (context, parameters, shape, input) is NULL. */
    KD_ERR_NULL_POINTER = 1,
    /** Wrong rank, shapes that do not match, a zero or negative dimension, a buffer too small. */
    KD_ERR_SHAPE = 2,
    /** A tensor too large for the kernels' launch geometry or index arithmetic. */
    KD_ERR_TOO_LARGE = 3,
    /** A parameter out of its domain (tau not finite and > 0, a non-finite weight or scale, an unknown
     *  reduction). */
    KD_ERR_PARAMETER = 4,
    /** The set of outputs given does not make a call (nothing to compute, a teacher gradient without the
     *  student's, a teacher gradient a loss does not have). */
    KD_ERR_OUTPUT = 5,
    /** An unknown dtype, or one the call does not take (f64 on the GPU). */
    KD_ERR_DTYPE = 6,
    /** A buffer or stream of another CUDA context than the kd_context's device. */
    KD_ERR_CONTEXT = 7,
    /** A requested way of computing does not apply here. */
    KD_ERR_UNSUPPORTED = 8,
    /** The call would grow its workspace while its stream is being captured into a CUDA graph. */
    KD_ERR_WORKSPACE = 9,
    /** This library was built without nvcc: it has no GPU kernels (the CPU entry points work). */
    KD_ERR_KERNELS_UNAVAILABLE = 10,
    /** No usable CUDA driver or device. */
    KD_ERR_CUDA_UNAVAILABLE = 11,
    /** The CUDA driver returned an error. */
    KD_ERR_CUDA = 12,
    /** A Rust panic was caught at the boundary (a bug: please report it with the message). */
    KD_ERR_PANIC = 13,
    /** An error of a kind this version of the header does not name. */
    KD_ERR_OTHER = 14
} kd_status;

typedef enum kd_dtype {
    KD_DTYPE_F32 = 0,
    KD_DTYPE_F16 = 1,
    KD_DTYPE_BF16 = 2,
    /** CPU reference only. */
    KD_DTYPE_F64 = 3
} kd_dtype;

/** Pixel KD's divisor of the summed per-pixel KL. */
typedef enum kd_reduction {
    /** N*C*H*W (PyTorch KLDivLoss's default, the official one). */
    KD_REDUCTION_MEAN = 0,
    /** N. */
    KD_REDUCTION_BATCHMEAN = 1,
    /** 1. */
    KD_REDUCTION_SUM = 2,
    /** N*H*W. */
    KD_REDUCTION_PIXELMEAN = 3
} kd_reduction;

typedef struct kd_grad_options {
    /** Factor on every gradient; finite. 1 for none. */
    double scale;
    /** Non-zero: add into the gradient buffers. */
    int32_t accumulate;
} kd_grad_options;

/** Channel-wise distillation (docs/losses.md §1). The paper's setting: tau 4, loss_weight 3. */
typedef struct kd_cwd_params {
    double tau;
    double loss_weight;
} kd_cwd_params;

/** Pixel-wise KD (docs/losses.md §2). Official defaults: tau 1, loss_weight 10, KD_REDUCTION_MEAN,
 *  scale_tau2 0. */
typedef struct kd_pixel_kd_params {
    double tau;
    double loss_weight;
    /** A kd_reduction. */
    int32_t reduction;
    /** Non-zero: multiply by tau^2. */
    int32_t scale_tau2;
} kd_pixel_kd_params;

/** CWT's divisor of the summed squared error. */
typedef enum kd_cwt_normalize {
    /** D = N (MGD's normaliser, the default). */
    KD_CWT_NORMALIZE_BATCH = 0,
    /** D = N*Ct*H*W. */
    KD_CWT_NORMALIZE_MEAN = 1
} kd_cwt_normalize;

/** Channel-wise transformation (docs/losses.md §5): Y = W2 ReLU(W1 x + b1) + b2 per pixel (Cs -> Ch -> Ct),
 *  loss = loss_weight * sum (Y - F_t)^2 / D. Default loss_weight 2e-5, KD_CWT_NORMALIZE_BATCH, Ch = Ct. */
typedef struct kd_cwt_params {
    double loss_weight;
    /** A kd_cwt_normalize. */
    int32_t normalize;
    /** The hidden width Ch. */
    int64_t hidden_channels;
} kd_cwt_params;

/** ICSD's similarity matrix (docs/losses.md §3.4, §3.7). */
typedef enum kd_icsd_variant {
    /** The official code: softmax along H, M = A_max(i,j) - G. */
    KD_ICSD_OFFICIAL = 0,
    /** The paper's prose: softmax over H*W, pairwise KL. */
    KD_ICSD_PAPER = 1
} kd_icsd_variant;

/** ICSD (docs/losses.md §3): L_ICS = loss_weight / (C^2 B) * sum (Mh_S - Mh_T)^2. Defaults: tau 1,
 *  loss_weight 9500, KD_ICSD_OFFICIAL. AICSD = alpha * L_ICS + (1 - alpha) * pixel KD, alpha =
 *  clamp(epoch / 120, 0, 1): two calls, the second with `accumulate` and the scales alpha, 1 - alpha. */
typedef struct kd_icsd_params {
    double tau;
    double loss_weight;
    /** A kd_icsd_variant. */
    int32_t variant;
} kd_icsd_params;

/** SemCKD (docs/losses.md §4) without the regressors: loss = loss_weight * sum(alpha * mse) / (B * S).
 *  Default loss_weight 400 (CIFAR-100; 50 on ImageNet), eps 0 (the official normalisation, no epsilon),
 *  embed_dim 0 (the official d = B / 4). */
typedef struct kd_semckd_params {
    double loss_weight;
    /** The L2 normalisation's epsilon; 0 for none. */
    double eps;
    /** The embedding width d; 0 for floor(B / 4). */
    int64_t embed_dim;
} kd_semckd_params;

/** Owns one device's loaded kernels and workspaces, so repeated calls neither reload nor reallocate.
 *  Calls through one context are serialised (a lock); use one context per device. */
typedef struct kd_context kd_context;

/** The message of the last failed call on this thread ("" after a successful one). Valid until the next
 *  call on this thread; never NULL. */
const char *kd_last_error_message(void);

/** 1 when this library carries GPU kernels (it was built with nvcc), else 0. */
int32_t kd_kernels_compiled(void);

/** KD_OK when the kernels are compiled and a CUDA driver with a device is present; else the reason. */
kd_status kd_cuda_probe(void);

/** Opens device `device_ordinal` (its primary context, the one the CUDA runtime and PyTorch use). */
kd_status kd_context_create(int32_t device_ordinal, kd_context **out);

/** Frees the context and its workspaces (NULL is a no-op). Work queued through it must have finished. */
void kd_context_destroy(kd_context *ctx);

/* ---- CWD ---------------------------------------------------------------------------------------- */

/** CWD on the GPU. The teacher gradient is computed exactly when `grad_teacher` != 0. */
kd_status kd_cwd_cuda(kd_context *ctx, const kd_cwd_params *params, const int64_t *shape, size_t ndim,
                      kd_dtype dtype, uint64_t student, uint64_t teacher, uint64_t loss, uint64_t grad_student,
                      uint64_t grad_teacher, uint64_t upstream, kd_grad_options options, void *stream);

/** CWD on the CPU reference (host pointers). The teacher gradient is computed exactly when
 *  `grad_teacher` != NULL, which needs `grad_student` too. */
kd_status kd_cwd_cpu(const kd_cwd_params *params, const int64_t *shape, size_t ndim, kd_dtype dtype,
                     const void *student, const void *teacher, double *loss, void *grad_student,
                     void *grad_teacher, kd_grad_options options);

/* ---- pixel KD ----------------------------------------------------------------------------------- */

/** Pixel KD on the GPU (no teacher gradient: the teacher is a constant). */
kd_status kd_pixel_kd_cuda(kd_context *ctx, const kd_pixel_kd_params *params, const int64_t *shape,
                           size_t ndim, kd_dtype dtype, uint64_t student, uint64_t teacher, uint64_t loss,
                           uint64_t grad_student, uint64_t upstream, kd_grad_options options, void *stream);

/** Pixel KD on the CPU reference (host pointers). */
kd_status kd_pixel_kd_cpu(const kd_pixel_kd_params *params, const int64_t *shape, size_t ndim,
                          kd_dtype dtype, const void *student, const void *teacher, double *loss,
                          void *grad_student, kd_grad_options options);

/* ---- CWT ---------------------------------------------------------------------------------------- */

/** CWT on the GPU. Student [N, Cs, H, W] and teacher [N, Ct, H, W] in `dtype`; `weights` points to the
 *  device addresses of W1 [Ch, Cs], b1 [Ch], W2 [Ct, Ch], b2 [Ct] (f32). With `grad_student` != 0,
 *  `grad_weights` points to the addresses of their four f32 gradients (all five gradients or none). The
 *  teacher gets no gradient. */
kd_status kd_cwt_cuda(kd_context *ctx, const kd_cwt_params *params, const int64_t *student_shape,
                      size_t student_ndim, const int64_t *teacher_shape, size_t teacher_ndim, kd_dtype dtype,
                      uint64_t student, uint64_t teacher, const uint64_t weights[4], uint64_t loss,
                      uint64_t grad_student, const uint64_t grad_weights[4], uint64_t upstream,
                      kd_grad_options options, void *stream);

/** CWT on the CPU reference: `weights` are the four f32 host arrays; with `grad_student` != NULL (in
 *  `dtype`), `grad_weights` are four f64 host arrays for the parameter gradients (all needed). */
kd_status kd_cwt_cpu(const kd_cwt_params *params, const int64_t *student_shape, size_t student_ndim,
                     const int64_t *teacher_shape, size_t teacher_ndim, kd_dtype dtype, const void *student,
                     const void *teacher, const float *const weights[4], double *loss, void *grad_student,
                     double *const grad_weights[4], kd_grad_options options);

/* ---- ICSD --------------------------------------------------------------------------------------- */

/** ICSD on the GPU (no teacher gradient); the row-normalised C x C matrices (f32) into `sim_student` and
 *  `sim_teacher` where those addresses are non-zero. */
kd_status kd_icsd_cuda(kd_context *ctx, const kd_icsd_params *params, const int64_t *shape, size_t ndim,
                       kd_dtype dtype, uint64_t student, uint64_t teacher, uint64_t loss, uint64_t grad_student,
                       uint64_t upstream, uint64_t sim_student, uint64_t sim_teacher, kd_grad_options options,
                       void *stream);

/** ICSD on the CPU reference; the matrices (C*C f64, row-major) where the pointers are not NULL. */
kd_status kd_icsd_cpu(const kd_icsd_params *params, const int64_t *shape, size_t ndim, kd_dtype dtype,
                      const void *student, const void *teacher, double *loss, void *grad_student,
                      double *sim_student, double *sim_teacher, kd_grad_options options);

/* ---- SemCKD ------------------------------------------------------------------------------------- */

/** SemCKD on the GPU. `student_shapes` / `teacher_shapes`: S and T rank-4 shapes (4 values each, S and T
 *  at most 8). Address lists: `student` S, `teacher` T, `proj` S*T (the regressor outputs [B, Ct_j, h, h],
 *  h = min(Hs_i, Ht_j), pair (i, j) at i*T + j), `query` 4*S and `key` 4*T (each MLP's linear1.weight
 *  [2d, B], linear1.bias [2d], linear2.weight [d, 2d], linear2.bias [d], f32). `attention` ([B, S, T] f32)
 *  where non-zero. With `grad_student` != NULL, the gradient lists (same lengths: the maps' through the
 *  Gram/attention path, the regressor outputs', the MLPs' in f32) must all be given. */
kd_status kd_semckd_cuda(kd_context *ctx, const kd_semckd_params *params, size_t num_student,
                         const int64_t *student_shapes, size_t num_teacher, const int64_t *teacher_shapes,
                         kd_dtype dtype, const uint64_t *student, const uint64_t *teacher, const uint64_t *proj,
                         const uint64_t *query, const uint64_t *key, uint64_t loss, uint64_t attention,
                         const uint64_t *grad_student, const uint64_t *grad_proj, const uint64_t *grad_query,
                         const uint64_t *grad_key, uint64_t upstream, kd_grad_options options, void *stream);

/** SemCKD on the CPU reference: the same lists of host pointers; the attention ([B, S, T] f64) where not
 *  NULL; the MLP gradients in f64. */
kd_status kd_semckd_cpu(const kd_semckd_params *params, size_t num_student, const int64_t *student_shapes,
                        size_t num_teacher, const int64_t *teacher_shapes, kd_dtype dtype,
                        const void *const *student, const void *const *teacher, const void *const *proj,
                        const float *const *query, const float *const *key, double *loss, double *attention,
                        void *const *grad_student, void *const *grad_proj, double *const *grad_query,
                        double *const *grad_key, kd_grad_options options);

#ifdef __cplusplus
}
#endif

#endif /* KD_KERNELS_H */
