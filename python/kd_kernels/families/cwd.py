"""CWD, channel-wise distillation (docs/losses.md §1): the one pair loss whose teacher may have a gradient."""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from .. import _checks, _eager, _impl, _lib, _ops
from .._nn import Levels, over_levels

__all__ = ["cwd_loss", "ChannelWiseDivergence"]


class CwdParams(ctypes.Structure):
    _c_name_ = "kd_cwd_config"
    _fields_ = [("tau", _lib.F64), ("loss_weight", _lib.F64)]


# The student-only pair's prototypes with one more output, the teacher's gradient (before `upstream`).
_CPU_ARGS, _CUDA_ARGS = _impl.pair_argtypes(CwdParams, outputs=1)
_CPU = _lib.declare("kd_cwd_cpu", _CPU_ARGS)
_CUDA = _lib.declare("kd_cwd_cuda", _CUDA_ARGS)


def cwd_kernel(student, teacher, tau, loss_weight, want_student, want_teacher):
    student, teacher = student.contiguous(), teacher.contiguous()
    # The crate computes the teacher's gradient with the student's.
    gs, gt = _impl.grad(student, want_student or want_teacher), _impl.grad(teacher, want_teacher)
    loss = _impl.call(_CPU, _CUDA, student, CwdParams(tau, loss_weight),
                      (*_impl.shape_head(student), _impl.DTYPE_CODES[student.dtype]),
                      (student.data_ptr(), teacher.data_ptr()), (_impl.ptr(gs), _impl.ptr(gt)))
    return loss, gs, gt


def _fake(student, teacher, tau, loss_weight, want_student, want_teacher):
    return (_ops.loss_like(student), _ops.grad_like(student, want_student or want_teacher),
            _ops.grad_like(teacher, want_teacher))


_OP = _ops.define_saved_grads(
    "cwd",
    "(Tensor student, Tensor teacher, float tau, float loss_weight, bool want_student, bool want_teacher)"
    " -> (Tensor, Tensor, Tensor)",
    cwd_kernel, _fake, slots=(0, 1))
OPS = (_OP,)  # the ops this family defines


def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 4.0, loss_weight: float = 3.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021; docs/losses.md §1): per (n, c), a softmax over the
    H*W positions of ``x / tau``; ``loss_weight * tau^2 / (N*C) * sum KL(pT || pS)``.

    ``student`` and ``teacher`` are NCHW logits of one shape, dtype (float32, float16, bfloat16; float64 on
    the CPU) and device. Returns a 0-d float32 tensor (float64 for float64 inputs) on that device;
    ``backward()`` fills ``student.grad``, and ``teacher.grad`` when the teacher requires grad. Defaults:
    the paper's (tau 4, weight 3). Non-contiguous inputs are copied to contiguous ones."""
    _checks.pair(student, teacher)
    grad = torch.is_grad_enabled()
    want_s, want_t = grad and student.requires_grad, grad and teacher.requires_grad
    return _eager.loss(_OP, cwd_kernel, (0, 1), (student, teacher), (float(tau), float(loss_weight), want_s, want_t),
                       want_s or want_t)


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


# kd_kernels.mmrazor registers these under these names; MMRAZOR_REPLACES, with register(replace_mmrazor=True),
# under mmrazor's own (the module's arguments and results are mmrazor's loss of that name).
MMRAZOR_MODULES = {"KDChannelWiseDivergence": ChannelWiseDivergence}
MMRAZOR_REPLACES = {"ChannelWiseDivergence": ChannelWiseDivergence}
