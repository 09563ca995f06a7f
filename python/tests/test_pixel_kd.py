"""Pixel KD (``kd_kernels.pixel_kd_loss``, ``KLDivergence``, ``PixelKD``, ``torch.ops.kd_kernels.pixel_kd``) on
CPU tensors (the crate's f64 reference through the C ABI): agreement with the official formula in PyTorch
(loss and gradients, random odd shapes, every reduction), gradcheck in double precision, dtypes, the modules
against mmrazor's, bad inputs; its cases for the shared tests (cases.py)."""

import pytest
import torch
import torch.nn.functional as F
from cases import OPS, PairCase, PairStep, leaf, needs_kernels, randn
from compare import check_low_precision, check_pair_bad_inputs, logits, ours_and_official, random_shapes
from torch._subclasses.fake_tensor import FakeTensorMode

import kd_kernels
from kd_kernels import KdInputError


def pixel_kd_official(preds_s, preds_t, tau, loss_weight, reduction, scale_tau2):
    """TorchDistiller ``CriterionKD`` / AICSD ``pi_loss`` (``KLDivLoss`` over the channels), with the crate's
    reductions (``pixelmean`` = the sum over N*H*W pixels)."""
    log_ps = F.log_softmax(preds_s / tau, dim=1)
    pt = F.softmax(preds_t / tau, dim=1)
    if reduction == "pixelmean":
        n, _, h, w = preds_s.shape
        kl = F.kl_div(log_ps, pt, reduction="sum") / (n * h * w)
    else:
        kl = F.kl_div(log_ps, pt, reduction=reduction)
    return loss_weight * (tau * tau if scale_tau2 else 1.0) * kl



def mmrazor_kl_divergence(preds_s, preds_t, tau, reduction, loss_weight):
    """mmrazor ``KLDivergence.forward`` (teacher detached)."""
    preds_t = preds_t.detach()
    softmax_pred_t = F.softmax(preds_t / tau, dim=1)
    logsoftmax_preds_s = F.log_softmax(preds_s / tau, dim=1)
    loss = (tau**2) * F.kl_div(logsoftmax_preds_s, softmax_pred_t, reduction=reduction)
    return loss_weight * loss



