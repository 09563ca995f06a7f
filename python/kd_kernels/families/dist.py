"""DIST, segmentation form (docs/losses.md §8): a (student, teacher) pair of one shape, the student's gradient
only."""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from .. import _checks, _eager, _impl, _lib, _ops
from .._nn import Levels, over_levels
from .._lib import KdInputError

__all__ = ["dist_loss", "DISTLoss"]


class DistParams(ctypes.Structure):
    _c_name_ = "kd_dist_config"
    _fields_ = [("tau", _lib.F64), ("inter_loss_weight", _lib.F64), ("intra_loss_weight", _lib.F64),
                ("loss_weight", _lib.F64)]


dist_kernel = _impl.student_grad_kernel("kd_dist_cpu", "kd_dist_cuda", DistParams)
_OP = _ops.define_student_only(
    "dist",
    "(Tensor student, Tensor teacher, float tau, float inter_loss_weight, float intra_loss_weight,"
    " float loss_weight, bool want_student) -> (Tensor, Tensor)",
    dist_kernel)
OPS = (_OP,)  # the ops this family defines


def dist_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0, inter_loss_weight: float = 1.0,
              intra_loss_weight: float = 1.0, loss_weight: float = 1.0) -> torch.Tensor:
    """DIST, segmentation form (Huang et al., NeurIPS 2022; docs/losses.md §8): per pixel, ``p = softmax`` over
    the C classes of ``x / tau``; with ``rho`` the Pearson correlation (eps 1e-8 added to the product of the
    norms), ``loss_weight * tau^2 * (inter_loss_weight * (1 - mean over the N*H*W pixels of rho(pS, pT)
    across classes) + intra_loss_weight * (1 - mean over the C classes of rho(pS, pT) across all pixels))``.

    With the defaults (all 1) this is DIST_KD's segmentation loss; ``tau`` and ``loss_weight`` act as in
    mmrazor's ``DISTLoss``. ``[N, C]`` classification logits are ``[N, C, 1, 1]``. The teacher is a constant
    (no gradient flows into it). Otherwise as every pair loss
    (:mod:`kd_kernels.functional`)."""
    _checks.pair(student, teacher)
    want = torch.is_grad_enabled() and student.requires_grad
    return _eager.loss(_OP, dist_kernel, (0,), (student, teacher),
                       (float(tau), float(inter_loss_weight), float(intra_loss_weight), float(loss_weight), want),
                       want)


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


# mmrazor's `DISTLoss` arguments, and its forward(logits_S, logits_T); DIST_KD's form on 4-D logits.
MMRAZOR_MODULES = {"KDDISTLoss": DISTLoss}
