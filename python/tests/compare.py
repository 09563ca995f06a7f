"""What the families' tests share: running a loss on fresh leaves, so that a test can compare kd_kernels with a
reference on the same values; random logits; the tolerance table; the checks every pair loss of one shape
passes (low-precision inputs, bad inputs)."""

import math
import random

import pytest
import torch

from kd_kernels import KdInputError, KdKernelsError


def loss_and_grad(loss_fn, student):
    """``loss_fn(s)`` on a fresh leaf ``s`` holding ``student``'s values, and ``s``'s gradient after backward."""
    s = student.clone().requires_grad_(True)
    loss = loss_fn(s)
    loss.backward()
    return loss, s.grad


def random_shapes(seed, count):
    rng = random.Random(seed)
    shapes = [(1, 1, 1, 1), (1, 1, 1, 7), (2, 3, 1, 1), (1, 19, 5, 3)]
    shapes += [tuple(rng.randint(1, 6) for _ in range(2)) + (rng.randint(1, 9), rng.randint(1, 11)) for _ in range(count)]
    return shapes


def ours_and_official(ours, official, student, teacher, teacher_grad):
    s1 = student.clone().requires_grad_(True)
    t1 = teacher.clone().requires_grad_(teacher_grad)
    s2 = student.clone().requires_grad_(True)
    t2 = teacher.clone().requires_grad_(teacher_grad)
    loss1 = ours(s1, t1)
    loss2 = official(s2, t2)
    loss1.backward()
    loss2.backward()
    return (loss1, s1.grad, t1.grad), (loss2, s2.grad, t2.grad)


def logits(shape, seed, dtype=torch.float64, spread=4.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * spread).to(dtype)


def rel_err(got, want):
    """max |err| / max |ref|, the repository's tolerance measure (src/tolerance.rs)."""
    scale = want.abs().max().item()
    return (got.double() - want.double()).abs().max().item() / max(scale, 1e-30)


# The repository's tolerance table (src/tolerance.rs): max |err| / max |ref| per output.
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def check_low_precision(loss_fn, official, dtype):
    """A pair loss on f32/f16/bf16 logits against ``official`` in double from the same rounded inputs: an f32
    loss, the gradient in the input dtype."""
    shape = (2, 5, 7, 9)
    student, teacher = logits(shape, 9, dtype), logits(shape, 10, dtype)
    s = student.clone().requires_grad_(True)
    loss = loss_fn(s, teacher)
    loss.backward()
    assert loss.dtype == torch.float32
    assert s.grad.dtype == dtype
    s64 = student.double().requires_grad_(True)
    ref = official(s64, teacher.double())
    ref.backward()
    assert rel_err(loss, ref) <= 1e-6
    assert rel_err(s.grad, s64.grad) <= GRAD_TOLERANCE[dtype]


def check_pair_bad_inputs(loss_fn):
    """A pair loss of one shape (tau, then loss_weight) on bad inputs: a Python exception with the crate's
    message, never a crash."""
    s, t = logits((2, 3, 4, 5), 22, torch.float32), logits((2, 3, 4, 5), 23, torch.float32)
    with pytest.raises(KdInputError) as err:
        loss_fn(s, logits((2, 3, 4, 6), 1, torch.float32))
    assert str(err.value) == "teacher: shape [2, 3, 4, 6] does not match the expected [2, 3, 4, 5]"
    with pytest.raises(KdInputError) as err:
        loss_fn(s[0], t[0])
    assert str(err.value) == "student: expected a rank-4 tensor (NCHW), got rank 3; reshape it to [N, C, H, W]"
    assert err.value.status == 2
    with pytest.raises(KdInputError) as err:
        loss_fn(s[:, :0], t[:, :0])
    assert str(err.value) == (
        "student: shape [2, 0, 4, 5] has a zero dimension; every dimension must be at least 1")
    with pytest.raises(KdInputError) as err:
        loss_fn(s, t, 0.0)
    assert str(err.value) == "parameter `tau` = 0 is invalid: it must be finite and > 0"
    assert err.value.status == 4
    with pytest.raises(KdInputError) as err:
        loss_fn(s, t, 1.0, math.nan)
    assert str(err.value) == "parameter `loss_weight` = NaN is invalid: it must be finite"
    with pytest.raises(KdInputError) as err:
        loss_fn(s, t.half())
    assert str(err.value) == "teacher: dtype f16 where f32 is needed"
    with pytest.raises(KdInputError, match="dtype torch.int64 is not supported"):
        loss_fn(s.long(), t.long())
    with pytest.raises(KdInputError, match="teacher: on meta while the student is on cpu"):
        loss_fn(s, t.to("meta"))
    with pytest.raises(KdInputError, match="expected a torch.Tensor"):
        loss_fn(s, [1.0])
    # KdInputError is both the package's error and a ValueError.
    assert issubclass(KdInputError, KdKernelsError) and issubclass(KdInputError, ValueError)
