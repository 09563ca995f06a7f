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
 *  - Safety, every CUDA call: `ctx` comes from kd_context_create; `params` and each shape (`ndim`
 *    entries) are readable; `stream` is a live stream of the context's device (its primary context), or
 *    NULL; every non-zero address is device memory of that context holding what its shape and `dtype`
 *    need.
 *  - Safety, every CPU call: `params` and each shape are readable; the inputs point to contiguous NCHW
 *    tensors of their shapes in `dtype`; `loss` is NULL or writable; each gradient is NULL or a writable
 *    tensor of its input's shape in `dtype` (initialised, with `accumulate`).
 *  - The enumerations (kd_status, kd_dtype, kd_reduction, kd_cwt_normalize, kd_icsd_variant,
 *    kd_label_dtype) are int32_t
 *    with named constants, so a value this header does not know is refused with a status, never undefined.
 */

#ifndef KD_KERNELS_H
#define KD_KERNELS_H

/* Generated from crates/kd-kernels-capi/src by cbindgen (crates/kd-kernels-capi/cbindgen.toml); do not
 * edit: `KD_KERNELS_BLESS_HEADER=1 cargo test -p kd-kernels-capi --test header` regenerates it. */

#include <stddef.h>
#include <stdint.h>

/**
 * `kd_cirkd_config.pool`: the official rule, a 4x4 average pool when H >= 256 and W >= 256, else none.
 */
#define KD_CIRKD_POOL_AUTO 0

/**
 * `kd_cirkd_config.pool`: no pooling, whatever the size.
 */
#define KD_CIRKD_POOL_NONE 1

/**
 * Owns one device's loaded kernels and workspaces, so repeated calls neither reload nor reallocate.
 * Calls through one context are serialised (a lock); use one context per device.
 */
typedef struct kd_context kd_context;

/**
 * What every call returns: `KD_OK`, or the kind of failure (`kd_last_error_message()` has the details).
 */
typedef int32_t kd_status;

/**
 * CIRKD, mini-batch cross-image pixel relations (docs/losses.md §10): the features pooled (`pool`) and
 * normalised per pixel over the channels; for every ordered pair of images (i, j), i = j included, each
 * pixel of image i gets a softmax over the pixels of image j of the similarities / tau, and the student's is
 * pulled to the teacher's: L = loss_weight * sum over pairs of KL_ij / B^2 (KL_ij averaged over the rows).
 * The defaults (the official CriterionMiniBatchCrossImagePair(0.1)): tau 0.1, loss_weight 1, pool
 * KD_CIRKD_POOL_AUTO.
 */
typedef struct kd_cirkd_config {
  /**
   * Temperature dividing the similarities; finite and > 0.
   */
  double tau;
  /**
   * Factor on the loss; finite.
   */
  double loss_weight;
  /**
   * KD_CIRKD_POOL_AUTO (0, the official rule), KD_CIRKD_POOL_NONE (1), or K >= 2: a K x K average pool,
   * stride K, ceil_mode, whatever the size.
   */
  int64_t pool;
} kd_cirkd_config;

/**
 * The element type of the tensors of a call.
 */
typedef int32_t kd_dtype;

/**
 * How a call writes its gradients (every call that writes gradients takes one).
 */
typedef struct kd_grad_options {
  /**
   * Factor on every gradient; finite. 1 for none.
   */
  double scale;
  /**
   * Non-zero: add into the gradient buffers.
   */
  int32_t accumulate;
} kd_grad_options;

/**
 * Channel-wise distillation (docs/losses.md §1). The paper's setting: tau 4, loss_weight 3.
 */
typedef struct kd_cwd_config {
  /**
   * Softmax temperature; finite and > 0.
   */
  double tau;
  /**
   * Weight of the loss; finite.
   */
  double loss_weight;
} kd_cwd_config;

/**
 * CWT's divisor of the summed squared error.
 */
typedef int32_t kd_cwt_normalize;

/**
 * Channel-wise transformation (docs/losses.md §5): Y = W2 ReLU(W1 x + b1) + b2 per pixel (Cs -> Ch -> Ct),
 * loss = loss_weight * sum (Y - F_t)^2 / D. Default loss_weight 2e-5, KD_CWT_NORMALIZE_BATCH, Ch = Ct.
 */
