/*
 * Fibers for the host emulation: the 256 threads of an emulated block run as user-level contexts on one OS
 * thread, switching only where a CUDA thread would wait for others (a barrier, a warp shuffle).
 *
 * Why: 256 OS threads per block meeting at a barrier cost the kernel a futex wake and a context switch
 * each, hundreds of microseconds per __syncthreads on a 2-core CI machine; a fiber switch costs a few
 * nanoseconds. Blocks that run at once (a cooperative launch) are separate OS threads, so blocks waiting for
 * each other across the grid behave as on a GPU.
 *
 * On x86-64 a switch saves the callee-saved registers and swaps stacks (fibers.cpp); elsewhere, or with
 * KD_EMU_UCONTEXT defined, it is ucontext's swapcontext (portable, slower: a system call per switch).
 */
#ifndef KD_KERNELS_FIBERS_H
#define KD_KERNELS_FIBERS_H

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) && !defined(KD_EMU_UCONTEXT)
#define KD_EMU_FIBERS_X86_64 1
#else
#include <ucontext.h>
#endif

namespace kd_emu {

#ifdef KD_EMU_FIBERS_X86_64

extern "C" void kd_emu_fiber_switch(void** save_sp, void* load_sp);  // fibers.cpp
extern "C" void kd_emu_fiber_start();                                 // fibers.cpp: calls r12(r13)

// A suspended fiber: its stack pointer, below the callee-saved registers and the address to resume at.
struct FiberContext {
    void* sp = nullptr;
};

// Prepares `c` to run fn(arg) on the stack [stack, stack + size) when first switched to.
inline void fiber_init(FiberContext& c, unsigned char* stack, size_t size, void (*fn)(void*), void* arg) {
    // kd_emu_fiber_switch pops r15, r14, r13, r12, rbx, rbp, then returns into kd_emu_fiber_start with the
    // stack 16-byte aligned, as the x86-64 ABI wants before its `call`.
    const uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15};
    void** sp = reinterpret_cast<void**>(top - 16 - 7 * sizeof(void*));
    sp[0] = nullptr;                                         // r15
    sp[1] = nullptr;                                         // r14
    sp[2] = arg;                                             // r13
    sp[3] = reinterpret_cast<void*>(fn);                     // r12
    sp[4] = nullptr;                                         // rbx
    sp[5] = nullptr;                                         // rbp
    sp[6] = reinterpret_cast<void*>(&kd_emu_fiber_start);  // return address
    c.sp = sp;
}

inline void fiber_switch(FiberContext& from, FiberContext& to) { kd_emu_fiber_switch(&from.sp, to.sp); }

#else

struct FiberContext {
    ucontext_t uc;
    void (*fn)(void*) = nullptr;
    void* arg = nullptr;
};

// makecontext passes int arguments only: the context's address travels as two halves.
inline void fiber_entry(unsigned hi, unsigned lo) {
    FiberContext* c = reinterpret_cast<FiberContext*>((static_cast<uintptr_t>(hi) << 32) | lo);
    c->fn(c->arg);
}

inline void fiber_init(FiberContext& c, unsigned char* stack, size_t size, void (*fn)(void*), void* arg) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    c.fn = fn;
    c.arg = arg;
    const uintptr_t self = reinterpret_cast<uintptr_t>(&c);
    makecontext(&c.uc, reinterpret_cast<void (*)()>(&fiber_entry), 2, static_cast<unsigned>(self >> 32),
                static_cast<unsigned>(self & 0xffffffffu));
}

inline void fiber_switch(FiberContext& from, FiberContext& to) { swapcontext(&from.uc, &to.uc); }

#endif

}  // namespace kd_emu

#endif  // KD_KERNELS_FIBERS_H
