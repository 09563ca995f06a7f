// The kernels of ../cwd.cu compiled for the host, with C launchers that run a grid through the emulation
// (see cuda_emulation.h). Built only with the crate's `emulator` feature (tests), never into the library.
// `resident` is how many blocks run at once; the single-pass kernel needs every block of its grid resident.
#define KD_EMULATE 1
#include "../cwd.cu"

#define KD_EMU_CWD(T, NAME)                                                                                   \
    extern "C" void kd_emu_cwd_fused_##NAME(unsigned grid, unsigned resident, const void* student,           \
                                            const void* teacher, double* partials, float* row_kl,             \
                                            unsigned int* counter, unsigned int* row_sync, float* loss,       \
                                            void* grad_student, void* grad_teacher, const float* upstream,    \
                                            KdCwdParams p) {                                                  \
        kd_emu::launch(grid, kd::kBlockThreads, resident, 0, [&] {                                            \
            cwd_fused_##NAME(static_cast<const T*>(student), static_cast<const T*>(teacher), partials, row_kl, \
                             counter, row_sync, loss, static_cast<T*>(grad_student),                          \
                             static_cast<T*>(grad_teacher), upstream, p);                                     \
        });                                                                                                   \
    }                                                                                                         \
    extern "C" void kd_emu_cwd_stats_##NAME(unsigned grid, unsigned resident, const void* student,           \
                                            const void* teacher, double* partials, KdCwdParams p) {           \
        kd_emu::launch(grid, kd::kBlockThreads, resident, 0, [&] {                                            \
            cwd_stats_##NAME(static_cast<const T*>(student), static_cast<const T*>(teacher), partials, p);   \
        });                                                                                                   \
    }                                                                                                         \
    extern "C" void kd_emu_cwd_finish_##NAME(unsigned grid, unsigned resident, const void* student,          \
                                             const void* teacher, const double* partials, float* row_kl,      \
                                             unsigned int* counter, float* loss, void* grad_student,          \
                                             void* grad_teacher, const float* upstream, KdCwdParams p) {      \
        kd_emu::launch(grid, kd::kBlockThreads, resident, 0, [&] {                                            \
            cwd_finish_##NAME(static_cast<const T*>(student), static_cast<const T*>(teacher), partials,      \
                              row_kl, counter, loss, static_cast<T*>(grad_student),                           \
                              static_cast<T*>(grad_teacher), upstream, p);                                    \
        });                                                                                                   \
    }

KD_FOR_EACH_DTYPE(KD_EMU_CWD)