typedef struct kd_cwt_config {
  /**
   * The loss weight; finite.
   */
  double loss_weight;
  /**
   * A kd_cwt_normalize.
   */
  kd_cwt_normalize normalize;
  /**
   * The hidden width `Ch`.
   */
  int64_t hidden_channels;
} kd_cwt_config;

/**
 * DIST, segmentation form (docs/losses.md §8): with p = softmax over C of x / tau per pixel,
 * L = loss_weight * tau^2 * (inter_loss_weight * (1 - mean over pixels of the Pearson correlation of p_S and
 * p_T across classes) + intra_loss_weight * (1 - mean over classes of their correlation across all
 * N*H*W pixels)). Defaults (DIST_KD's, mmrazor's DISTLoss): all 1.
 */
typedef struct kd_dist_config {
  /**
   * Softmax temperature; finite and > 0.
   */
  double tau;
  /**
   * Weight of the inter-class term (DIST's beta); finite.
   */
  double inter_loss_weight;
  /**
   * Weight of the intra-class term (DIST's gamma); finite.
   */
  double intra_loss_weight;
  /**
   * Factor on the whole loss; finite.
   */
  double loss_weight;
} kd_dist_config;

/**
 * ICSD's similarity matrix (docs/losses.md §3.4, §3.7).
 */
typedef int32_t kd_icsd_variant;

/**
 * ICSD (docs/losses.md §3): L_ICS = loss_weight / (C^2 B) * sum (Mh_S - Mh_T)^2. Defaults: tau 1,
 * loss_weight 9500, KD_ICSD_OFFICIAL. AICSD = alpha * L_ICS + (1 - alpha) * pixel KD, alpha =
 * clamp(epoch / 120, 0, 1): two calls, the second with `accumulate` and the scales alpha, 1 - alpha.
 */
typedef struct kd_icsd_config {
  /**
   * Softmax temperature; finite and > 0.
   */
  double tau;
  /**
   * The weight of `L_ICS`; finite.
   */
  double loss_weight;
  /**
   * A kd_icsd_variant.
   */
  kd_icsd_variant variant;
} kd_icsd_config;

/**
 * IFVD (docs/losses.md §11): per image and class a prototype (the mean feature of the pixels labelled k),
 * each pixel's cosine with its class's prototype (its own feature where its label is not in
 * [0, num_classes)), L = loss_weight * mean over N*H*W of (cos_S - cos_T)^2.
 */
typedef struct kd_ifvd_config {
  /**
   * The class count K (19 on Cityscapes, 150 on ADE20K); 1 to 2^24.
   */
  int64_t num_classes;
  /**
   * The factor on the mean; finite (CIRKD's scripts use 20).
   */
  double loss_weight;
} kd_ifvd_config;

/**
 * The integer type of a label tensor.
 */
typedef int32_t kd_label_dtype;

/**
 * Pixel KD's divisor of the summed per-pixel KL.
 */
typedef int32_t kd_reduction;

/**
 * Pixel-wise KD (docs/losses.md §2). Official defaults: tau 1, loss_weight 10, KD_REDUCTION_MEAN,
 * scale_tau2 0.
 */
typedef struct kd_pixel_kd_config {
  /**
   * Softmax temperature; finite and > 0.
   */
  double tau;
  /**
   * Weight of the loss; finite.
   */
  double loss_weight;
  /**
   * A kd_reduction.
   */
  kd_reduction reduction;
  /**
   * Non-zero: multiply by tau^2.
   */
  int32_t scale_tau2;
} kd_pixel_kd_config;

/**
 * PKD (docs/losses.md §7): per level and channel, student and teacher standardised over the whole batch
 * (unbiased std + 1e-6), loss = loss_weight * sum over levels of 0.5 * mean (S_hat - T_hat)^2. mmrazor's
 * default loss_weight is 1 (its detection configs use 6).
 */
typedef struct kd_pkd_config {
  /**
   * Weight of the summed level losses; finite.
   */
  double loss_weight;
} kd_pkd_config;

/**
 * SemCKD (docs/losses.md §4) without the regressors: loss = loss_weight * sum(alpha * mse) / (B * S).
 * Default loss_weight 400 (CIFAR-100; 50 on ImageNet), eps 0 (the official normalisation, no epsilon),
 * embed_dim 0 (the official d = B / 4).
 */
