/*
 * What every kernel's parameter block shares, declared once in plain C; each family's own blocks are in its
 * header beside its kernel file (kernels/{family}.h, included by kernels/{family}.cu), under the same rules.
 *
 * The kernels take these structs by value; build.rs runs bindgen on every header to generate the Rust
 * #[repr(C)] twins (committed as src/ffi/params_bindings.rs), so the two sides cannot drift: a field added here
 * without the Rust side following fails the build. Keep these headers plain C (no templates, no CUDA
 * qualifiers) so bindgen and nvcc read them the same way, and order fields from widest to narrowest so the
 * layout has no padding that could differ between compilers.
 */
#ifndef KD_KERNELS_PARAMS_H
#define KD_KERNELS_PARAMS_H

#include <stdint.h>

/* Threads per block of every kernel. */
#define KD_BLOCK_THREADS 256

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
 * therefore written once, in the family's header, and bindgen gives Rust the same layout.
 */

#endif /* KD_KERNELS_PARAMS_H */
