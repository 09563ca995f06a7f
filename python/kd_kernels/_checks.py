"""What the C ABI cannot see, checked before an op is called, in the crate's wording: Python types, one dtype
and one device for a student/teacher pair (the C ABI takes one of each for both), the MLPs' shapes. The
rest (rank, empty dimensions, sizes, parameter domains) is the crate's, inside the op.

These run in Python on tensor metadata only, so ``torch.compile`` evaluates them while tracing (a bad call
raises at compile time with the same message) and they cost nothing in the compiled graph."""

from __future__ import annotations

import torch

from ._impl import CWT_NORMALIZE, DTYPE_CODES, ICSD_VARIANTS, LABEL_CODES, REDUCTIONS
from ._lib import CIRKD_POOL_AUTO, CIRKD_POOL_NONE, KdInputError

_DTYPE_NAMES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}
_CWT_PARAM_NAMES = ("mlp.linear1.weight", "mlp.linear1.bias", "mlp.linear2.weight", "mlp.linear2.bias")
_SEMCKD_MLP_NAMES = ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")
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


def labels(student, value) -> None:
    """IFVD's labels: an integer tensor on the features' device (its shape is the crate's to check)."""
    if not isinstance(value, _Tensor):
        raise KdInputError(f"labels: expected a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in LABEL_CODES:
        raise KdInputError(
            f"labels: dtype {value.dtype} is not supported; labels are integers: use torch.long, torch.int32 or "
            "torch.uint8 (class indices, not one-hot or float maps)"
        )
    if value.device != student.device:
        raise KdInputError(f"labels: on {value.device} while the student is on {student.device}; put both on one device")


def num_classes(value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KdInputError(
            f"parameter `num_classes` = {value!r} is invalid: it must be an integer between 1 and 2^24 "
            "(the dataset's class count)"
        )


def reduction(value) -> None:
    if value not in REDUCTIONS:
        # The crate's `Reduction::from_str` message.
        raise KdInputError(
            f"parameter `reduction` = {value!r} is invalid: it must be one of mean, batchmean, sum, pixelmean"
        )


def variant(value) -> None:
    if value not in ICSD_VARIANTS:
        # The crate's `IcsdVariant::parse` message.
        raise KdInputError(f"parameter `variant` = {value} is invalid: it must be `official` or `paper`")


def skd_pool(value) -> int:
    """SKD's ``pool`` as kd_skd_config's code: the window side (the crate checks that it is 2 or 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise KdInputError(
            f"parameter `pool` = {value!r} is invalid: it must be 2 (the official 2x2 max pool) or 1 (no pooling)")
    return value


def cirkd_pool(value) -> int:
    """CIRKD's ``pool`` ("auto", "none" or a window side K >= 1) as kd_cirkd_config's code."""
    if value == "auto":
        return CIRKD_POOL_AUTO
    if value == "none":
        return CIRKD_POOL_NONE
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KdInputError(
            f"parameter `pool` = {value!r} is invalid: it must be \"auto\" (the official rule: 4x4 from 256x256 up), "
            "\"none\" or a window side K >= 1")
    return value


def normalize(value) -> None:
    if value not in CWT_NORMALIZE:
        raise KdInputError(f"parameter `normalize` = {value!r} is invalid: it must be one of batch, mean")


def cwt_params(student, teacher, weights) -> None:
    """The four MLP parameters against the channel counts (a 1x1 convolution's [out, in, 1, 1] weight reads as
    [out, in])."""
    cs = student.shape[1] if student.dim() == 4 else 0
    ct = teacher.shape[1] if teacher.dim() == 4 else 0
    w1 = weights[0]
    ch = w1.shape[0] if isinstance(w1, _Tensor) and w1.dim() >= 1 else 0
    expected = ([ch, cs], [ch], [ct, ch], [ct])
    for name, tensor, want in zip(_CWT_PARAM_NAMES, weights, expected):
        if not isinstance(tensor, _Tensor):
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


def semckd(student, teacher, proj, query, key) -> None:
    """SemCKD's lists: counts, one dtype and device, the regressor outputs' and the MLPs' shapes."""
    s_n, t_n = len(student), len(teacher)
    if s_n == 0 or t_n == 0:
        raise KdInputError("student/teacher: give at least one feature map on each side")
    for i, s in enumerate(student):
        tensors(s, teacher[0])
        if s.device != student[0].device:
            raise KdInputError(f"student[{i}]: on {s.device} while student[0] is on {student[0].device}")
    for t in teacher:
        tensors(student[0], t)
    if len(proj) != s_n or any(len(row) != t_n for row in proj):
        raise KdInputError(f"proj: expected {s_n} rows (one per student map) of {t_n} tensors (one per teacher map)")
    if len(query) != s_n or len(key) != t_n or any(len(m) != 4 for m in list(query) + list(key)):
        raise KdInputError(f"query/key: expected {s_n} query and {t_n} key MLPs of 4 tensors "
                           "(linear1.weight, linear1.bias, linear2.weight, linear2.bias)")
    for s in list(student) + list(teacher):
        if s.dim() != 4:
            raise KdInputError(f"student: expected a rank-4 tensor (NCHW), got rank {s.dim()}; reshape it to [N, C, H, W]")
    batch = student[0].shape[0]
    d = query[0][3].shape[0] if isinstance(query[0][3], _Tensor) and query[0][3].dim() == 1 else 0
    device = student[0].device
    # The regressor outputs at the compared size h = min(Hs_i, Ht_j).
    for i in range(s_n):
        for j in range(t_n):
            h = min(student[i].shape[2], teacher[j].shape[2])
            want = [batch, teacher[j].shape[1], h, h]
            p = proj[i][j]
            tensors(student[0], p)
            if list(p.shape) != want:
                raise KdInputError(f"proj[i][j]: shape {list(p.shape)} does not match the expected {want} (i = {i}, j = {j})")
    mlp_shapes = ([2 * d, batch], [2 * d], [d, 2 * d], [d])
    for side, lst in (("query", query), ("key", key)):
        for k, m in enumerate(lst):
            for name, tensor, want in zip(_SEMCKD_MLP_NAMES, m, mlp_shapes):
                if not isinstance(tensor, _Tensor) or tensor.device != device:
                    raise KdInputError(f"{side}[{k}].{name}: expected a tensor on {device}")
                if list(tensor.shape) != want:
                    raise KdInputError(f"{side}[{k}].{name}: shape {list(tensor.shape)} does not match the expected {want}")


def pkd(student, teacher) -> None:
    """PKD's levels: as many on each side, at least one, one dtype and one device for all of them (the C ABI
    takes one dtype per call). The shapes are the crate's to check (it says to resize a mismatched level)."""
    if len(student) != len(teacher) or len(student) == 0:
        raise KdInputError(
            f"preds_S/preds_T: {len(student)} student and {len(teacher)} teacher levels; give one pair per level")
    for level, (s, t) in enumerate(zip(student, teacher)):
        tensors(s, t)
        first = student[0]
        if s.dtype != first.dtype or s.device != first.device:
            raise KdInputError(
                f"student level {level}: {_DTYPE_NAMES.get(s.dtype, s.dtype)} on {s.device} while level 0 is "
                f"{_DTYPE_NAMES.get(first.dtype, first.dtype)} on {first.device}; give every level one dtype and device")
