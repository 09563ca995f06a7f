"""``nn.Module`` wrappers, named and parametrised like mmrazor's losses so a config can swap them in
(kd_kernels.mmrazor registers them into mmrazor's ``MODELS``).

The pair losses also take a tuple (or list) of levels for ``preds_S`` and ``preds_T``, as detection configs
pass FPN outputs: one call returns the sum of the per-level losses, which is what mmrazor computes from one
loss entry per level (its distiller sums every loss it returns), and what mmrazor's ``PKDLoss`` does with
a tuple. Each level is one op call (the C ABI takes one shape per call)."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from ._lib import KdInputError
from .functional import cirkd_loss, cwd_loss, cwt_loss, dist_loss, ifvd_loss, pixel_kd_loss, pkd_loss, skd_loss

__all__ = [
    "ChannelWiseDivergence", "KLDivergence", "PixelKD", "ChannelWiseTransformation", "PKDLoss", "CriterionIFV", "DISTLoss",
    "CriterionStructuralKD", "CriterionMiniBatchCrossImagePair",
]

Levels = Union[torch.Tensor, Sequence[torch.Tensor]]


def over_levels(loss, preds_S, preds_T, **kwargs) -> torch.Tensor:  # noqa: N803 (mmrazor's names)
    """``loss`` of a pair of tensors, or the sum over a tuple/list of levels (one pair per level)."""
    if isinstance(preds_S, torch.Tensor) or isinstance(preds_T, torch.Tensor):
        return loss(preds_S, preds_T, **kwargs)
    if not isinstance(preds_S, (tuple, list)) or not isinstance(preds_T, (tuple, list)):
        raise KdInputError(
            f"preds_S/preds_T: expected tensors or tuples of levels, got {type(preds_S).__name__} and "
            f"{type(preds_T).__name__}")
    if len(preds_S) != len(preds_T) or len(preds_S) == 0:
        raise KdInputError(
            f"preds_S/preds_T: {len(preds_S)} student and {len(preds_T)} teacher levels; give one pair per level")
    total = loss(preds_S[0], preds_T[0], **kwargs)
    for s, t in zip(preds_S[1:], preds_T[1:]):
        total = total + loss(s, t, **kwargs)
    return total


class ChannelWiseDivergence(nn.Module):
    """mmrazor's ``ChannelWiseDivergence(tau=1.0, loss_weight=1.0)``: :func:`kd_kernels.cwd_loss` with
    mmrazor's defaults (the paper's setting is tau 4, loss_weight 3). ``forward(preds_S, preds_T)`` takes
    two NCHW tensors or two tuples of levels (the sum of the per-level losses)."""

    def __init__(self, tau: float = 1.0, loss_weight: float = 1.0):
        super().__init__()
        self.tau = tau
        self.loss_weight = loss_weight

    def forward(self, preds_S: Levels, preds_T: Levels) -> torch.Tensor:  # noqa: N803 (mmrazor's names)
        return over_levels(cwd_loss, preds_S, preds_T, tau=self.tau, loss_weight=self.loss_weight)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, loss_weight={self.loss_weight}"


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


class DISTLoss(nn.Module):
    """mmrazor's ``DISTLoss(inter_loss_weight=1.0, intra_loss_weight=1.0, tau=1.0, loss_weight=1.0)``:
    :func:`kd_kernels.dist_loss`, DIST_KD's segmentation form. ``forward(logits_S, logits_T)`` takes
    ``[N, C]`` classification logits (then it is mmrazor's loss exactly), ``[N, C, H, W]`` segmentation logits
    (every pixel a sample, as DIST_KD flattens them: mmrazor's module fed 4-D logits as they are correlates
    over the batch per (class, pixel) instead, another loss), or tuples of levels (the sum). The teacher is
    always detached (mmrazor's ``teacher_detach=True``; ``False`` is refused: there is no teacher gradient)."""

    def __init__(self, inter_loss_weight: float = 1.0, intra_loss_weight: float = 1.0, tau: float = 1.0,
                 loss_weight: float = 1.0, teacher_detach: bool = True):
        super().__init__()
        if not teacher_detach:
            raise KdInputError("teacher_detach=False: kd_kernels' DIST has no teacher gradient; keep the teacher "
                               "detached")
        self.inter_loss_weight = inter_loss_weight
        self.intra_loss_weight = intra_loss_weight
        self.tau = tau
        self.loss_weight = loss_weight

    def _loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.dim() == 2 and teacher.dim() == 2:
            student, teacher = student[:, :, None, None], teacher[:, :, None, None]
        return dist_loss(student, teacher.detach(), tau=self.tau, inter_loss_weight=self.inter_loss_weight,
                         intra_loss_weight=self.intra_loss_weight, loss_weight=self.loss_weight)

    def forward(self, logits_S: Levels, logits_T: Levels) -> torch.Tensor:  # noqa: N803 (mmrazor's names)
        return over_levels(self._loss, logits_S, logits_T)

    def extra_repr(self) -> str:
        return (f"inter_loss_weight={self.inter_loss_weight}, intra_loss_weight={self.intra_loss_weight}, "
                f"tau={self.tau}, loss_weight={self.loss_weight}")


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


class PKDLoss(nn.Module):
    """mmrazor's ``PKDLoss(loss_weight=1.0, resize_stu=True)`` (:func:`kd_kernels.pkd_loss`): ``forward`` takes
    one student and one teacher map, or tuples of levels. A level whose height differs is resized bilinearly
    first, in PyTorch, as mmrazor does (the student to the teacher's size, or with ``resize_stu=False`` the
    teacher to the student's); then every level goes to the kernels in one call."""

    def __init__(self, loss_weight: float = 1.0, resize_stu: bool = True):
        super().__init__()
        self.loss_weight = loss_weight
        self.resize_stu = resize_stu

    def forward(self, preds_S: Levels, preds_T: Levels) -> torch.Tensor:  # noqa: N803 (mmrazor's names)
        if isinstance(preds_S, torch.Tensor) and isinstance(preds_T, torch.Tensor):
            preds_S, preds_T = (preds_S,), (preds_T,)  # noqa: N806
        if not isinstance(preds_S, (tuple, list)) or not isinstance(preds_T, (tuple, list)):
            raise KdInputError(
                f"preds_S/preds_T: expected tensors or tuples of levels, got {type(preds_S).__name__} and "
                f"{type(preds_T).__name__}")
        if len(preds_S) != len(preds_T):
            raise KdInputError(
                f"preds_S/preds_T: {len(preds_S)} student and {len(preds_T)} teacher levels; give one pair per level")
        student, teacher = [], []
        for s, t in zip(preds_S, preds_T):
            # mmrazor compares the heights only (a width that differs alone then fails its shape assert; here,
            # the crate's error, which says to resize).
            four_d = isinstance(s, torch.Tensor) and isinstance(t, torch.Tensor) and s.dim() == 4 and t.dim() == 4
            if four_d and s.shape[2] != t.shape[2]:
                if self.resize_stu:
                    s = nn.functional.interpolate(s, t.shape[2:], mode="bilinear")
                else:
                    t = nn.functional.interpolate(t, s.shape[2:], mode="bilinear")
            student.append(s)
            teacher.append(t)
        return pkd_loss(student, teacher, loss_weight=self.loss_weight)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, resize_stu={self.resize_stu}"
class CriterionIFV(nn.Module):
    """CIRKD's ``CriterionIFV(classes)`` (IFVD, docs/losses.md §11): :func:`kd_kernels.ifvd_loss` with
    ``num_classes`` classes and a ``loss_weight`` (1 as the official module; CIRKD's scripts multiply the
    loss by 20). ``forward(feat_S, feat_T, target)`` takes ``[N, Cs, H, W]`` and ``[N, Ct, H, W]`` features and
    ``[N, Hl, Wl]`` integer labels (255 or -1: ignored)."""

    def __init__(self, num_classes: int, loss_weight: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.loss_weight = loss_weight

    def forward(self, feat_S: torch.Tensor, feat_T: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return ifvd_loss(feat_S, feat_T, target, self.num_classes, self.loss_weight)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, loss_weight={self.loss_weight}"


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