typedef struct kd_semckd_config {
  /**
   * `w` (`beta`); finite.
   */
  double loss_weight;
  /**
   * The L2 normalisation's epsilon; 0 for none (the official `x / ||x||`).
   */
  double eps;
  /**
   * The embedding width `d`; 0 for the official `floor(B / 4)`.
   */
  int64_t embed_dim;
} kd_semckd_config;

/**
 * SKD, pair-wise similarity distillation (docs/losses.md §9): per image, the features pooled (`pool`),
 * normalised per pixel over the channels, every pixel's cosine similarity to every other pixel of its image
 * (a P x P matrix, never formed); L = loss_weight * mean over N*P*P of (A_S - A_T)^2. The defaults (the
 * official CriterionStructuralKD): loss_weight 1, pool 2.
 */
typedef struct kd_skd_config {
  /**
   * Factor on the mean; finite (CIRKD's scripts use 10).
   */
  double loss_weight;
  /**
   * 2: the official 2x2 max pool, stride 2, ceil_mode; 1: no pooling.
   */
  int64_t pool;
} kd_skd_config;

/**
 * Success.
 */
#define KD_OK 0

/**
 * A required pointer (context, parameters, shape, input) is NULL.
 */
#define KD_ERR_NULL_POINTER 1

/**
 * Wrong rank, shapes that do not match, a zero or negative dimension, a buffer too small.
 */
#define KD_ERR_SHAPE 2

/**
 * A tensor too large for the kernels' launch geometry or index arithmetic.
 */
#define KD_ERR_TOO_LARGE 3

/**
 * A parameter out of its domain (tau not finite and > 0, a non-finite weight or scale, an unknown
 * reduction).
 */
#define KD_ERR_PARAMETER 4

/**
 * The set of outputs given does not make a call (nothing to compute, a teacher gradient without the
 * student's, a teacher gradient a loss does not have).
 */
#define KD_ERR_OUTPUT 5

/**
 * An unknown dtype, or one the call does not take (f64 on the GPU).
 */
#define KD_ERR_DTYPE 6

/**
 * A buffer or stream of another CUDA context than the kd_context's device.
 */
#define KD_ERR_CONTEXT 7

/**
 * A requested way of computing does not apply here.
 */
#define KD_ERR_UNSUPPORTED 8

/**
 * The call would grow its workspace while its stream is being captured into a CUDA graph.
 */
#define KD_ERR_WORKSPACE 9

/**
 * This library was built without nvcc: it has no GPU kernels (the CPU entry points work).
 */
#define KD_ERR_KERNELS_UNAVAILABLE 10

/**
 * No usable CUDA driver or device.
 */
#define KD_ERR_CUDA_UNAVAILABLE 11

/**
 * The CUDA driver returned an error.
 */
#define KD_ERR_CUDA 12

/**
 * A Rust panic was caught at the boundary (a bug: please report it with the message).
 */
#define KD_ERR_PANIC 13

/**
 * An error of a kind this version of the header does not name.
 */
#define KD_ERR_OTHER 14

/**
 * 32-bit float.
 */
#define KD_DTYPE_F32 0

/**
 * IEEE half.
 */
#define KD_DTYPE_F16 1

/**
 * bfloat16.
 */
#define KD_DTYPE_BF16 2

/**
 * 64-bit float: CPU reference only.
 */
#define KD_DTYPE_F64 3

/**
 * D = N (MGD's normaliser, the default).
 */
#define KD_CWT_NORMALIZE_BATCH 0

/**
 * D = N*Ct*H*W.
 */
#define KD_CWT_NORMALIZE_MEAN 1

/**
 * The official code: softmax along H, M = A_max(i,j) - G.
 */
#define KD_ICSD_OFFICIAL 0

/**
 * The paper's prose: softmax over H*W, pairwise KL.
 */
#define KD_ICSD_PAPER 1

/**
 * uint8 (raw PNG label maps, 255 ignored).
 */
#define KD_LABEL_U8 0

/**
 * int32.
 */
#define KD_LABEL_I32 1

/**
 * int64 (PyTorch's long).
 */
#define KD_LABEL_I64 2

/**
 * N*C*H*W (PyTorch KLDivLoss's default, the official one).
 */
#define KD_REDUCTION_MEAN 0

