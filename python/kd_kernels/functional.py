"""The losses as functions with autograd, on CUDA tensors (the kernels, on the current stream, no host
synchronisation) and CPU tensors (the crate's f64 reference): each family's public functions (the
``*_loss`` functions of its file in families/, and helpers such as ``alw_alpha``), gathered here from the
families' table.

Each function checks what the C ABI cannot see (_checks.py, and the family's own checks) and calls its custom
op (``torch.ops.kd_kernels.*``, defined with _ops.py), asking for the gradients autograd will need: so the
same call runs under ``torch.compile(fullgraph=True)`` (one node per call, no graph break), under
``torch.autocast`` (the op has no autocast rule: the logits stay in their own dtype, the loss is f32) and in
eager mode, where plain tensors skip the dispatcher's Python layers and call the op's kernel directly
(_eager.py).

The pair losses share a contract: ``student`` and ``teacher`` are NCHW tensors of one dtype (float32, float16,
bfloat16; float64 on the CPU) and device; the loss is a 0-d float32 tensor (float64 for float64 inputs) on
that device; ``backward()`` fills ``student.grad``; non-contiguous inputs are copied to contiguous ones."""

from __future__ import annotations

from .families import exports

# Every name a family exports that is not an nn.Module (those are kd_kernels.modules'), bound here as if
# each family's file had been star-imported from.
_EXPORTS = exports(modules=False)
__all__ = list(_EXPORTS)
globals().update(_EXPORTS)
