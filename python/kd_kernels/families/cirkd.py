"""CIRKD, cross-image pixel-relation distillation, mini-batch form (docs/losses.md §10): features whose
channel counts may differ, the student's gradient only."""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from .. import _checks, _eager, _impl, _lib, _ops
from .._lib import KdInputError
from .._nn import PredsForward

__all__ = ["cirkd_loss", "CriterionMiniBatchCrossImagePair"]

# kd_cirkd_config.pool: the official rule, none; K >= 2 is a K x K average pool.
CIRKD_POOL_AUTO, CIRKD_POOL_NONE = 0, 1


class CirkdParams(ctypes.Structure):
    _c_name_ = "kd_cirkd_config"
    _fields_ = [("tau", _lib.F64), ("loss_weight", _lib.F64), ("pool", _lib.I64)]


cirkd_kernel = _impl.student_grad_kernel("kd_cirkd_cpu", "kd_cirkd_cuda", CirkdParams, own_teacher_shape=True)
# `pool` is kd_cirkd_config's code (cirkd_loss translates "auto", "none" and K).
_OP = _ops.define_student_only(
    "cirkd",
    "(Tensor student, Tensor teacher, float tau, float loss_weight, int pool, bool want_student) -> (Tensor, Tensor)",
    cirkd_kernel)
OPS = (_OP,)  # the ops this family defines


def _pool_code(value) -> int:
    """``pool`` ("auto", "none" or a window side K >= 1) as kd_cirkd_config's code."""
    if value == "auto":
        return CIRKD_POOL_AUTO
    if value == "none":
        return CIRKD_POOL_NONE
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KdInputError(
            f"parameter `pool` = {value!r} is invalid: it must be \"auto\" (the official rule: 4x4 from 256x256 up), "
            "\"none\" or a window side K >= 1")
    return value


def cirkd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 0.1, loss_weight: float = 1.0,
               pool="auto") -> torch.Tensor:
    """Cross-image pixel-relation distillation, mini-batch form (Yang et al., CVPR 2022; CIRKD's
    ``CriterionMiniBatchCrossImagePair(temperature)``; docs/losses.md §10): the features pooled, normalised per
    pixel over the channels; for every ordered pair of images ``(i, j)`` of the batch, ``i = j`` included,
    each pixel of image ``i`` gets a softmax over the pixels of image ``j`` of the similarities ``/ tau``, and
    ``loss_weight * sum over pairs of KL(pT || pS) (averaged over the rows) / B^2``.

    ``pool``: ``"auto"`` (the official rule: a 4x4 average pool, ``ceil_mode``, when ``H >= 256`` and
    ``W >= 256``, else none), ``"none"``, or a window side ``K`` (``K x K`` average pool whatever the size).
    ``student`` ``[B, Cs, H, W]`` and ``teacher`` ``[B, Ct, H, W]`` features (the channel counts may differ);
    the teacher is a constant. Defaults: the official ``tau`` (0.1) and no weight. Otherwise as every
    pair loss (:mod:`kd_kernels.functional`)."""
    _checks.tensors(student, teacher)
    code = _pool_code(pool)
    want = torch.is_grad_enabled() and student.requires_grad
    return _eager.loss(_OP, cirkd_kernel, (0,), (student, teacher), (float(tau), float(loss_weight), code, want), want)


class CriterionMiniBatchCrossImagePair(nn.Module):
    """CIRKD's ``CriterionMiniBatchCrossImagePair(temperature)`` (docs/losses.md §10):
    :func:`kd_kernels.cirkd_loss` over the pairs of the local batch, with the official pooling rule
    (``pool="auto"``; ``"none"`` or a window side ``K`` to choose) and a ``loss_weight`` (1 as the official
    module). ``temperature`` defaults to CIRKD's ``--contrast-temperature`` (0.1). ``forward(feat_S, feat_T)``
    takes ``[B, Cs, H, W]`` and ``[B, Ct, H, W]`` features; the teacher is a constant."""

    def __init__(self, temperature: float = 0.1, loss_weight: float = 1.0, pool="auto"):
        super().__init__()
        self.temperature = temperature
        self.loss_weight = loss_weight
        self.pool = pool

    def forward(self, feat_S: torch.Tensor, feat_T: torch.Tensor) -> torch.Tensor:  # noqa: N803 (CIRKD's names)
        return cirkd_loss(feat_S, feat_T, self.temperature, self.loss_weight, self.pool)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, loss_weight={self.loss_weight}, pool={self.pool!r}"


class KDMiniBatchCrossImagePair(PredsForward, CriterionMiniBatchCrossImagePair):
    """:class:`kd_kernels.CriterionMiniBatchCrossImagePair` with mmrazor's ``forward(preds_S, preds_T)`` names."""


MMRAZOR_MODULES = {"KDMiniBatchCrossImagePair": KDMiniBatchCrossImagePair}