/**
 * N.
 */
#define KD_REDUCTION_BATCHMEAN 1

/**
 * 1.
 */
#define KD_REDUCTION_SUM 2

/**
 * N*H*W.
 */
#define KD_REDUCTION_PIXELMEAN 3

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * The message of the last failed call on this thread (`""` after a successful one); never null, valid
 * until the next call on this thread.
 */
const char *kd_last_error_message(void);

/**
 * 1 when this library carries GPU kernels (it was built with nvcc), else 0.
 */
int32_t kd_kernels_compiled(void);

/**
 * KD_OK when the kernels are compiled and a CUDA driver with a device is present; else the reason.
 */
kd_status kd_cuda_probe(void);

/**
 * CIRKD on the GPU, queued on `stream`: the loss (one f32) where `loss` is non-zero, d loss / d student (in
 * `dtype`, times the device f32 at `upstream` where that is non-zero) where `grad_student` is. Student
 * [B, Cs, H, W], teacher [B, Ct, H, W] (the same B, H, W; the channel counts may differ). No teacher gradient.
 *
 * # Safety
 * The CUDA entry points' contract (the header's preamble), for the two shapes.
 */
kd_status kd_cirkd_cuda(struct kd_context *ctx, const struct kd_cirkd_config *params, const int64_t *student_shape, size_t student_ndim, const int64_t *teacher_shape, size_t teacher_ndim, kd_dtype dtype, uint64_t student, uint64_t teacher, uint64_t loss, uint64_t grad_student, uint64_t upstream, struct kd_grad_options options, void *stream);

/**
 * CIRKD on the CPU reference: the loss into `*loss` (where not null) and the student gradient (in `dtype`)
 * where `grad_student` is not null. Shapes as in `kd_cirkd_cuda`.
 *
 * # Safety
 * The CPU entry points' contract (the header's preamble), for the two shapes; `grad_student` of the
 * student's.
 */
kd_status kd_cirkd_cpu(const struct kd_cirkd_config *params, const int64_t *student_shape, size_t student_ndim, const int64_t *teacher_shape, size_t teacher_ndim, kd_dtype dtype, const void *student, const void *teacher, double *loss, void *grad_student, struct kd_grad_options options);

/**
 * Opens device `device_ordinal` (its primary context, the one the CUDA runtime and PyTorch use) and writes a
 * new context to `*out`.
 *
 * # Safety
 * `out` is null or points to writable storage for one pointer.
 */
kd_status kd_context_create(int32_t device_ordinal, struct kd_context **out);

/**
 * Frees the context and its workspaces (NULL is a no-op). Work queued through it must have finished.
 *
 * # Safety
 * `ctx` is null or a pointer returned by `kd_context_create`, not used again afterwards.
 */
void kd_context_destroy(struct kd_context *ctx);

/**
 * CWD on the GPU, queued on `stream`. The teacher gradient is computed exactly when `grad_teacher` != 0.
 *
 * # Safety
 * The CUDA entry points' contract (the header's preamble), for `shape` (`CwdCuda::launch_raw`'s contract).
 */
kd_status kd_cwd_cuda(struct kd_context *ctx, const struct kd_cwd_config *params, const int64_t *shape, size_t ndim, kd_dtype dtype, uint64_t student, uint64_t teacher, uint64_t loss, uint64_t grad_student, uint64_t grad_teacher, uint64_t upstream, struct kd_grad_options options, void *stream);

/**
 * CWD on the CPU reference: the loss into `*loss` (when not null), the gradients (when not null) in
 * `dtype`; the teacher gradient exactly when `grad_teacher` is not null, which needs `grad_student`.
 *
 * # Safety
 * The CPU entry points' contract (the header's preamble), for `shape`; `grad_teacher` as `grad_student`.
 */
kd_status kd_cwd_cpu(const struct kd_cwd_config *params, const int64_t *shape, size_t ndim, kd_dtype dtype, const void *student, const void *teacher, double *loss, void *grad_student, void *grad_teacher, struct kd_grad_options options);