@pytest.mark.parametrize("shape", random_shapes(2, 8))
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "pixelmean"])
@pytest.mark.parametrize("tau,scale_tau2", [(1.0, False), (4.0, True), (2.5, False)])
def test_pixel_kd_matches_official_formula(shape, reduction, tau, scale_tau2):
    student, teacher = logits(shape, 3), logits(shape, 4)
    (loss, gs, gt), (ref, ref_gs, _) = ours_and_official(
        lambda s, t: kd_kernels.pixel_kd_loss(s, t, tau, 10.0, reduction, scale_tau2),
        lambda s, t: pixel_kd_official(s, t, tau, 10.0, reduction, scale_tau2),
        student, teacher, teacher_grad=False)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(gs, ref_gs, rtol=1e-9, atol=1e-12)
    assert gt is None


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 4, 5), (2, 5, 1, 3)])
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "pixelmean"])
def test_pixel_kd_gradcheck_double(shape, reduction):
    student = logits(shape, 7).requires_grad_(True)
    teacher = logits(shape, 8)
    assert torch.autograd.gradcheck(
        lambda s: kd_kernels.pixel_kd_loss(s, teacher, 1.5, 10.0, reduction, True), (student,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    check_low_precision(kd_kernels.pixel_kd_loss, lambda s, t: pixel_kd_official(s, t, 1.0, 10.0, "mean", False),
                        dtype)


def test_modules_are_mmrazors():
    shape = (2, 4, 3, 5)
    student, teacher = logits(shape, 17), logits(shape, 18)
    for reduction in ("batchmean", "sum", "mean"):
        kl = kd_kernels.KLDivergence(tau=2.0, reduction=reduction, loss_weight=0.5)
        want = mmrazor_kl_divergence(student, teacher, 2.0, reduction, 0.5)
        assert kl(student, teacher).item() == pytest.approx(want.item(), rel=1e-10)
    assert kd_kernels.PixelKD()(student, teacher).item() == pytest.approx(
        pixel_kd_official(student, teacher, 1.0, 10.0, "mean", False).item(), rel=1e-10)
    with pytest.raises(KdInputError, match="reduction"):
        kd_kernels.KLDivergence(reduction="none")
    with pytest.raises(KdInputError, match="teacher_detach"):
        kd_kernels.KLDivergence(teacher_detach=False)



def test_identical_inputs_give_zero():
    x = logits((2, 3, 4, 5), 19)
    assert kd_kernels.pixel_kd_loss(x, x.clone()).item() == 0.0


def test_bad_inputs_raise_the_crates_messages():
    check_pair_bad_inputs(kd_kernels.pixel_kd_loss)


def test_bad_reduction():
    s, t = logits((2, 3, 4, 5), 22, torch.float32), logits((2, 3, 4, 5), 23, torch.float32)
    with pytest.raises(KdInputError) as err:
        kd_kernels.pixel_kd_loss(s, t, reduction="avg")
    assert str(err.value) == (
        "parameter `reduction` = 'avg' is invalid: it must be one of mean, batchmean, sum, pixelmean")




# ---- the op, CUDA, and its cases for the shared tests ------------------------------------------------------

def test_fake_kernel_states_shapes_and_dtypes_only():
    with FakeTensorMode():
        s = torch.empty((2, 3, 4, 5), dtype=torch.float64)
        loss, gs = OPS.pixel_kd(s, s, 1.0, 1.0, "mean", False, False)
        assert loss.dtype == torch.float64 and gs.numel() == 0


def test_autocast_value_against_the_formula():
    conv = torch.nn.Conv2d(3, 5, 1)
    image, teacher = randn((2, 3, 6, 7), 1, torch.float32), randn((2, 5, 6, 7), 2, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student = conv(image)
        kd = kd_kernels.pixel_kd_loss(student, teacher)
    assert kd.dtype == torch.float32
    want = pixel_kd_official(student.detach().double(), teacher.double(), 1.0, 10.0, "mean", False)
    assert kd.item() == pytest.approx(want.item(), rel=1e-6)


@needs_kernels
def test_cuda_bad_inputs():
    s = randn((2, 3, 4, 5), 7, torch.float32, "cuda")
    with pytest.raises(KdInputError, match="does not match the expected"):
        kd_kernels.pixel_kd_loss(s, s[:, :2].contiguous())


def _call(s, t):
    return kd_kernels.pixel_kd_loss(s, t, 1.5, 10.0, "batchmean", True)


PAIR_CASES = [PairCase("pixel_kd", _call, OPS.pixel_kd, (1.5, 10.0, "batchmean", True, True))]
STEPS = {"pixel_kd": PairStep(_call, autocast_exact=True)}
# With `mean`, pixel KD divides by N*C*H*W: a batch's loss is the mean of its two equal halves' (test_ddp.py).
BATCH_MEAN_LOSSES = [lambda s, t: kd_kernels.pixel_kd_loss(s, t, 1.0, 10.0, "mean")]
OP_CASES = [(f"pixel_kd-{dtype}-{want}", OPS.pixel_kd,
             (leaf((2, 3, 4, 5), 3, dtype, want), leaf((2, 3, 4, 5), 4, dtype, False), 1.5, 10.0, "pixelmean", True,
              want))
            for dtype in (torch.float64, torch.float32) for want in (True, False)]
CUDA_CASES = [
    ("pixel_kd", lambda s, t: kd_kernels.pixel_kd_loss(s, t),
     lambda s, t: pixel_kd_official(s, t, 1.0, 10.0, "mean", False), False),
    ("pixel_kd_batchmean_tau4", lambda s, t: kd_kernels.pixel_kd_loss(s, t, 4.0, 1.0, "batchmean", True),
     lambda s, t: pixel_kd_official(s, t, 4.0, 1.0, "batchmean", True), False),
]
MMRAZOR_NAMES = ["KDKLDivergence", "KDPixelKD"]
MMRAZOR_BUILDS = [
    (dict(type="KDKLDivergence", tau=2.0, reduction="sum", loss_weight=0.5),
     lambda m, s, t: m(s, t).item() == pytest.approx(mmrazor_kl_divergence(s, t, 2.0, "sum", 0.5).item(), rel=1e-10)),
    (dict(type="KDPixelKD", loss_weight=2.0),
     lambda m, s, t: isinstance(m, kd_kernels.PixelKD) and m.loss_weight == 2.0
     and m(s, t).item() == pytest.approx(pixel_kd_official(s, t, 1.0, 2.0, "mean", False).item(), rel=1e-10)),
]
MMRAZOR_REPLACES = {"KLDivergence": kd_kernels.KLDivergence}
