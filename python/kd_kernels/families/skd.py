"""SKD, pair-wise similarity distillation (docs/losses.md §9): features whose channel counts may differ, the
student's gradient only."""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from .. import _checks, _eager, _impl, _lib, _ops
from .._lib import KdInputError
from .._nn import PredsForward

__all__ = ["skd_loss", "CriterionStructuralKD"]


class SkdParams(ctypes.Structure):
    _c_name_ = "kd_skd_config"
    _fields_ = [("loss_weight", _lib.F64), ("pool", _lib.I64)]


skd_kernel = _impl.student_grad_kernel("kd_skd_cpu", "kd_skd_cuda", SkdParams, own_teacher_shape=True)
# `pool` is kd_skd_config's code.
_OP = _ops.define_student_only(
    "skd",
    "(Tensor student, Tensor teacher, float loss_weight, int pool, bool want_student) -> (Tensor, Tensor)",
    skd_kernel)
OPS = (_OP,)  # the ops this family defines


def _pool_code(value) -> int:
    """``pool`` as kd_skd_config's code: the window side (the crate checks that it is 2 or 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise KdInputError(
            f"parameter `pool` = {value!r} is invalid: it must be 2 (the official 2x2 max pool) or 1 (no pooling)")
    return value


def skd_loss(student: torch.Tensor, teacher: torch.Tensor, loss_weight: float = 1.0, pool: int = 2) -> torch.Tensor:
    """Pair-wise similarity distillation (Liu et al., CVPR 2019, "Structured Knowledge Distillation"; CIRKD's
    ``CriterionStructuralKD``; docs/losses.md §9): per image, the features max pooled 2x2 (stride 2,
    ``ceil_mode``; ``pool=1``: not pooled), normalised per pixel over the channels, and every pixel's cosine
    similarity to every other pixel of its image (``P x P``, never formed); ``loss_weight * mean over N*P*P of
    (A_S - A_T)^2``.

    ``student`` ``[N, Cs, H, W]`` and ``teacher`` ``[N, Ct, H, W]`` features (one dtype and device; the channel
    counts may differ). The teacher is a constant (no gradient flows into it). The official module has no
    weight (CIRKD's scripts multiply by 10). Otherwise as every pair loss
    (:mod:`kd_kernels.functional`)."""
    _checks.tensors(student, teacher)
    code = _pool_code(pool)
    want = torch.is_grad_enabled() and student.requires_grad
    return _eager.loss(_OP, skd_kernel, (0,), (student, teacher), (float(loss_weight), code, want), want)


class CriterionStructuralKD(nn.Module):
    """CIRKD's ``CriterionStructuralKD()`` (SKD, docs/losses.md §9): :func:`kd_kernels.skd_loss` with the
    official 2x2 max pool (``pool=1``: none) and a ``loss_weight`` (1 as the official module; CIRKD's scripts
    multiply the loss by 10). ``forward(feat_S, feat_T)`` takes ``[N, Cs, H, W]`` and ``[N, Ct, H, W]``
    features; the teacher is a constant."""

    def __init__(self, loss_weight: float = 1.0, pool: int = 2):
        super().__init__()
        self.loss_weight = loss_weight
        self.pool = pool

    def forward(self, feat_S: torch.Tensor, feat_T: torch.Tensor) -> torch.Tensor:  # noqa: N803 (CIRKD's names)
        return skd_loss(feat_S, feat_T, self.loss_weight, self.pool)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, pool={self.pool}"


class KDStructuralKD(PredsForward, CriterionStructuralKD):
    """:class:`kd_kernels.CriterionStructuralKD` with mmrazor's ``forward(preds_S, preds_T)`` names."""


MMRAZOR_MODULES = {"KDStructuralKD": KDStructuralKD}
