"""DIST on CPU tensors (the crate's f64 reference through the C ABI) against the official code in PyTorch
(python-reference/official: DIST_KD's segmentation ``DIST``, mmrazor's ``DISTLoss``), gradcheck in double
precision, dtypes, the module and bad inputs."""

import random
import sys
from pathlib import Path

import pytest
import torch
from cases import OPS, PairCase, PairStep, leaf
from compare import loss_and_grad

import kd_kernels
from kd_kernels import KdInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python-reference" / "official"))
from dist_kd_dist import DIST  # noqa: E402
from mmrazor_dist_loss import DISTLoss as MmrazorDISTLoss  # noqa: E402


def logits(shape, seed, dtype=torch.float64, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * spread).to(dtype)


def official(student, teacher, tau, beta, gamma, loss_weight):
    """DIST_KD's ``DIST(beta, gamma)`` on ``x / tau``, times ``loss_weight * tau^2`` (mmrazor's convention)."""
    return loss_weight * tau**2 * DIST(beta, gamma)(student / tau, teacher / tau)


def shapes():
    rng = random.Random(19)
    return [(1, 2, 1, 3), (2, 3, 4, 5), (1, 19, 3, 7)] + [
        (rng.randint(1, 3), rng.randint(2, 7), rng.randint(1, 6), rng.randint(1, 6)) for _ in range(4)]


@pytest.mark.parametrize("shape", shapes())
@pytest.mark.parametrize("tau,beta,gamma,weight", [(1.0, 1.0, 1.0, 1.0), (4.0, 2.0, 0.5, 3.0), (0.5, 0.0, 1.0, -2.0)])
def test_dist_matches_the_official_code(shape, tau, beta, gamma, weight):
    student, teacher = logits(shape, 1), logits(shape, 2)
    loss, grad = loss_and_grad(lambda s: kd_kernels.dist_loss(s, teacher, tau, beta, gamma, weight), student)
    ref, ref_grad = loss_and_grad(lambda s: official(s, teacher, tau, beta, gamma, weight), student)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(grad, ref_grad, rtol=1e-7, atol=1e-10)


def test_dist_gradcheck_double():
    student = logits((2, 4, 3, 3), 3).requires_grad_(True)
    teacher = logits((2, 4, 3, 3), 4)
    assert torch.autograd.gradcheck(lambda s: kd_kernels.dist_loss(s, teacher, 2.0, 1.5, 0.5, 3.0), (student,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    student, teacher = logits((2, 5, 4, 3), 5, dtype), logits((2, 5, 4, 3), 6, dtype)
    loss, grad = loss_and_grad(lambda s: kd_kernels.dist_loss(s, teacher, 2.0), student)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    ref, ref_grad = loss_and_grad(lambda s: official(s, teacher.double(), 2.0, 1.0, 1.0, 1.0), student.double())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    tol = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    assert (grad.double() - ref_grad).abs().max() <= tol * ref_grad.abs().max()


def test_module_is_mmrazors_on_classification_logits_and_dist_kds_on_maps():
    module = kd_kernels.DISTLoss(inter_loss_weight=2.0, intra_loss_weight=0.5, tau=3.0, loss_weight=1.5)
    mmrazor = MmrazorDISTLoss(inter_loss_weight=2.0, intra_loss_weight=0.5, tau=3.0, loss_weight=1.5)
    s2, t2 = logits((6, 7), 7), logits((6, 7), 8)
    assert module(s2, t2).item() == pytest.approx(mmrazor(s2, t2).item(), rel=1e-12)
    s4, t4 = logits((2, 7, 3, 5), 9), logits((2, 7, 3, 5), 10)
    flat = lambda x: x.permute(0, 2, 3, 1).reshape(-1, 7)  # noqa: E731 (every pixel a sample, as DIST_KD does)
    assert module(s4, t4).item() == pytest.approx(mmrazor(flat(s4), flat(t4)).item(), rel=1e-12)
    levels = module((s4, s2[:, :, None, None]), (t4, t2[:, :, None, None]))
    assert levels.item() == pytest.approx(module(s4, t4).item() + module(s2, t2).item(), rel=1e-12)
    assert "inter_loss_weight=2.0" in repr(module)
    with pytest.raises(KdInputError, match="teacher_detach"):
        kd_kernels.DISTLoss(teacher_detach=False)


def test_teacher_gets_no_gradient_and_identical_inputs_give_almost_zero():
    s = logits((2, 4, 3, 3), 11).requires_grad_(True)
    t = logits((2, 4, 3, 3), 12).requires_grad_(True)
    kd_kernels.dist_loss(s, t).backward()
    assert s.grad is not None and t.grad is None
    same = kd_kernels.dist_loss(s.detach(), s.detach())
    assert 0.0 <= same.item() < 1e-5


def test_bad_inputs_raise_the_crates_messages():
    s = logits((2, 3, 4, 5), 13)
    with pytest.raises(KdInputError, match="tau"):
        kd_kernels.dist_loss(s, s, tau=0.0)
    with pytest.raises(KdInputError, match="gamma"):
        kd_kernels.dist_loss(s, s, intra_loss_weight=float("nan"))
    with pytest.raises(KdInputError, match="shape"):
        kd_kernels.dist_loss(s, logits((2, 3, 4, 4), 14))
    with pytest.raises(KdInputError):
        kd_kernels.dist_loss(s[0], s[0])


# ---- its cases for the shared tests --------------------------------------------------------------------------

def _call(s, t):
    return kd_kernels.dist_loss(s, t, 2.0, 1.5, 0.5, 3.0)


PAIR_CASES = [PairCase("dist", _call, OPS.dist, (2.0, 1.5, 0.5, 3.0, True))]
STEPS = {"dist": PairStep(_call)}
OP_CASES = [(f"dist-{dtype}-{want}", OPS.dist,
             (leaf((2, 3, 4, 5), 9, dtype, want), leaf((2, 3, 4, 5), 10, dtype, False), 2.0, 1.5, 0.5, 3.0, want))
            for dtype in (torch.float64, torch.float32) for want in (True, False)]
CUDA_CASES = [("dist", _call, lambda s, t: 3.0 * 2.0**2 * DIST(1.5, 0.5)(s / 2.0, t / 2.0), False)]
MMRAZOR_NAMES = ["KDDISTLoss"]
# mmrazor's DISTLoss's forward argument names (test_mmrazor.py checks every registered module's).
MMRAZOR_FORWARD = {"KDDISTLoss": ["self", "logits_S", "logits_T"]}
