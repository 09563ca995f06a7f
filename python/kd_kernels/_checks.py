"""What the C ABI cannot see, checked before an op is called, in the crate's wording: Python types, one dtype
and one device for a student/teacher pair (the C ABI takes one of each for both). A family's own checks (the
MLPs' shapes, a parameter's name as a code) are in its file (families/). The rest (rank, empty dimensions,
sizes, parameter domains) is the crate's, inside the op.

These run in Python on tensor metadata only, so ``torch.compile`` evaluates them while tracing (a bad call
raises at compile time with the same message) and they cost nothing in the compiled graph."""

from __future__ import annotations

import torch

from ._impl import DTYPE_CODES
from ._lib import KdInputError

_DTYPE_NAMES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}
_Tensor = torch.Tensor


def tensors(student, teacher) -> None:
    """Types, dtypes and devices of a student/teacher pair."""
    if not isinstance(student, _Tensor):
        raise KdInputError(f"student: expected a torch.Tensor, got {type(student).__name__}")
    if not isinstance(teacher, _Tensor):
        raise KdInputError(f"teacher: expected a torch.Tensor, got {type(teacher).__name__}")
    dtype = student.dtype
    if dtype not in DTYPE_CODES:
        raise KdInputError(
            f"student: dtype {dtype} is not supported; use float32, float16 or bfloat16 (or float64 on the CPU)"
        )
    if teacher.dtype != dtype:
        raise KdInputError(
            f"teacher: dtype {_DTYPE_NAMES.get(teacher.dtype, teacher.dtype)} where {_DTYPE_NAMES[dtype]} is needed"
        )
    device = student.device
    if teacher.device != device:
        raise KdInputError(
            f"teacher: on {teacher.device} while the student is on {device}; put both on one device"
        )
    if device.type != "cpu" and device.type != "cuda":
        raise KdInputError(f"student: device {device} is not supported; use a CUDA or a CPU tensor")


def pair(student, teacher) -> None:
    """A pair of one shape (the C ABI takes one shape for both)."""
    tensors(student, teacher)
    if student.dim() == 4 and teacher.shape != student.shape:
        raise KdInputError(f"teacher: shape {list(teacher.shape)} does not match the expected {list(student.shape)}")


def dtype_name(dtype) -> str:
    return _DTYPE_NAMES.get(dtype, dtype)


def one_of(value, table, message: str) -> None:
    """A parameter that names one of ``table``'s entries (its code for the C ABI); ``message`` (the crate's,
    formatted with ``value``) where it does not."""
    if value not in table:
        raise KdInputError(message.format(value=value))
