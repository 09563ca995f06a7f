/* Compiled and run by capi/tests/c_abi.rs against libkd_kernels: calls the C ABI as a C user would and
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

int main(void) {
    static float student[NUMEL], teacher[NUMEL], grad[NUMEL];
    static double student64[NUMEL], teacher64[NUMEL], grad64[NUMEL];
    const int64_t shape[4] = {N, C, H, W};
    const kd_grad_options overwrite = {1.0, 0};
    const kd_cwd_params cwd = {4.0, 3.0};
    const kd_pixel_kd_params pixel = {1.0, 10.0, KD_REDUCTION_MEAN, 0};
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

    /* Bad inputs: each must come back as its code and the crate's message. */
    print_status("bad_rank", kd_cwd_cpu(&cwd, shape, 3, KD_DTYPE_F32, student, teacher, &loss, grad, NULL, overwrite));
    {
        const int64_t zero[4] = {N, 0, H, W};
        const int64_t negative[4] = {N, -3, H, W};
        print_status("bad_zero", kd_cwd_cpu(&cwd, zero, 4, KD_DTYPE_F32, student, teacher, &loss, grad, NULL, overwrite));
        print_status("bad_negative", kd_cwd_cpu(&cwd, negative, 4, KD_DTYPE_F32, student, teacher, &loss, grad, NULL, overwrite));
    }
    {
        const kd_cwd_params bad_tau = {0.0, 3.0};
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
        }
        kd_context_destroy(ctx);
    }
    print_status("probe", kd_cuda_probe());
    return 0;
}
