"""kd_kernels: fused CUDA kernels, with a CPU reference, for knowledge-distillation losses of dense
prediction, with autograd.

    import kd_kernels
    loss = kd_kernels.cwd_loss(student_logits, teacher_logits, tau=4.0, loss_weight=3.0)
    loss.backward()

CUDA tensors run the kernels on ``torch.cuda.current_stream()`` without synchronising with the host; CPU
tensors run the crate's f64 reference. Bad input raises :class:`KdKernelsError` (:class:`KdInputError`, a
``ValueError``, for shapes, dtypes, devices, parameters) with the crate's message.

Every loss is a ``torch.library`` custom op (``torch.ops.kd_kernels.*``), so ``torch.compile(fullgraph=True)``
traces each call as one node; ``import kd_kernels.mmrazor`` registers the modules into mmrazor's ``MODELS``.
Each family's functions and modules are in its own file (kd_kernels/families/), exported here through
kd_kernels.functional and kd_kernels.modules. docs/pytorch.md has the details (autocast, CUDA graphs, DDP,
host cost).
"""

from . import functional, modules
from ._lib import (
    CudaUnavailableError,
    KdInputError,
    KdKernelsError,
    KernelsUnavailableError,
    kernels_compiled,
)
from .functional import *  # noqa: F401,F403 (every family's functions: functional.__all__)
from .modules import *  # noqa: F401,F403 (every family's modules: modules.__all__)

__version__ = "0.1.0"

__all__ = [
    *functional.__all__,
    *modules.__all__,
    "KdKernelsError",
    "KdInputError",
    "KernelsUnavailableError",
    "CudaUnavailableError",
    "kernels_compiled",
]
