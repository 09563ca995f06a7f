"""CWT, channel-wise transformation (docs/losses.md §5): the student's features through a learnable MLP
against the teacher's; gradients for the student and the MLP's four parameters."""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from .. import _checks, _eager, _impl, _lib, _ops
from .._lib import KdInputError
from .._nn import PredsForward

__all__ = ["cwt_loss", "ChannelWiseTransformation"]

CWT_NORMALIZE = {"batch": 0, "mean": 1}
_BAD_NORMALIZE = "parameter `normalize` = {value!r} is invalid: it must be one of batch, mean"
_PARAM_NAMES = ("mlp.linear1.weight", "mlp.linear1.bias", "mlp.linear2.weight", "mlp.linear2.bias")


class CwtParams(ctypes.Structure):
    _c_name_ = "kd_cwt_config"
    _fields_ = [("loss_weight", _lib.F64), ("normalize", _lib.I32), ("hidden_channels", _lib.I64)]


# [ctx,] config, student shape, ndim, teacher shape, ndim, dtype, student, teacher, mlp[4], loss, grad_student,
# grad_mlp[4], [upstream,] options[, stream]
_HEAD = [_lib.I64P, _lib.SIZE_T, _lib.I64P, _lib.SIZE_T, _lib.I32]
_CPU = _lib.declare("kd_cwt_cpu", [ctypes.POINTER(CwtParams), *_HEAD, _lib.VP, _lib.VP, _lib.VPP, _lib.VP, _lib.VP,
                                   _lib.VPP, _lib.GradOptions])
_CUDA = _lib.declare("kd_cwt_cuda", [_lib.VP, ctypes.POINTER(CwtParams), *_HEAD, _lib.U64, _lib.U64, _lib.U64P,
                                     _lib.U64, _lib.U64, _lib.U64P, _lib.U64, _lib.GradOptions, _lib.VP])


def _mlp32(weights):
    """The four MLP tensors as contiguous f32 [out, in] / [out] (a 1x1 convolution's [out, in, 1, 1] weight
    is read as [out, in]); their shapes were checked by the caller."""
    out = []
    for w in weights:
        if w.dim() == 4:
            w = w.reshape(w.shape[0], w.shape[1])
        out.append(w.to(torch.float32).contiguous())
    return out


def cwt_kernel(student, teacher, w1, b1, w2, b2, loss_weight, normalize, want_grads):
    student, teacher = student.contiguous(), teacher.contiguous()
    weights = (w1, b1, w2, b2)
    mlp = _mlp32(weights)
    config = CwtParams(loss_weight, CWT_NORMALIZE[normalize], mlp[0].shape[0])
    cuda = student.is_cuda
    gs = _impl.grad(student, want_grads)
    # The MLP's gradients in f32 from the kernels, f64 from the CPU reference.
    grad_dtype = torch.float32 if cuda else torch.float64
    grad_w = [torch.empty(m.shape, dtype=grad_dtype, device=student.device) for m in mlp] if want_grads else None
    head = (*_impl.shape_head(student, teacher), _impl.DTYPE_CODES[student.dtype])
    loss = _impl.call(_CPU, _CUDA, student, config, head,
                      (student.data_ptr(), teacher.data_ptr(), _impl.addresses(mlp, cuda)),
                      (_impl.ptr(gs), _impl.addresses(grad_w, cuda)))
    if gs is None:
        return (loss, None, None, None, None, None)
    # Back to each parameter's own shape and dtype ([out, in, 1, 1] for a convolution's weight).
    return (loss, gs, *[g.reshape(w.shape).to(w.dtype) for g, w in zip(grad_w, weights)])


def _fake(student, teacher, w1, b1, w2, b2, loss_weight, normalize, want_grads):
    return (_ops.loss_like(student), _ops.grad_like(student, want_grads),
            *[_ops.grad_like(w, want_grads) for w in (w1, b1, w2, b2)])


# The student and the four MLP parameters have gradients; the teacher is a constant.
_OP = _ops.define_saved_grads(
    "cwt",
    "(Tensor student, Tensor teacher, Tensor w1, Tensor b1, Tensor w2, Tensor b2, float loss_weight,"
    " str normalize, bool want_grads) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    cwt_kernel, _fake, slots=(0, 2, 3, 4, 5))
OPS = (_OP,)  # the ops this family defines


def _check_params(student, teacher, weights) -> None:
    """The four MLP parameters against the channel counts (a 1x1 convolution's [out, in, 1, 1] weight reads as
    [out, in])."""
    cs = student.shape[1] if student.dim() == 4 else 0
    ct = teacher.shape[1] if teacher.dim() == 4 else 0
    w1 = weights[0]
    ch = w1.shape[0] if isinstance(w1, torch.Tensor) and w1.dim() >= 1 else 0
    expected = ([ch, cs], [ch], [ct, ch], [ct])
    for name, tensor, want in zip(_PARAM_NAMES, weights, expected):
        if not isinstance(tensor, torch.Tensor):
            raise KdInputError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device != student.device:
            raise KdInputError(
                f"{name}: on {tensor.device} while the student is on {student.device}; put both on one device")
        if not tensor.is_floating_point():
            raise KdInputError(f"{name}: dtype {tensor.dtype} is not supported; use a floating-point tensor (read as f32)")
        shape = list(tensor.shape)
        if len(want) == 2 and len(shape) == 4 and shape[2:] == [1, 1]:
            shape = shape[:2]
        # With a feature map of the wrong rank the crate's rank error comes first (the counts are unknown).
        if shape != want and student.dim() == 4 and teacher.dim() == 4:
            raise KdInputError(f"{name}: shape {list(tensor.shape)} does not match the expected {want}")


def cwt_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    loss_weight: float = 2e-5,
    normalize: str = "batch",
) -> torch.Tensor:
    """Channel-wise transformation (CWT, Liu et al. 2023; docs/losses.md §5, no official code exists): per
    pixel ``Y = W2 ReLU(W1 x + b1) + b2`` (1x1 convolutions ``Cs -> Ch -> Ct``), ``loss = loss_weight *
    sum (Y - teacher)^2 / D`` with ``D = N`` (``batch``, MGD's normaliser) or ``N*Ct*H*W`` (``mean``).

    ``student`` ``[N, Cs, H, W]`` and ``teacher`` ``[N, Ct, H, W]`` features (one dtype and device);
    ``w1`` ``[Ch, Cs]`` (or a 1x1 convolution's ``[Ch, Cs, 1, 1]``), ``b1`` ``[Ch]``, ``w2`` ``[Ct, Ch]`` (or
    ``[Ct, Ch, 1, 1]``), ``b2`` ``[Ct]``, read as f32 (the crate keeps the MLP in f32). ``backward()`` fills
    the gradients of the student and of the four parameters; the teacher is a constant."""
    _checks.one_of(normalize, CWT_NORMALIZE, _BAD_NORMALIZE)
    _checks.tensors(student, teacher)
    weights = (w1, b1, w2, b2)
    _check_params(student, teacher, weights)
    want = torch.is_grad_enabled() and (student.requires_grad or any(w.requires_grad for w in weights))
    return _eager.loss(_OP, cwt_kernel, (0, 2, 3, 4, 5), (student, teacher, w1, b1, w2, b2),
                       (float(loss_weight), normalize, want), want)


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


class KDChannelWiseTransformation(PredsForward, ChannelWiseTransformation):
    """:class:`kd_kernels.ChannelWiseTransformation` with mmrazor's ``forward(preds_S, preds_T)`` names."""


MMRAZOR_MODULES = {"KDChannelWiseTransformation": KDChannelWiseTransformation}
