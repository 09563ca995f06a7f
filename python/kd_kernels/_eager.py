"""The eager fast path: plain tensors, no compiler, no mode, call the op's kernel directly.

Through the dispatcher a custom op runs several Python layers before its kernel (the autograd wrapper, the
redispatch, ``torch._dynamo.disable`` around the kernel, the output checks): about 70 us of host time per
call on this project's 2-core CI machine, many times the C ABI call itself. Where nothing can observe the
difference, the public functions skip them: the same kernel function (_impl.py), and for autograd a plain
``autograd.Function`` whose backward is the op's formula (the saved gradients times the upstream gradient).

Anything that traces or intercepts goes through ``torch.ops.kd_kernels.*`` instead: ``torch.compile`` and
``torch.export`` (``torch.compiler.is_compiling()``, which dynamo evaluates as True while tracing, so the
compiled graph always holds the op), any ``TorchDispatchMode`` (FakeTensorMode, make_fx, FlopCounterMode)
or ``TorchFunctionMode`` (``with torch.device(...)``), functorch transforms, and tensor subclasses."""

from __future__ import annotations

import torch

__all__ = ["plain", "Fused", "loss"]

_is_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_functorch = torch._C._are_functorch_transforms_active
_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter


def plain(tensors) -> bool:
    """Whether the kernels may be called directly for these tensors (see the module's docs)."""
    if _is_compiling():
        return False
    if _dispatch_modes() or _function_modes() or _functorch():
        return False
    for t in tensors:
        if type(t) is not _Tensor and type(t) is not _Parameter:
            return False
    return True


class Fused(torch.autograd.Function):
    """``kernel(*tensors, *params)`` returns the loss and the gradients it computed with it (None where not
    asked), the k-th for ``tensors[slots[k]]``. Backward multiplies them by the upstream gradient, as the ops'
    registered autograd does. The parameters travel as one tuple: ``apply`` costs per argument."""

    @staticmethod
    def forward(ctx, kernel, params, slots, *tensors):
        loss, *grads = kernel(*tensors, *params)
        ctx.slots, ctx.grads = slots, grads
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        need = ctx.needs_input_grad
        out = [None] * len(need)
        for slot, grad in zip(ctx.slots, ctx.grads):
            if grad is not None and need[3 + slot]:
                out[3 + slot] = grad * grad_loss.to(grad.dtype)
        return tuple(out)


def loss(op, kernel, slots, tensors, params, want):
    """The loss of ``op(*tensors, *params)``: through the op, or its ``kernel`` directly where :func:`plain`
    allows (``slots``: the input each gradient the kernel returns is for; ``want``: whether any is asked for)."""
    if plain(tensors):
        return Fused.apply(kernel, params, slots, *tensors) if want else kernel(*tensors, *params)[0]
    return op(*tensors, *params)[0]