/**
 * CWT on the GPU, queued on `stream`. Student [N, Cs, H, W] and teacher [N, Ct, H, W] in `dtype`;
 * `weights` points to the device addresses of W1 [Ch, Cs], b1 [Ch], W2 [Ct, Ch], b2 [Ct] (f32). With
 * `grad_student` != 0, `grad_weights` points to the addresses of their four f32 gradients (all five
 * gradients or none). The teacher gets no gradient.
 *
 * # Safety
 * The CUDA entry points' contract (the header's preamble), for the two shapes (features in `dtype`,
 * parameters and their gradients f32).
 */
kd_status kd_cwt_cuda(struct kd_context *ctx, const struct kd_cwt_config *params, const int64_t *student_shape, size_t student_ndim, const int64_t *teacher_shape, size_t teacher_ndim, kd_dtype dtype, uint64_t student, uint64_t teacher, const uint64_t *weights, uint64_t loss, uint64_t grad_student, const uint64_t *grad_weights, uint64_t upstream, struct kd_grad_options options, void *stream);

/**
 * CWT on the CPU reference: `weights` are the four f32 host arrays W1 [Ch, Cs], b1 [Ch], W2 [Ct, Ch],
 * b2 [Ct]; the loss into `*loss` (when not null); with `grad_student` != NULL, the student gradient (in
 * `dtype`) and the four parameter gradients (f64 host arrays, into `grad_weights[0..4]`, all needed).
 *
 * # Safety
 * The CPU entry points' contract (the header's preamble), for the two shapes; `weights` points to the four
 * f32 parameter arrays; with `grad_student`, `grad_weights` points to four writable f64 arrays of the
 * parameters' sizes (initialised, with `options.accumulate`).
 */
kd_status kd_cwt_cpu(const struct kd_cwt_config *params, const int64_t *student_shape, size_t student_ndim, const int64_t *teacher_shape, size_t teacher_ndim, kd_dtype dtype, const void *student, const void *teacher, const float *const *weights, double *loss, void *grad_student, double *const *grad_weights, struct kd_grad_options options);

/**
 * DIST on the GPU, queued on `stream` (no teacher gradient: the teacher is a constant).
 *
 * # Safety
 * The CUDA entry points' contract (the header's preamble), for `shape`.
 */
kd_status kd_dist_cuda(struct kd_context *ctx, const struct kd_dist_config *params, const int64_t *shape, size_t ndim, kd_dtype dtype, uint64_t student, uint64_t teacher, uint64_t loss, uint64_t grad_student, uint64_t upstream, struct kd_grad_options options, void *stream);

/**
 * DIST on the CPU reference: the loss into `*loss` (when not null), the student gradient (when not null)
 * in `dtype`.
 *
 * # Safety
 * The CPU entry points' contract (the header's preamble), for `shape`.
 */
kd_status kd_dist_cpu(const struct kd_dist_config *params, const int64_t *shape, size_t ndim, kd_dtype dtype, const void *student, const void *teacher, double *loss, void *grad_student, struct kd_grad_options options);

/**
 * ICSD on the GPU, queued on `stream` (no teacher gradient); the row-normalised C x C matrices (f32) into
 * `sim_student` and `sim_teacher` where those addresses are non-zero.
 *
 * # Safety
 * The CUDA entry points' contract (the header's preamble), for `shape`.
 */
kd_status kd_icsd_cuda(struct kd_context *ctx, const struct kd_icsd_config *params, const int64_t *shape, size_t ndim, kd_dtype dtype, uint64_t student, uint64_t teacher, uint64_t loss, uint64_t grad_student, uint64_t upstream, uint64_t sim_student, uint64_t sim_teacher, struct kd_grad_options options, void *stream);

/**
 * ICSD on the CPU reference: the loss into `*loss`, the student gradient (in `dtype`), and the
 * row-normalised matrices (C*C f64, row-major) where the pointers are not null.
 *
 * # Safety
 * The CPU entry points' contract (the header's preamble), for `shape`; `sim_student` and `sim_teacher` are
 * null or point to C*C writable f64.
 */
kd_status kd_icsd_cpu(const struct kd_icsd_config *params, const int64_t *shape, size_t ndim, kd_dtype dtype, const void *student, const void *teacher, double *loss, void *grad_student, double *sim_student, double *sim_teacher, struct kd_grad_options options);

