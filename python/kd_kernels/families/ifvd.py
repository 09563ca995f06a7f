"""IFVD, intra-class feature variation distillation (docs/losses.md §11): features whose channel counts may
differ and integer labels, the student's gradient only."""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from .. import _checks, _eager, _impl, _lib, _ops
from .._lib import KdInputError

__all__ = ["ifvd_loss", "CriterionIFV"]


class IfvdParams(ctypes.Structure):
    _c_name_ = "kd_ifvd_config"
    _fields_ = [("num_classes", _lib.I64), ("loss_weight", _lib.F64)]


# [ctx,] config, three (shape, ndim), dtype, label dtype, student, teacher, labels, loss, grad_student,
# [upstream,] options[, stream]
_SHAPES = [_lib.I64P, _lib.SIZE_T] * 3 + [_lib.I32, _lib.I32]
_CPU = _lib.declare("kd_ifvd_cpu", [ctypes.POINTER(IfvdParams), *_SHAPES] + [_lib.VP] * 5 + [_lib.GradOptions])
_CUDA = _lib.declare("kd_ifvd_cuda", [_lib.VP, ctypes.POINTER(IfvdParams), *_SHAPES] + [_lib.U64] * 6
                     + [_lib.GradOptions, _lib.VP])


def ifvd_kernel(student, teacher, labels, num_classes, loss_weight, want_student):
    student, teacher, labels = student.contiguous(), teacher.contiguous(), labels.contiguous()
    gs = _impl.grad(student, want_student)
    head = (*_impl.shape_head(student, teacher, labels), _impl.DTYPE_CODES[student.dtype],
            _impl.LABEL_CODES[labels.dtype])
    loss = _impl.call(_CPU, _CUDA, student, IfvdParams(num_classes, loss_weight), head,
                      (student.data_ptr(), teacher.data_ptr(), labels.data_ptr()), (_impl.ptr(gs),))
    return loss, gs


# Features of two channel counts and integer labels.
_OP = _ops.define_student_only(
    "ifvd",
    "(Tensor student, Tensor teacher, Tensor labels, int num_classes, float loss_weight, bool want_student)"
    " -> (Tensor, Tensor)",
    ifvd_kernel)
OPS = (_OP,)  # the ops this family defines


def _check_labels(student, value) -> None:
    """The labels: an integer tensor on the features' device (its shape is the crate's to check)."""
    if not isinstance(value, torch.Tensor):
        raise KdInputError(f"labels: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _impl.LABEL_CODES:
        raise KdInputError(
            f"labels: dtype {value.dtype} is not supported; labels are integers: use torch.long, torch.int32 or "
            "torch.uint8 (class indices, not one-hot or float maps)"
        )
    if value.device != student.device:
        raise KdInputError(f"labels: on {value.device} while the student is on {student.device}; put both on one device")


def _check_num_classes(value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KdInputError(
            f"parameter `num_classes` = {value!r} is invalid: it must be an integer between 1 and 2^24 "
            "(the dataset's class count)"
        )


def ifvd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, num_classes: int,
              loss_weight: float = 1.0) -> torch.Tensor:
    """Intra-class feature variation distillation (Wang et al., ECCV 2020; CIRKD's ``CriterionIFV``;
    docs/losses.md §11): per image and class a prototype (the mean feature of the pixels labelled k), each
    pixel's cosine with its class's prototype (with its own feature where its label is not in
    ``[0, num_classes)``: 255 or -1, "ignore"), for the student and the teacher;
    ``loss_weight * mean over N*H*W of (cos_S - cos_T)^2``.

    ``student`` ``[N, Cs, H, W]`` and ``teacher`` ``[N, Ct, H, W]`` features (one dtype and device; the
    channel counts may differ), ``labels`` ``[N, Hl, Wl]`` integers (long, int32 or uint8) at any resolution,
    resized by PyTorch's ``nearest`` rule. The gradient reaches the student directly and through its
    prototypes; the teacher and the labels are constants. The official module has no weight (CIRKD's scripts
    multiply by 20)."""
    _checks.tensors(student, teacher)
    _check_labels(student, labels)
    _check_num_classes(num_classes)
    want = torch.is_grad_enabled() and student.requires_grad
    return _eager.loss(_OP, ifvd_kernel, (0,), (student, teacher, labels), (int(num_classes), float(loss_weight), want),
                       want)


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
