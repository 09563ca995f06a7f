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
docs/pytorch.md has the details (autocast, CUDA graphs, DDP, host cost).
"""

from ._lib import (
    CudaUnavailableError,
    KdInputError,
    KdKernelsError,
    KernelsUnavailableError,
    kernels_compiled,
)
from .functional import (
    aicsd_loss,
    alw_alpha,
    cirkd_loss,
    cwd_loss,
    cwt_loss,
    dist_loss,
    icsd_loss,
    ifvd_loss,
    pixel_kd_loss,
    pkd_loss,
    semckd_loss,
    skd_loss,
)
from .modules import (
    ChannelWiseDivergence,
    ChannelWiseTransformation,
    CriterionIFV,
    CriterionMiniBatchCrossImagePair,
    CriterionStructuralKD,
    DISTLoss,
    KLDivergence,
    PixelKD,
    PKDLoss,
)

__version__ = "0.1.0"

__all__ = [
    "cwd_loss",
    "pixel_kd_loss",
    "cwt_loss",
    "icsd_loss",
    "aicsd_loss",
    "alw_alpha",
    "semckd_loss",
    "pkd_loss",
    "ifvd_loss",
    "dist_loss",
    "skd_loss",
    "cirkd_loss",
    "CriterionIFV",
    "CriterionStructuralKD",
    "CriterionMiniBatchCrossImagePair",
    "ChannelWiseTransformation",
    "ChannelWiseDivergence",
    "KLDivergence",
    "PixelKD",
    "PKDLoss",
    "DISTLoss",
    "KdKernelsError",
    "KdInputError",
    "KernelsUnavailableError",
    "CudaUnavailableError",
    "kernels_compiled",
]
