// The kernels of ../pixel_kd.cu compiled for the host, with C launchers that run a grid through the
// emulation (see cuda_emulation.h). Built only with the crate's `emulator` feature (tests).
#define KD_EMULATE 1
#include "../pixel_kd.cu"

#define KD_EMU_PIXEL_KD(T, NAME)                                                                              \
    extern "C" void kd_emu_pixel_kd_##NAME(unsigned grid, unsigned resident, unsigned dynamic_smem,          \
                                           const void* student, const void* teacher, float* block_totals,    \
                                           unsigned int* counter, float* loss, void* grad_student,           \
                                           const float* upstream, KdPixelKdParams p) {                       \
        kd_emu::launch(grid, kd::kBlockThreads, resident, dynamic_smem, [&] {                                 \
            pixel_kd_##NAME(static_cast<const T*>(student), static_cast<const T*>(teacher), block_totals,    \
                            counter, loss, static_cast<T*>(grad_student), upstream, p);                       \
        });                                                                                                   \
    }                                                                                                         \
    extern "C" void kd_emu_pixel_kd_tiled_##NAME(unsigned grid, unsigned resident, unsigned dynamic_smem,    \
                                                 const void* student, const void* teacher,                    \
                                                 float* block_totals, unsigned int* counter, float* loss,     \
                                                 void* grad_student, const float* upstream,                   \
                                                 KdPixelKdParams p) {                                         \
        kd_emu::launch(grid, kd::kBlockThreads, resident, dynamic_smem, [&] {                                 \
            pixel_kd_tiled_##NAME(static_cast<const T*>(student), static_cast<const T*>(teacher),            \
                                  block_totals, counter, loss, static_cast<T*>(grad_student), upstream, p);   \
        });                                                                                                   \
    }

KD_FOR_EACH_DTYPE(KD_EMU_PIXEL_KD)
