"""ICSD / AICSD on CPU tensors (the crate's f64 reference through the C ABI) against the official
formulas in PyTorch (python-reference/icsd_reference.py: the official `lo_loss` pair loop, the paper
variant, the AICSD objective), gradcheck in double precision, dtypes, bad inputs."""

import random
import sys
from pathlib import Path

import pytest
import torch
from cases import OPS, PairCase, PairStep, leaf
from compare import loss_and_grad
from torch._subclasses.fake_tensor import FakeTensorMode

import kd_kernels
from kd_kernels import KdInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python-reference"))
from icsd_reference import aicsd_objective, icsd_official_loop, icsd_paper  # noqa: E402

OFFICIAL = {"official": icsd_official_loop, "paper": icsd_paper}


def logits(shape, seed, dtype=torch.float64, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * spread).to(dtype)


def shapes():
    rng = random.Random(3)
    return [(1, 2, 1, 1), (2, 3, 4, 5), (1, 5, 7, 3)] + [
        (rng.randint(1, 3), rng.randint(2, 6), rng.randint(1, 6), rng.randint(1, 6)) for _ in range(4)]


@pytest.mark.parametrize("shape", shapes())
@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("tau,weight", [(1.0, 9500.0), (2.0, 3.0)])
def test_icsd_matches_the_official_code(shape, variant, tau, weight):
    student, teacher = logits(shape, 1), logits(shape, 2)
    loss, grad = loss_and_grad(lambda s: kd_kernels.icsd_loss(s, teacher, tau, weight, variant), student)
    ref, ref_grad = loss_and_grad(lambda s: OFFICIAL[variant](s, teacher, tau, weight), student)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12 * weight)
    assert torch.allclose(grad, ref_grad, rtol=1e-8, atol=1e-11 * weight)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_icsd_gradcheck_double(variant):
    student = logits((2, 3, 4, 3), 3).requires_grad_(True)
    teacher = logits((2, 3, 4, 3), 4)
    assert torch.autograd.gradcheck(lambda s: kd_kernels.icsd_loss(s, teacher, 1.5, 7.0, variant), (student,))


@pytest.mark.parametrize("epoch", [0, 30, 119.5, 200])
def test_aicsd_is_the_official_objective(epoch):
    student, teacher = logits((2, 4, 5, 3), 5), logits((2, 4, 5, 3), 6)
    loss, grad = loss_and_grad(lambda s: kd_kernels.aicsd_loss(s, teacher, epoch), student)
    ref, ref_grad = loss_and_grad(lambda s: aicsd_objective(s, teacher, epoch), student)
    assert kd_kernels.alw_alpha(epoch) == min(max(epoch / 120, 0.0), 1.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
    assert torch.allclose(grad, ref_grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_icsd_low_precision(dtype, tolerance):
    student, teacher = logits((2, 5, 6, 4), 7, dtype), logits((2, 5, 6, 4), 8, dtype)
    loss, grad = loss_and_grad(lambda s: kd_kernels.icsd_loss(s, teacher), student)
    ref, ref_grad = loss_and_grad(lambda s: icsd_official_loop(s, teacher.double()), student.double())
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert abs(loss.item() - ref.item()) <= 1e-6 * abs(ref.item())
    assert (grad.double() - ref_grad).abs().max() <= tolerance * ref_grad.abs().max()


def test_icsd_bad_inputs():
    s, t = logits((2, 3, 4, 5), 9), logits((2, 3, 4, 5), 10)
    with pytest.raises(KdInputError) as err:
        kd_kernels.icsd_loss(s, t, variant="prose")
    assert str(err.value) == "parameter `variant` = prose is invalid: it must be `official` or `paper`"
    with pytest.raises(KdInputError, match="parameter `tau` = -1 is invalid"):
        kd_kernels.icsd_loss(s, t, tau=-1.0)
    with pytest.raises(KdInputError, match="does not match the expected"):
        kd_kernels.icsd_loss(s, t[:, :2])
    with pytest.raises(KdInputError, match="parameter `total_epochs` = 0 is invalid"):
        kd_kernels.aicsd_loss(s, t, 3, total_epochs=0)


# ---- the op, and its cases for the shared tests --------------------------------------------------------------

def test_public_function_under_fake_tensor_mode_reaches_the_fake_kernel():
    """What torch.compile does: the public function under FakeTensorMode."""
    with FakeTensorMode():
        s = torch.empty((2, 3, 4, 5), dtype=torch.bfloat16)
        assert kd_kernels.icsd_loss(s, s).dtype == torch.float32


def _icsd(s, t):
    return kd_kernels.icsd_loss(s, t, 1.0, 95.0, "official")


def _aicsd(s, t):
    return kd_kernels.aicsd_loss(s, t, 30.0, 1.0, 95.0, 10.0)


PAIR_CASES = [PairCase("icsd", _icsd, OPS.icsd, (1.0, 95.0, "official", True))]
STEPS = {"icsd": PairStep(_icsd, autocast_exact=True), "aicsd": PairStep(_aicsd, autocast_exact=True)}
OP_CASES = [(f"icsd-{dtype}-{want}", OPS.icsd,
             (leaf((2, 3, 4, 5), 5, dtype, want), leaf((2, 3, 4, 5), 6, dtype, False), 1.0, 9500.0, "paper", want))
            for dtype in (torch.float64, torch.float32) for want in (True, False)]