/**
 * IFVD on the GPU, queued on `stream`: the loss (one f32) where `loss` is non-zero, d loss / d student (in
 * `dtype`, times the device f32 at `upstream` where that is non-zero) where `grad_student` is. Student
 * [N, Cs, H, W], teacher [N, Ct, H, W], labels [N, Hl, Wl] of `label_dtype` at any resolution (resized by
 * PyTorch's nearest rule).
 *
 * # Safety
 * The CUDA entry points' contract (the header's preamble), for the three shapes.
 */
kd_status kd_ifvd_cuda(struct kd_context *ctx, const struct kd_ifvd_config *params, const int64_t *student_shape, size_t student_ndim, const int64_t *teacher_shape, size_t teacher_ndim, const int64_t *label_shape, size_t label_ndim, kd_dtype dtype, kd_label_dtype label_dtype, uint64_t student, uint64_t teacher, uint64_t labels, uint64_t loss, uint64_t grad_student, uint64_t upstream, struct kd_grad_options options, void *stream);

/**
 * IFVD on the CPU reference: the loss into `*loss` (where not null) and the student gradient (in `dtype`)
 * where `grad_student` is not null.
 *
 * # Safety
 * The CPU entry points' contract (the header's preamble), for the three shapes; `labels` points to the label map in `label_dtype`.
 */
kd_status kd_ifvd_cpu(const struct kd_ifvd_config *params, const int64_t *student_shape, size_t student_ndim, const int64_t *teacher_shape, size_t teacher_ndim, const int64_t *label_shape, size_t label_ndim, kd_dtype dtype, kd_label_dtype label_dtype, const void *student, const void *teacher, const void *labels, double *loss, void *grad_student, struct kd_grad_options options);

/**
 * Pixel KD on the GPU, queued on `stream` (no teacher gradient: the teacher is a constant).
 *
 * # Safety
 * The CUDA entry points' contract (the header's preamble), for `shape`.
 */
kd_status kd_pixel_kd_cuda(struct kd_context *ctx, const struct kd_pixel_kd_config *params, const int64_t *shape, size_t ndim, kd_dtype dtype, uint64_t student, uint64_t teacher, uint64_t loss, uint64_t grad_student, uint64_t upstream, struct kd_grad_options options, void *stream);

/**
 * Pixel KD on the CPU reference: the loss into `*loss` (when not null), the student gradient (when not
 * null) in `dtype`.
 *
 * # Safety
 * The CPU entry points' contract (the header's preamble), for `shape`.
 */
kd_status kd_pixel_kd_cpu(const struct kd_pixel_kd_config *params, const int64_t *shape, size_t ndim, kd_dtype dtype, const void *student, const void *teacher, double *loss, void *grad_student, struct kd_grad_options options);

/**
 * PKD on the GPU, queued on `stream`, every level in the same launches. `student_shapes` and
 * `teacher_shapes`: `num_levels` rank-4 shapes (4 values each, at most 8 levels), equal level by level
 * (resize the student to the teacher's H x W first, as mmrazor does). `student`, `teacher`: one device
 * address per level. The loss is written where `loss` != 0; with `grad_student` != NULL (one address per
 * level) the gradients, times the device f32 at `upstream` where that is != 0.
 *
 * # Safety
 * The CUDA entry points' contract (the header's preamble); the shape lists hold `num_levels * 4` values and the address lists `num_levels`
 * entries (or `grad_student` is null), every address device memory of the context's device holding what its
 * level's shape and `dtype` need.
 */
kd_status kd_pkd_cuda(struct kd_context *ctx, const struct kd_pkd_config *params, size_t num_levels, const int64_t *student_shapes, const int64_t *teacher_shapes, kd_dtype dtype, const uint64_t *student, const uint64_t *teacher, uint64_t loss, const uint64_t *grad_student, uint64_t upstream, struct kd_grad_options options, void *stream);

/**
 * PKD on the CPU reference (host pointers; shapes as in `kd_pkd_cuda`): the loss into `*loss` (when not
 * null) and, with `grad_student` not null (one pointer per level), the gradients in `dtype`.
 *
 * # Safety
 * The shape lists hold `num_levels * 4` values; `student` and `teacher` hold `num_levels` pointers to
 * contiguous NCHW tensors of their level's shape in `dtype`; `loss` is null or writable; `grad_student` is
 * null or holds `num_levels` pointers to writable tensors (initialised, with `options.accumulate`).
 */
