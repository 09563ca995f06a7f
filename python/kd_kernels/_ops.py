"""The frame of the losses' ``torch.library`` custom ops (``torch.ops.kd_kernels.*``): what ``torch.compile``
traces as one node per loss call, with no graph break. Each family defines its op(s) in its own file
(families/) with :func:`define`, or :func:`define_saved_grads` / :func:`define_student_only` for the common
autograd formula.

Each op has one kernel for the CPU (the crate's f64 reference) and CUDA (the fused kernels, on the current
stream), a fake kernel that only states shapes and dtypes, and an autograd formula. The op computes the
loss and the gradients it is asked for in one pass (the logits are read once, as the crate's kernels are
built to); its autograd formula multiplies the saved gradients by the upstream gradient. That backward is
two or three elementwise aten ops, which a compiled backward keeps in its graph (inductor fuses the multiply
into the gradient's consumer); it never calls the C ABI, so there is nothing in it to break a graph. A
second backward pass (``create_graph=True``) is not provided: the gradient outputs are constants to
autograd (marked non-differentiable), as ``once_differentiable`` made them before.

The ``want_*`` arguments say which gradients to compute; the public functions pass
``torch.is_grad_enabled() and x.requires_grad``, which ``torch.compile`` evaluates while tracing."""

from __future__ import annotations

import torch

from . import _impl

__all__ = ["define", "define_saved_grads", "define_student_only", "scaled", "loss_like", "grad_like"]


def _filled(kernel, like):
    """The op kernel of ``kernel``: an empty tensor (like input ``like[k]``) for each gradient not computed."""
    def filled(*args):
        loss, *grads = kernel(*args)
        return (loss, *[args[i].new_empty(0) if g is None else g for i, g in zip(like, grads)])
    return filled


def define(name, schema, kernel, fake, setup_context, backward, like=None):
    """The op ``kd_kernels::name``, returned as ``torch.ops.kd_kernels.<name>.default``, with ``kernel`` for
    the CPU and CUDA devices (it calls the C ABI's entry point of its inputs' device); ``like``: the input
    each gradient output stands for, where ``kernel`` returns None for a gradient not asked for."""
    if like is not None:
        kernel = _filled(kernel, like)
    op = torch.library.custom_op(f"kd_kernels::{name}", kernel, mutates_args=(), device_types="cpu", schema=schema)
    op.register_kernel("cuda")(kernel)
    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)
    return getattr(torch.ops.kd_kernels, name).default


def scaled(grad, grad_loss, needed):
    # On the device, without reading grad_loss on the host (usually 1, or an AMP scale), in the gradient's
    # dtype as the crate's own `upstream` scaling does.
    return grad * grad_loss.to(grad.dtype) if needed else None


def loss_like(x):
    return x.new_empty((), dtype=_impl.loss_dtype(x.dtype))


def grad_like(x, want):
    return x.new_empty(x.shape) if want else x.new_empty(0)


def _save_grads(ctx, inputs, output):
    grads = output[1:]
    ctx.mark_non_differentiable(*grads)
    ctx.save_for_backward(*grads)


def define_saved_grads(name, schema, kernel, fake, slots):
    """An op returning ``(loss, *gradients)``, the k-th the gradient of input ``slots[k]``: its backward is
    each saved gradient times the upstream gradient (None for every other input)."""
    def backward(ctx, grad_loss, *_grad_grads):
        need = ctx.needs_input_grad  # one per input of the op
        out = [None] * len(need)
        for slot, g in zip(slots, ctx.saved_tensors):
            out[slot] = scaled(g, grad_loss, need[slot])
        return tuple(out)

    return define(name, schema, kernel, fake, _save_grads, backward, like=slots)


def _student_only_fake(student, *args):
    # The op's last argument is ``want_student``.
    return loss_like(student), grad_like(student, args[-1])


def define_student_only(name, schema, kernel):
    """An op ``(student, teacher, ..., want_student) -> (loss, grad_student)``: only the student has a
    gradient; the teacher (and any other input) is a constant."""
    return define_saved_grads(name, schema, kernel, _student_only_fake, slots=(0,))
