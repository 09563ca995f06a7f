// The x86-64 fiber switch of fibers.h (System V ABI). Compiled once, with the emulator (feature `emulator`).
#include "fibers.h"

#ifdef KD_EMU_FIBERS_X86_64

// void kd_emu_fiber_switch(void** save_sp, void* load_sp): saves the callee-saved registers on the current
// stack and its stack pointer in *save_sp, then resumes the context whose stack pointer is load_sp.
// kd_emu_fiber_start: where a new fiber first resumes (see fiber_init): calls r12(r13), which never returns.
asm(R"(
    .text
    .globl kd_emu_fiber_switch
    .type kd_emu_fiber_switch, @function
kd_emu_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size kd_emu_fiber_switch, .-kd_emu_fiber_switch

    .globl kd_emu_fiber_start
    .type kd_emu_fiber_start, @function
kd_emu_fiber_start:
    movq %r13, %rdi
    callq *%r12
    ud2
    .size kd_emu_fiber_start, .-kd_emu_fiber_start
)");

#endif
