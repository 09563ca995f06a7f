"""``nn.Module`` wrappers, named and parametrised like mmrazor's losses so a config can swap them in."""

from __future__ import annotations

import torch
from torch import nn

from ._lib import KdInputError
from .functional import cwd_loss, cwt_loss, pixel_kd_loss

__all__ = ["ChannelWiseDivergence", "KLDivergence", "PixelKD", "ChannelWiseTransformation"]


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


class _Mlp(nn.Module):
    def __init__(self, cs: int, ch: int, ct: int):
        super().__init__()
        self.linear1 = nn.Conv2d(cs, ch, kernel_size=1)
        self.linear2 = nn.Conv2d(ch, ct, kernel_size=1)


class ChannelWiseTransformation(nn.Module):
    """CWT's learnable transformation and loss (:func:`kd_kernels.cwt_loss`): owns the MLP (two 1x1
    convolutions ``mlp.linear1`` ``Cs -> Ch`` and ``mlp.linear2`` ``Ch -> Ct``, PyTorch's default
    initialisation) and returns the loss of ``forward(student, teacher)``. ``hidden_channels`` defaults to
    ``teacher_channels``; ``loss_weight`` 2e-5 and ``normalize='batch'`` are the crate's defaults."""

    def __init__(self, student_channels: int, teacher_channels: int, hidden_channels: int | None = None,
                 loss_weight: float = 2e-5, normalize: str = "batch"):
        super().__init__()
        hidden = teacher_channels if hidden_channels is None else hidden_channels
        self.mlp = _Mlp(student_channels, hidden, teacher_channels)
        self.loss_weight = loss_weight
        self.normalize = normalize

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        m = self.mlp
        return cwt_loss(student, teacher, m.linear1.weight, m.linear1.bias, m.linear2.weight, m.linear2.bias,
                        loss_weight=self.loss_weight, normalize=self.normalize)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, normalize={self.normalize!r}"
