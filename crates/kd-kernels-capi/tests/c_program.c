/* Compiled and run by tests/c_abi/ (support.rs) against libkd_kernels: calls the C ABI as a C user would and
 * prints what it got, one "key value..." line each, for the test to compare with the Rust reference. */
#include <stdio.h>
#include <string.h>

#include "kd_kernels.h"

enum { N = 2, C = 3, H = 4, W = 5, NUMEL = N * C * H * W };

/* Exactly representable values, so the Rust side builds the same tensors. */
static float student_value(int i) { return (float)((i * 37) % 101 - 50) / 16.0f; }
static float teacher_value(int i) { return (float)((i * 53) % 89 - 44) / 8.0f; }

static void print_status(const char *what, kd_status status) {
    printf("%s %d %s\n", what, (int)status, kd_last_error_message());
}

/* The relation losses (SKD, CIRKD) on the student [2, 3, 4, 5] and a teacher [2, 2, 4, 5]: the same values in
 * each dtype (all exact in f16 and bf16), the gradient printed exactly (16-bit ones as their bits). */
enum { CT = 2, TEACHER_NUMEL = N * CT * H * W };
static const int64_t relation_shape[4] = {N, C, H, W};
static const int64_t relation_teacher_shape[4] = {N, CT, H, W};

static float relation_teacher_value(int i) { return (float)((i * 29) % 31 - 15) / 8.0f; }

/* f16 bits of x, exact for zero and the normal halves these values are. */
static uint16_t half_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    if ((b & 0x7fffffffu) == 0) return (uint16_t)(b >> 16);
    return (uint16_t)(((b >> 16) & 0x8000u) | ((((b >> 23) & 0xffu) - 127u + 15u) << 10) | ((b >> 13) & 0x3ffu));
}

/* bf16 bits of x, exact for values with at most 8 significant bits. */
static uint16_t bf16_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return (uint16_t)(b >> 16);
}

/* Fills `out` with `count` values of `value(i)` in `dtype`. */
static void fill(void *out, kd_dtype dtype, int count, float (*value)(int)) {
    int i;
    for (i = 0; i < count; i++) {
        float v = value(i);
        if (dtype == KD_DTYPE_F32) ((float *)out)[i] = v;
        if (dtype == KD_DTYPE_F64) ((double *)out)[i] = v;
        if (dtype == KD_DTYPE_F16) ((uint16_t *)out)[i] = half_bits(v);
        if (dtype == KD_DTYPE_BF16) ((uint16_t *)out)[i] = bf16_bits(v);
    }
}

/* One CPU call of SKD (`skd` non-NULL) or CIRKD in `dtype`: "<key> status message", "<key>_loss", "<key>_grad". */
static void relation_case(const char *key, const kd_skd_config *skd, const kd_cirkd_config *cirkd, kd_dtype dtype) {
    static double s[N * C * H * W], t[TEACHER_NUMEL], g[N * C * H * W];
    const kd_grad_options overwrite = {1.0, 0};
    double loss = -1.0;
    int i;
    fill(s, dtype, N * C * H * W, student_value);
    fill(t, dtype, TEACHER_NUMEL, relation_teacher_value);
    print_status(key, skd ? kd_skd_cpu(skd, relation_shape, 4, relation_teacher_shape, 4, dtype, s, t, &loss, g, overwrite)
                           : kd_cirkd_cpu(cirkd, relation_shape, 4, relation_teacher_shape, 4, dtype, s, t, &loss, g,
                                          overwrite));
    printf("%s_loss %.17g\n%s_grad", key, loss, key);
    for (i = 0; i < N * C * H * W; i++) {
        if (dtype == KD_DTYPE_F32) printf(" %.9g", ((float *)g)[i]);
        if (dtype == KD_DTYPE_F64) printf(" %.17g", g[i]);
        if (dtype == KD_DTYPE_F16 || dtype == KD_DTYPE_BF16) printf(" %u", (unsigned)((uint16_t *)g)[i]);
    }
    printf("\n");
}

