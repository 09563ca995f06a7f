"""Pixel-wise KD (docs/losses.md §2): a (student, teacher) pair of one shape, the student's gradient only."""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from .. import _checks, _eager, _impl, _lib, _ops
from .._nn import Levels, PredsForward, over_levels
from .._lib import KdInputError

__all__ = ["pixel_kd_loss", "KLDivergence", "PixelKD"]

REDUCTIONS = {"mean": 0, "batchmean": 1, "sum": 2, "pixelmean": 3}
# The crate's `Reduction::from_str` message.
_BAD_REDUCTION = "parameter `reduction` = {value!r} is invalid: it must be one of mean, batchmean, sum, pixelmean"


class PixelKdParams(ctypes.Structure):
    _c_name_ = "kd_pixel_kd_config"
    _fields_ = [("tau", _lib.F64), ("loss_weight", _lib.F64), ("reduction", _lib.I32), ("scale_tau2", _lib.I32)]


def _config(tau, loss_weight, reduction, scale_tau2):
    return PixelKdParams(tau, loss_weight, REDUCTIONS[reduction], 1 if scale_tau2 else 0)


pixel_kd_kernel = _impl.student_grad_kernel("kd_pixel_kd_cpu", "kd_pixel_kd_cuda", PixelKdParams, _config)
_OP = _ops.define_student_only(
    "pixel_kd",
    "(Tensor student, Tensor teacher, float tau, float loss_weight, str reduction, bool scale_tau2,"
    " bool want_student) -> (Tensor, Tensor)",
    pixel_kd_kernel)
OPS = (_OP,)  # the ops this family defines


def pixel_kd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0, loss_weight: float = 10.0,
                  reduction: str = "mean", scale_tau2: bool = False) -> torch.Tensor:
    """Pixel-wise KD (docs/losses.md §2): per pixel, a softmax over the C channels of ``x / tau``;
    ``loss_weight * [tau^2] / divisor * sum KL(pT || pS)`` with divisor N*C*H*W (``mean``), N
    (``batchmean``), 1 (``sum``) or N*H*W (``pixelmean``), and tau^2 when ``scale_tau2``.

    Defaults: the official TorchDistiller ``CriterionKD`` / AICSD ``pi_loss`` (tau 1, weight 10, ``mean``).
    The teacher is a constant (no gradient flows into it, as in every official config). Otherwise as every
    pair loss (:mod:`kd_kernels.functional`)."""
    _checks.one_of(reduction, REDUCTIONS, _BAD_REDUCTION)
    _checks.pair(student, teacher)
    want = torch.is_grad_enabled() and student.requires_grad
    return _eager.loss(_OP, pixel_kd_kernel, (0,), (student, teacher),
                       (float(tau), float(loss_weight), reduction, bool(scale_tau2), want), want)


class KLDivergence(nn.Module):
    """mmrazor's ``KLDivergence(tau=1.0, reduction='batchmean', teacher_detach=True, loss_weight=1.0)`` on
    NCHW logits: the KL over the channel dimension, times ``tau^2`` and ``loss_weight``, which is
    :func:`kd_kernels.pixel_kd_loss` with ``scale_tau2=True``. ``reduction`` is ``batchmean``, ``sum`` or
    ``mean`` (``none`` is not supported); the teacher is always detached (``teacher_detach=False`` raises).
    Tuples of levels as :class:`ChannelWiseDivergence`."""

    def __init__(self, tau: float = 1.0, reduction: str = "batchmean", teacher_detach: bool = True,
                 loss_weight: float = 1.0):
        super().__init__()
        if reduction not in ("batchmean", "sum", "mean"):
            raise KdInputError(
                f"parameter `reduction` = {reduction!r} is invalid: it must be one of batchmean, sum, mean "
                "(kd_kernels returns a scalar loss)"
            )
        if not teacher_detach:
            raise KdInputError(
                "teacher_detach=False: kd_kernels' pixel KD has no teacher gradient; keep the teacher detached"
            )
        self.tau = tau
        self.reduction = reduction
        self.teacher_detach = teacher_detach
        self.loss_weight = loss_weight

    def forward(self, preds_S: Levels, preds_T: Levels) -> torch.Tensor:  # noqa: N803
        return over_levels(pixel_kd_loss, preds_S, preds_T, tau=self.tau, loss_weight=self.loss_weight,
                           reduction=self.reduction, scale_tau2=True)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"


class PixelKD(nn.Module):
    """:func:`kd_kernels.pixel_kd_loss` as a module, with the crate's (the official code's) defaults:
    tau 1, loss_weight 10, ``mean``, no ``tau^2``. Tuples of levels as :class:`ChannelWiseDivergence`."""

    def __init__(self, tau: float = 1.0, loss_weight: float = 10.0, reduction: str = "mean",
                 scale_tau2: bool = False):
        super().__init__()
        self.tau = tau
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.scale_tau2 = scale_tau2

    def forward(self, student: Levels, teacher: Levels) -> torch.Tensor:
        return over_levels(pixel_kd_loss, student, teacher, tau=self.tau, loss_weight=self.loss_weight,
                           reduction=self.reduction, scale_tau2=self.scale_tau2)

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, loss_weight={self.loss_weight}, reduction={self.reduction!r}, "
                f"scale_tau2={self.scale_tau2}")


class KDPixelKD(PredsForward, PixelKD):
    """:class:`kd_kernels.PixelKD` with mmrazor's ``forward(preds_S, preds_T)`` argument names."""


MMRAZOR_MODULES = {"KDKLDivergence": KLDivergence, "KDPixelKD": KDPixelKD}
MMRAZOR_REPLACES = {"KLDivergence": KLDivergence}