kd_status kd_pkd_cpu(const struct kd_pkd_config *params, size_t num_levels, const int64_t *student_shapes, const int64_t *teacher_shapes, kd_dtype dtype, const void *const *student, const void *const *teacher, double *loss, void *const *grad_student, struct kd_grad_options options);

/**
 * SemCKD on the GPU, queued on `stream`. `student_shapes` / `teacher_shapes`: S and T rank-4 shapes (4
 * values each, S and T at most 8). Address lists: `student` S, `teacher` T, `proj` S*T (the regressor
 * outputs [B, Ct_j, h, h], h = min(Hs_i, Ht_j), pair (i, j) at i*T + j), `query` 4*S and `key` 4*T (each
 * MLP's linear1.weight [2d, B], linear1.bias [2d], linear2.weight [d, 2d], linear2.bias [d], f32).
 * `attention` ([B, S, T] f32) where non-zero. With `grad_student` != NULL, the gradient lists (same
 * lengths: the maps' through the Gram/attention path, the regressor outputs', the MLPs' in f32) must all
 * be given.
 *
 * # Safety
 * The CUDA entry points' contract (the header's preamble); the address lists hold S, T, S*T, 4*S and 4*T entries (the gradient lists likewise, or
 * are all null), every address device memory of the context's device sized for its shape.
 */
kd_status kd_semckd_cuda(struct kd_context *ctx, const struct kd_semckd_config *params, size_t num_student, const int64_t *student_shapes, size_t num_teacher, const int64_t *teacher_shapes, kd_dtype dtype, const uint64_t *student, const uint64_t *teacher, const uint64_t *proj, const uint64_t *query, const uint64_t *key, uint64_t loss, uint64_t attention, const uint64_t *grad_student, const uint64_t *grad_proj, const uint64_t *grad_query, const uint64_t *grad_key, uint64_t upstream, struct kd_grad_options options, void *stream);

/**
 * SemCKD on the CPU reference (host pointers; lists as in `kd_semckd_cuda`): the loss, the attention
 * (`[B, S, T]` f64) where not null, and with `grad_student` not null every gradient: the maps' and the
 * regressor outputs' in `dtype`, the MLPs' in f64.
 *
 * # Safety
 * As `kd_semckd_cuda`, with host pointers: every list holds its count of valid pointers (or the gradient
 * lists are all null), each to a contiguous array of its shape.
 */
kd_status kd_semckd_cpu(const struct kd_semckd_config *params, size_t num_student, const int64_t *student_shapes, size_t num_teacher, const int64_t *teacher_shapes, kd_dtype dtype, const void *const *student, const void *const *teacher, const void *const *proj, const float *const *query, const float *const *key, double *loss, double *attention, void *const *grad_student, void *const *grad_proj, double *const *grad_query, double *const *grad_key, struct kd_grad_options options);

/**
 * SKD on the GPU, queued on `stream`: the loss (one f32) where `loss` is non-zero, d loss / d student (in
 * `dtype`, times the device f32 at `upstream` where that is non-zero) where `grad_student` is. Student
 * [N, Cs, H, W], teacher [N, Ct, H, W] (the same N, H, W; the channel counts may differ). No teacher gradient.
 *
 * # Safety
 * The CUDA entry points' contract (the header's preamble), for the two shapes.
 */
kd_status kd_skd_cuda(struct kd_context *ctx, const struct kd_skd_config *params, const int64_t *student_shape, size_t student_ndim, const int64_t *teacher_shape, size_t teacher_ndim, kd_dtype dtype, uint64_t student, uint64_t teacher, uint64_t loss, uint64_t grad_student, uint64_t upstream, struct kd_grad_options options, void *stream);

/**
 * SKD on the CPU reference: the loss into `*loss` (where not null) and the student gradient (in `dtype`)
 * where `grad_student` is not null. Shapes as in `kd_skd_cuda`.
 *
 * # Safety
 * The CPU entry points' contract (the header's preamble), for the two shapes; `grad_student` of the
 * student's.
 */
kd_status kd_skd_cpu(const struct kd_skd_config *params, const int64_t *student_shape, size_t student_ndim, const int64_t *teacher_shape, size_t teacher_ndim, kd_dtype dtype, const void *student, const void *teacher, double *loss, void *grad_student, struct kd_grad_options options);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* KD_KERNELS_H */
