"""ICSD, inter-class similarity distillation, and AICSD, its objective with pixel KD (docs/losses.md §3): a
(student, teacher) pair of one shape, the student's gradient only."""

from __future__ import annotations

import ctypes
import math

import torch

from .. import _checks, _eager, _impl, _lib, _ops
from .._lib import KdInputError
from .pixel_kd import pixel_kd_loss

__all__ = ["icsd_loss", "aicsd_loss", "alw_alpha"]

ICSD_VARIANTS = {"official": 0, "paper": 1}
# The crate's `IcsdVariant::parse` message.
_BAD_VARIANT = "parameter `variant` = {value} is invalid: it must be `official` or `paper`"


class IcsdParams(ctypes.Structure):
    _c_name_ = "kd_icsd_config"
    _fields_ = [("tau", _lib.F64), ("loss_weight", _lib.F64), ("variant", _lib.I32)]


def _config(tau, loss_weight, variant):
    return IcsdParams(tau, loss_weight, ICSD_VARIANTS[variant])


# Two more outputs: the similarity matrices (sim_student, sim_teacher), not an op output.
icsd_kernel = _impl.student_grad_kernel("kd_icsd_cpu", "kd_icsd_cuda", IcsdParams, _config, outputs=2)
_OP = _ops.define_student_only(
    "icsd",
    "(Tensor student, Tensor teacher, float tau, float loss_weight, str variant, bool want_student)"
    " -> (Tensor, Tensor)",
    icsd_kernel)
OPS = (_OP,)  # the ops this family defines


def icsd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0, loss_weight: float = 9500.0,
              variant: str = "official") -> torch.Tensor:
    """Inter-class similarity distillation ``L_ICS`` (Mansourian et al. 2023; docs/losses.md §3): per class a
    softmax of the logits (``official``: along H, per column, as the official code; ``paper``: over H*W), a
    C x C similarity matrix per network, rows L2-normalised, ``loss_weight / (C^2 B) * sum (Mh_S - Mh_T)^2``.
    Defaults: the official code's (tau 1, ``lo_lambda`` 9500). The teacher is a constant. Otherwise as every
    pair loss (:mod:`kd_kernels.functional`)."""
    _checks.one_of(variant, ICSD_VARIANTS, _BAD_VARIANT)
    _checks.pair(student, teacher)
    want = torch.is_grad_enabled() and student.requires_grad
    return _eager.loss(_OP, icsd_kernel, (0,), (student, teacher), (float(tau), float(loss_weight), variant, want),
                       want)


def alw_alpha(epoch: float, total_epochs: float = 120.0) -> float:
    """AICSD's adaptive loss weighting ``alpha = clamp(epoch / total_epochs, 0, 1)`` (docs/losses.md §3.10)."""
    if not (math.isfinite(total_epochs) and total_epochs > 0):
        raise KdInputError(f"parameter `total_epochs` = {total_epochs} is invalid: it must be finite and > 0")
    if not math.isfinite(epoch):
        raise KdInputError(f"parameter `epoch` = {epoch} is invalid: it must be finite")
    return min(max(epoch / total_epochs, 0.0), 1.0)


def aicsd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    epoch: float,
    tau: float = 1.0,
    ics_weight: float = 9500.0,
    kd_weight: float = 10.0,
    variant: str = "official",
    total_epochs: float = 120.0,
) -> torch.Tensor:
    """AICSD without the task loss: ``alpha * L_ICS + (1 - alpha) * L_KD`` with ``alpha = alw_alpha(epoch,
    total_epochs)`` (docs/losses.md §3.10; officially ``alpha * (L_CE + L_ICS) + (1 - alpha) * L_KD``, so
    weigh your cross-entropy by :func:`alw_alpha` too). ``L_KD`` is :func:`pixel_kd_loss` with ``kd_weight``
    and the official ``mean`` reduction, at the same ``tau``."""
    alpha = alw_alpha(epoch, total_epochs)
    ics = icsd_loss(student, teacher, tau, ics_weight, variant)
    kd = pixel_kd_loss(student, teacher, tau, kd_weight, "mean", False)
    return alpha * ics + (1.0 - alpha) * kd