int main(void) {
    static float student[NUMEL], teacher[NUMEL], grad[NUMEL];
    static double student64[NUMEL], teacher64[NUMEL], grad64[NUMEL];
    const int64_t shape[4] = {N, C, H, W};
    const kd_grad_options overwrite = {1.0, 0};
    const kd_cwd_config cwd = {4.0, 3.0};
    const kd_pixel_kd_config pixel = {1.0, 10.0, KD_REDUCTION_MEAN, 0};
    double loss = -1.0;
    int i;

    for (i = 0; i < NUMEL; i++) {
        student[i] = student_value(i);
        teacher[i] = teacher_value(i);
        student64[i] = student[i];
        teacher64[i] = teacher[i];
    }
    printf("compiled %d\n", (int)kd_kernels_compiled());

    print_status("cwd_cpu", kd_cwd_cpu(&cwd, shape, 4, KD_DTYPE_F32, student, teacher, &loss, grad, NULL, overwrite));
    printf("cwd_loss %.17g\n", loss);
    printf("cwd_grad");
    for (i = 0; i < NUMEL; i++) printf(" %.9g", grad[i]);
    printf("\n");

    /* The same loss in double, and the gradient accumulated twice with a scale: 2 * 0.5 * g. */
    memset(grad64, 0, sizeof grad64);
    {
        const kd_grad_options half_accumulate = {0.5, 1};
        print_status("cwd_cpu_f64_a", kd_cwd_cpu(&cwd, shape, 4, KD_DTYPE_F64, student64, teacher64, &loss, grad64, NULL, half_accumulate));
        print_status("cwd_cpu_f64_b", kd_cwd_cpu(&cwd, shape, 4, KD_DTYPE_F64, student64, teacher64, &loss, grad64, NULL, half_accumulate));
    }
    printf("cwd_loss_f64 %.17g\n", loss);
    printf("cwd_grad_f64");
    for (i = 0; i < NUMEL; i++) printf(" %.17g", grad64[i]);
    printf("\n");

    print_status("pixel_kd_cpu", kd_pixel_kd_cpu(&pixel, shape, 4, KD_DTYPE_F32, student, teacher, &loss, NULL, overwrite));
    printf("pixel_kd_loss %.17g\n", loss);

    {
        const kd_dist_config dist = {2.0, 1.5, 0.5, 3.0};
        print_status("dist_cpu", kd_dist_cpu(&dist, shape, 4, KD_DTYPE_F32, student, teacher, &loss, grad, overwrite));
        printf("dist_loss %.17g\n", loss);
        printf("dist_grad");
        for (i = 0; i < NUMEL; i++) printf(" %.9g", grad[i]);
        printf("\n");
    }

    /* CWT: student [2, 3, 4, 5] -> hidden 4 -> teacher [2, 2, 4, 5]. */
    {
        static float cwt_teacher[N * 2 * H * W], w1[4 * 3], b1[4], w2[2 * 4], b2[2];
        static double gw1[4 * 3], gb1[4], gw2[2 * 4], gb2[2];
        const int64_t teacher_shape[4] = {N, 2, H, W};
        const int64_t wrong_teacher[4] = {N, 2, H, W + 1};
        const kd_cwt_config cwt = {0.5, KD_CWT_NORMALIZE_BATCH, 4};
        const float *const weights[4] = {w1, b1, w2, b2};
        double *const grad_weights[4] = {gw1, gb1, gw2, gb2};
        for (i = 0; i < N * 2 * H * W; i++) cwt_teacher[i] = (float)((i * 29) % 31 - 15) / 8.0f;
        for (i = 0; i < 12; i++) w1[i] = (float)((i * 7) % 13 - 6) / 4.0f;
        for (i = 0; i < 4; i++) b1[i] = (float)(i - 1) / 2.0f;
        for (i = 0; i < 8; i++) w2[i] = (float)((i * 5) % 11 - 5) / 4.0f;
        for (i = 0; i < 2; i++) b2[i] = (float)i / 4.0f;
        print_status("cwt_cpu", kd_cwt_cpu(&cwt, shape, 4, teacher_shape, 4, KD_DTYPE_F32, student, cwt_teacher,
                                           weights, &loss, grad, grad_weights, overwrite));
        printf("cwt_loss %.17g\n", loss);
        printf("cwt_grad_w1");
        for (i = 0; i < 12; i++) printf(" %.17g", gw1[i]);
        printf("\n");
        print_status("bad_cwt_teacher", kd_cwt_cpu(&cwt, shape, 4, wrong_teacher, 4, KD_DTYPE_F32, student,
                                                   cwt_teacher, weights, &loss, grad, grad_weights, overwrite));
    }

    /* ICSD, official variant, with the row-normalised matrices. */
    {
        static double sim_s[C * C], sim_t[C * C];
        const kd_icsd_config icsd = {1.0, 9500.0, KD_ICSD_OFFICIAL};
        print_status("icsd_cpu", kd_icsd_cpu(&icsd, shape, 4, KD_DTYPE_F32, student, teacher, &loss, grad, sim_s,
                                             sim_t, overwrite));
        printf("icsd_loss %.17g\n", loss);
        printf("icsd_sim_student");
        for (i = 0; i < C * C; i++) printf(" %.17g", sim_s[i]);
        printf("\n");
    }

    /* PKD on two levels in one call: the whole tensors, and their first 24 values as a [2, 3, 2, 2] level. */
    {
        static float grad1[24];
        const kd_pkd_config pkd = {6.0};
        const int64_t levels[8] = {N, C, H, W, 2, 3, 2, 2};
        const int64_t resized[8] = {N, C, H, W, 2, 3, 1, 4};
        const void *s[2] = {student, student};
        const void *t[2] = {teacher, teacher};
        void *g[2] = {grad, grad1};
        print_status("pkd_cpu", kd_pkd_cpu(&pkd, 2, levels, levels, KD_DTYPE_F32, s, t, &loss, g, overwrite));
        printf("pkd_loss %.17g\n", loss);
        printf("pkd_grad1");
        for (i = 0; i < 24; i++) printf(" %.9g", grad1[i]);
        printf("\n");
        print_status("bad_pkd_level", kd_pkd_cpu(&pkd, 2, levels, resized, KD_DTYPE_F32, s, t, &loss, g, overwrite));
    }

    /* IFVD with uint8 labels (255 ignored); an unknown label dtype. */
    {
        static uint8_t labels[N * H * W];
        const int64_t label_shape[3] = {N, H, W};
        const kd_ifvd_config ifvd = {3, 20.0};
        for (i = 0; i < N * H * W; i++) labels[i] = (uint8_t)(i % 7 == 0 ? 255 : (i / 3) % 3);
        print_status("ifvd_cpu", kd_ifvd_cpu(&ifvd, shape, 4, shape, 4, label_shape, 3, KD_DTYPE_F32, KD_LABEL_U8,
                                             student, teacher, labels, &loss, grad, overwrite));
        printf("ifvd_loss %.17g\n", loss);
        print_status("bad_label_dtype", kd_ifvd_cpu(&ifvd, shape, 4, shape, 4, label_shape, 3, KD_DTYPE_F32,
                                                    (kd_label_dtype)5, student, teacher, labels, &loss, grad,
                                                    overwrite));
    }

    /* SKD and CIRKD (teacher with 2 channels), every pool mode in f32, every dtype for one of each, bad inputs. */
    {
        static const char *const dtype_names[4] = {"f32", "f16", "bf16", "f64"};
        const kd_skd_config skd_official = {10.0, 2}, skd_unpooled = {1.0, 1}, skd_bad_pool = {1.0, 3};
        const kd_cirkd_config cirkd_auto = {0.1, 1.0, KD_CIRKD_POOL_AUTO}, cirkd_none = {0.5, 2.0, KD_CIRKD_POOL_NONE};
        const kd_cirkd_config cirkd_k3 = {0.5, 1.0, 3}, cirkd_k2 = {1.0, 1.0, 2};
        const kd_cirkd_config cirkd_bad_pool = {0.1, 1.0, -1}, cirkd_bad_tau = {0.0, 1.0, KD_CIRKD_POOL_AUTO};
        const int64_t wrong_h[4] = {N, CT, H - 1, W};
        const int64_t rank3[3] = {N, CT, H};
        char key[32];
        int d;
        relation_case("skd_p1", &skd_unpooled, NULL, KD_DTYPE_F32);
        relation_case("cirkd_auto", NULL, &cirkd_auto, KD_DTYPE_F32);
        relation_case("cirkd_none", NULL, &cirkd_none, KD_DTYPE_F32);
        relation_case("cirkd_k3", NULL, &cirkd_k3, KD_DTYPE_F32);
        for (d = 0; d < 4; d++) {
            snprintf(key, sizeof key, "skd_p2_%s", dtype_names[d]);
            relation_case(key, &skd_official, NULL, (kd_dtype)d);
            snprintf(key, sizeof key, "cirkd_k2_%s", dtype_names[d]);
            relation_case(key, NULL, &cirkd_k2, (kd_dtype)d);
        }
        print_status("bad_skd_pool", kd_skd_cpu(&skd_bad_pool, relation_shape, 4, relation_teacher_shape, 4,
                                                KD_DTYPE_F32, student, teacher, &loss, grad, overwrite));
        print_status("bad_cirkd_pool", kd_cirkd_cpu(&cirkd_bad_pool, relation_shape, 4, relation_teacher_shape, 4,
                                                    KD_DTYPE_F32, student, teacher, &loss, grad, overwrite));
        print_status("bad_cirkd_tau", kd_cirkd_cpu(&cirkd_bad_tau, relation_shape, 4, relation_teacher_shape, 4,
                                                   KD_DTYPE_F32, student, teacher, &loss, grad, overwrite));
        print_status("bad_skd_teacher", kd_skd_cpu(&skd_official, relation_shape, 4, wrong_h, 4, KD_DTYPE_F32, student,
                                                   teacher, &loss, grad, overwrite));
        print_status("bad_cirkd_rank", kd_cirkd_cpu(&cirkd_auto, relation_shape, 4, rank3, 3, KD_DTYPE_F32, student,
                                                    teacher, &loss, grad, overwrite));
        print_status("bad_skd_null", kd_skd_cpu(&skd_official, relation_shape, 4, relation_teacher_shape, 4,
                                                KD_DTYPE_F32, student, NULL, &loss, grad, overwrite));
        print_status("bad_cirkd_params", kd_cirkd_cpu(NULL, relation_shape, 4, relation_teacher_shape, 4,
                                                      KD_DTYPE_F32, student, teacher, &loss, grad, overwrite));
        print_status("skd_cuda_null_ctx", kd_skd_cuda(NULL, &skd_official, relation_shape, 4, relation_teacher_shape, 4,
                                                      KD_DTYPE_F32, 1, 1, 1, 0, 0, overwrite, NULL));
    }

    /* Bad inputs: each must come back as its code and the crate's message. */
    print_status("bad_rank", kd_cwd_cpu(&cwd, shape, 3, KD_DTYPE_F32, student, teacher, &loss, grad, NULL, overwrite));
    {
        const int64_t zero[4] = {N, 0, H, W};
        const int64_t negative[4] = {N, -3, H, W};
        print_status("bad_zero", kd_cwd_cpu(&cwd, zero, 4, KD_DTYPE_F32, student, teacher, &loss, grad, NULL, overwrite));
        print_status("bad_negative", kd_cwd_cpu(&cwd, negative, 4, KD_DTYPE_F32, student, teacher, &loss, grad, NULL, overwrite));
    }
    {
        const kd_cwd_config bad_tau = {0.0, 3.0};
        print_status("bad_tau", kd_cwd_cpu(&bad_tau, shape, 4, KD_DTYPE_F32, student, teacher, &loss, grad, NULL, overwrite));
    }
    print_status("bad_dtype", kd_cwd_cpu(&cwd, shape, 4, (kd_dtype)7, student, teacher, &loss, grad, NULL, overwrite));
    print_status("bad_null", kd_cwd_cpu(&cwd, shape, 4, KD_DTYPE_F32, NULL, teacher, &loss, grad, NULL, overwrite));
    print_status("bad_teacher_only", kd_cwd_cpu(&cwd, shape, 4, KD_DTYPE_F32, student, teacher, &loss, NULL, grad, overwrite));
    print_status("ok_again", kd_pixel_kd_cpu(&pixel, shape, 4, KD_DTYPE_F32, student, teacher, &loss, NULL, overwrite));
    print_status("cuda_null_ctx", kd_cwd_cuda(NULL, &cwd, shape, 4, KD_DTYPE_F32, 1, 1, 1, 0, 0, 0, overwrite, NULL));
    {
        kd_context *ctx = NULL;
        kd_status status = kd_context_create(0, &ctx);
        print_status("context_create", status);
        if (status == KD_OK) {
            print_status("cuda_f64", kd_cwd_cuda(ctx, &cwd, shape, 4, KD_DTYPE_F64, 1, 1, 1, 0, 0, 0, overwrite, NULL));
            {
                const kd_cirkd_config cirkd = {0.1, 1.0, KD_CIRKD_POOL_AUTO};
                print_status("cirkd_cuda_f64", kd_cirkd_cuda(ctx, &cirkd, relation_shape, 4, relation_teacher_shape, 4,
                                                             KD_DTYPE_F64, 1, 1, 1, 0, 0, overwrite, NULL));
            }
        }
        kd_context_destroy(ctx);
    }
    print_status("probe", kd_cuda_probe());
    return 0;
}
