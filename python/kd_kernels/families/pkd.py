"""PKD (docs/losses.md §7): a list of (student, teacher) levels in one call, the student's gradients only."""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from .. import _checks, _impl, _lib, _ops
from .._nn import Levels
from .._lib import KdInputError

__all__ = ["pkd_loss", "PKDLoss"]


class PkdParams(ctypes.Structure):
    _c_name_ = "kd_pkd_config"
    _fields_ = [("loss_weight", _lib.F64)]


# [ctx,] config, levels, student shapes, teacher shapes, dtype, student[], teacher[], loss, grad_student[],
# [upstream,] options[, stream]
_HEAD = [_lib.SIZE_T, _lib.I64P, _lib.I64P, _lib.I32]
_CPU = _lib.declare("kd_pkd_cpu", [ctypes.POINTER(PkdParams), *_HEAD, _lib.VPP, _lib.VPP, _lib.VP, _lib.VPP,
                                   _lib.GradOptions])
_CUDA = _lib.declare("kd_pkd_cuda", [_lib.VP, ctypes.POINTER(PkdParams), *_HEAD, _lib.U64P, _lib.U64P, _lib.U64,
                                     _lib.U64P, _lib.U64, _lib.GradOptions, _lib.VP])


def pkd_kernel(student, teacher, loss_weight, want_student):
    """PKD's loss over a list of levels (every level in one call) and, with ``want_student``, each level's
    gradient in its dtype. Student and teacher levels have one shape each (resized before, in PKDLoss)."""
    student = _impl.contiguous(*student)
    teacher = _impl.contiguous(*teacher)
    cuda = student[0].is_cuda
    head = (len(student), _lib.shape_array([v for x in student for v in x.shape]),
            _lib.shape_array([v for x in teacher for v in x.shape]), _impl.DTYPE_CODES[student[0].dtype])
    grads = [torch.empty_like(x) for x in student] if want_student else None
    loss = _impl.call(_CPU, _CUDA, student[0], PkdParams(loss_weight), head,
                      (_impl.addresses(student, cuda), _impl.addresses(teacher, cuda)), (_impl.addresses(grads, cuda),))
    return loss, grads if want_student else []


def _fake(student, teacher, loss_weight, want_student):
    grads = [x.new_empty(x.shape) for x in student] if want_student else []
    return _ops.loss_like(student[0]), grads


def _setup(ctx, inputs, output):
    student, teacher = inputs[:2]
    _, grads = output
    ctx.mark_non_differentiable(*grads)
    ctx.save_for_backward(*grads)
    ctx.counts = (len(student), len(teacher))


def _backward(ctx, grad_loss, _grad_grads):
    s_n, t_n = ctx.counts
    grads = ctx.saved_tensors
    # None per level when no gradient was asked for (only the teacher requires grad), as the inputs are lists.
    student = [g * grad_loss.to(g.dtype) for g in grads] if grads else [None] * s_n
    return student, [None] * t_n, None, None


# A list of levels, the teacher a constant.
_OP = _ops.define(
    "pkd",
    "(Tensor[] student, Tensor[] teacher, float loss_weight, bool want_student) -> (Tensor, Tensor[])",
    pkd_kernel, _fake, _setup, _backward)
OPS = (_OP,)  # the ops this family defines


def _check_levels(student, teacher) -> None:
    """As many levels on each side, at least one, one dtype and one device for all of them (the C ABI takes
    one dtype per call). The shapes are the crate's to check (it says to resize a mismatched level)."""
    if len(student) != len(teacher) or len(student) == 0:
        raise KdInputError(
            f"preds_S/preds_T: {len(student)} student and {len(teacher)} teacher levels; give one pair per level")
    for level, (s, t) in enumerate(zip(student, teacher)):
        _checks.tensors(s, t)
        first = student[0]
        if s.dtype != first.dtype or s.device != first.device:
            raise KdInputError(
                f"student level {level}: {_checks.dtype_name(s.dtype)} on {s.device} while level 0 is "
                f"{_checks.dtype_name(first.dtype)} on {first.device}; give every level one dtype and device")


def pkd_loss(student, teacher, loss_weight: float = 1.0) -> torch.Tensor:
    """PKD (Cao et al., NeurIPS 2022; docs/losses.md §7), mmrazor's ``PKDLoss`` on levels of equal shapes:
    per level and channel, student and teacher standardised over the whole batch (unbiased std, plus 1e-6),
    ``loss_weight * sum_l 0.5 * mse(S_hat_l, T_hat_l)``. ``student`` and ``teacher``: one tensor, or a
    tuple/list of levels ``[N, C_l, H_l, W_l]`` (every level in one call, on CUDA in the same kernel
    launches); a level whose shapes differ is an error that says to resize (:class:`kd_kernels.PKDLoss` resizes
    the student first, as mmrazor does). The teacher is a constant (no gradient)."""
    if isinstance(student, torch.Tensor) and isinstance(teacher, torch.Tensor):
        student, teacher = [student], [teacher]
    elif not isinstance(student, (tuple, list)) or not isinstance(teacher, (tuple, list)):
        raise KdInputError(
            f"preds_S/preds_T: expected tensors or tuples of levels, got {type(student).__name__} and "
            f"{type(teacher).__name__}")
    _check_levels(student, teacher)
    want = torch.is_grad_enabled() and any(x.requires_grad for x in student)
    loss, _ = _OP(list(student), list(teacher), float(loss_weight), want)
    return loss


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


MMRAZOR_MODULES = {"KDPKDLoss": PKDLoss}
MMRAZOR_REPLACES = {"PKDLoss": PKDLoss}
