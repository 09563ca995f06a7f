"""``nn.Module`` wrappers, named and parametrised like mmrazor's losses so a config can swap them in."""

from __future__ import annotations

import torch
from torch import nn

from ._lib import KdInputError
from .functional import cwd_loss, pixel_kd_loss

__all__ = ["ChannelWiseDivergence", "KLDivergence", "PixelKD"]


class ChannelWiseDivergence(nn.Module):
    """mmrazor's ``ChannelWiseDivergence(tau=1.0, loss_weight=1.0)``: :func:`kd_kernels.cwd_loss` with
    mmrazor's defaults (the paper's setting is tau 4, loss_weight 3). ``forward(preds_S, preds_T)``."""

    def __init__(self, tau: float = 1.0, loss_weight: float = 1.0):
        super().__init__()
        self.tau = tau
        self.loss_weight = loss_weight

    def forward(self, preds_S: torch.Tensor, preds_T: torch.Tensor) -> torch.Tensor:  # noqa: N803 (mmrazor's names)
        return cwd_loss(preds_S, preds_T, tau=self.tau, loss_weight=self.loss_weight)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, loss_weight={self.loss_weight}"


class KLDivergence(nn.Module):
    """mmrazor's ``KLDivergence(tau=1.0, reduction='batchmean', teacher_detach=True, loss_weight=1.0)`` on
    NCHW logits: the KL over the channel dimension, times ``tau^2`` and ``loss_weight``, which is
    :func:`kd_kernels.pixel_kd_loss` with ``scale_tau2=True``. ``reduction`` is ``batchmean``, ``sum`` or
    ``mean`` (``none`` is not supported); the teacher is always detached (``teacher_detach=False`` raises)."""

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

    def forward(self, preds_S: torch.Tensor, preds_T: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return pixel_kd_loss(preds_S, preds_T, tau=self.tau, loss_weight=self.loss_weight,
                             reduction=self.reduction, scale_tau2=True)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}, loss_weight={self.loss_weight}"


class PixelKD(nn.Module):
    """:func:`kd_kernels.pixel_kd_loss` as a module, with the crate's (the official code's) defaults:
    tau 1, loss_weight 10, ``mean``, no ``tau^2``."""

    def __init__(self, tau: float = 1.0, loss_weight: float = 10.0, reduction: str = "mean",
                 scale_tau2: bool = False):
        super().__init__()
        self.tau = tau
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.scale_tau2 = scale_tau2

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return pixel_kd_loss(student, teacher, tau=self.tau, loss_weight=self.loss_weight,
                             reduction=self.reduction, scale_tau2=self.scale_tau2)

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, loss_weight={self.loss_weight}, reduction={self.reduction!r}, "
                f"scale_tau2={self.scale_tau2}")
