"""kd_kernels on CPU tensors (the crate's f64 reference through the C ABI): agreement with the official
formulas in PyTorch (loss and gradients, random odd shapes), gradcheck in double precision, dtypes, the
autograd plumbing, the modules, and bad inputs."""

import math
import random

import pytest
import torch
from reference import cwd_official, mmrazor_kl_divergence, pixel_kd_official

import kd_kernels
from kd_kernels import KdInputError, KdKernelsError

# The repository's tolerance table (src/tolerance.rs): max |err| / max |ref| per output.
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def random_shapes(seed, count):
    rng = random.Random(seed)
    shapes = [(1, 1, 1, 1), (1, 1, 1, 7), (2, 3, 1, 1), (1, 19, 5, 3)]
    shapes += [tuple(rng.randint(1, 6) for _ in range(2)) + (rng.randint(1, 9), rng.randint(1, 11)) for _ in range(count)]
    return shapes


def logits(shape, seed, dtype=torch.float64, spread=4.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * spread).to(dtype)


def rel_err(got, want):
    scale = want.abs().max().item()
    return (got.double() - want.double()).abs().max().item() / max(scale, 1e-30)


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


@pytest.mark.parametrize("shape", random_shapes(1, 8))
@pytest.mark.parametrize("tau,weight", [(4.0, 3.0), (1.0, 10.0), (0.7, -2.5)])
def test_cwd_matches_official_formula(shape, tau, weight):
    student, teacher = logits(shape, 1), logits(shape, 2)
    (loss, gs, gt), (ref, ref_gs, ref_gt) = ours_and_official(
        lambda s, t: kd_kernels.cwd_loss(s, t, tau, weight), lambda s, t: cwd_official(s, t, tau, weight),
        student, teacher, teacher_grad=True)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(gs, ref_gs, rtol=1e-9, atol=1e-12)
    assert torch.allclose(gt, ref_gt, rtol=1e-9, atol=1e-12)


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


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 3, 4, 5), (3, 2, 3, 1)])
def test_cwd_gradcheck_double(shape):
    student = logits(shape, 5).requires_grad_(True)
    teacher = logits(shape, 6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, t: kd_kernels.cwd_loss(s, t, 2.0, 3.0), (student, teacher))


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 4, 5), (2, 5, 1, 3)])
@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum", "pixelmean"])
def test_pixel_kd_gradcheck_double(shape, reduction):
    student = logits(shape, 7).requires_grad_(True)
    teacher = logits(shape, 8)
    assert torch.autograd.gradcheck(
        lambda s: kd_kernels.pixel_kd_loss(s, teacher, 1.5, 10.0, reduction, True), (student,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss_fn,official", [
    (lambda s, t: kd_kernels.cwd_loss(s, t), lambda s, t: cwd_official(s, t, 4.0, 3.0)),
    (lambda s, t: kd_kernels.pixel_kd_loss(s, t), lambda s, t: pixel_kd_official(s, t, 1.0, 10.0, "mean", False)),
], ids=["cwd", "pixel_kd"])
def test_low_precision_inputs(dtype, loss_fn, official):
    shape = (2, 5, 7, 9)
    student, teacher = logits(shape, 9, dtype), logits(shape, 10, dtype)
    s = student.clone().requires_grad_(True)
    loss = loss_fn(s, teacher)
    loss.backward()
    assert loss.dtype == torch.float32
    assert s.grad.dtype == dtype
    # The reference from the same (already rounded) inputs, in double.
    s64 = student.double().requires_grad_(True)
    ref = official(s64, teacher.double())
    ref.backward()
    assert rel_err(loss, ref) <= 1e-6
    assert rel_err(s.grad, s64.grad) <= GRAD_TOLERANCE[dtype]


def test_upstream_gradient_scales_and_grads_accumulate():
    shape = (2, 3, 4, 5)
    student, teacher = logits(shape, 11), logits(shape, 12)
    s = student.clone().requires_grad_(True)
    (kd_kernels.cwd_loss(s, teacher) * 3.0).backward()
    once = s.grad.clone()
    s_ref = student.clone().requires_grad_(True)
    cwd_official(s_ref, teacher, 4.0, 3.0).backward()
    assert torch.allclose(once, 3.0 * s_ref.grad, rtol=1e-12, atol=1e-15)
    (kd_kernels.cwd_loss(s, teacher) + kd_kernels.pixel_kd_loss(s, teacher)).backward()
    p_ref = student.clone().requires_grad_(True)
    pixel_kd_official(p_ref, teacher, 1.0, 10.0, "mean", False).backward()
    assert torch.allclose(s.grad, once + s_ref.grad + p_ref.grad, rtol=1e-12, atol=1e-15)


def test_teacher_gradient_only_where_asked():
    shape = (2, 3, 4, 5)
    s = logits(shape, 13).requires_grad_(True)
    t = logits(shape, 14)
    kd_kernels.cwd_loss(s, t).backward()
    assert s.grad is not None and t.grad is None
    # Only the teacher: its gradient is computed (the crate computes the student's with it) and the student
    # gets none.
    s2 = logits(shape, 13)
    t2 = logits(shape, 14).requires_grad_(True)
    kd_kernels.cwd_loss(s2, t2).backward()
    t_ref = logits(shape, 14).requires_grad_(True)
    cwd_official(s2, t_ref, 4.0, 3.0).backward()
    assert torch.allclose(t2.grad, t_ref.grad, rtol=1e-9, atol=1e-12)
    # No gradient at all: a plain loss.
    with torch.no_grad():
        value = kd_kernels.cwd_loss(s2, t2)
    assert not value.requires_grad
    assert value.item() == pytest.approx(cwd_official(s2, t2.detach(), 4.0, 3.0).item(), rel=1e-10)


def test_non_contiguous_inputs_are_copied():
    base_s = logits((2, 5, 6, 3), 15)
    base_t = logits((2, 5, 6, 3), 16)
    student = base_s.permute(0, 1, 3, 2).requires_grad_(True)  # a (2, 5, 3, 6) view, not contiguous
    teacher = base_t.permute(0, 1, 3, 2)
    assert not student.is_contiguous()
    loss = kd_kernels.cwd_loss(student, teacher)
    loss.backward()
    s_ref = student.detach().contiguous().requires_grad_(True)
    ref = cwd_official(s_ref, teacher.contiguous(), 4.0, 3.0)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(student.grad, s_ref.grad, rtol=1e-9, atol=1e-12)


def test_modules_are_mmrazors():
    shape = (2, 4, 3, 5)
    student, teacher = logits(shape, 17), logits(shape, 18)
    cwd = kd_kernels.ChannelWiseDivergence(tau=4, loss_weight=10)
    assert cwd(student, teacher).item() == pytest.approx(cwd_official(student, teacher, 4, 10).item(), rel=1e-10)
    assert kd_kernels.ChannelWiseDivergence()(student, teacher).item() == pytest.approx(
        cwd_official(student, teacher, 1.0, 1.0).item(), rel=1e-10)  # mmrazor's defaults
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


def test_identical_inputs_give_zero_and_one_position_rows_too():
    x = logits((2, 3, 4, 5), 19)
    assert kd_kernels.cwd_loss(x, x.clone()).item() == 0.0
    assert kd_kernels.pixel_kd_loss(x, x.clone()).item() == 0.0
    # H*W = 1: every CWD row is a one-element softmax, KL exactly 0 whatever the logits.
    assert kd_kernels.cwd_loss(logits((2, 3, 1, 1), 20), logits((2, 3, 1, 1), 21)).item() == 0.0


# ---- bad inputs: a Python exception with the crate's message, never a crash ----

def pair(shape=(2, 3, 4, 5), dtype=torch.float32):
    return logits(shape, 22, dtype), logits(shape, 23, dtype)


@pytest.mark.parametrize("loss_fn", [kd_kernels.cwd_loss, kd_kernels.pixel_kd_loss], ids=["cwd", "pixel_kd"])
def test_bad_inputs_raise_the_crates_messages(loss_fn):
    s, t = pair()
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


def test_bad_reduction():
    s, t = pair()
    with pytest.raises(KdInputError) as err:
        kd_kernels.pixel_kd_loss(s, t, reduction="avg")
    assert str(err.value) == (
        "parameter `reduction` = 'avg' is invalid: it must be one of mean, batchmean, sum, pixelmean")


def test_cuda_without_kernels_or_gpu_raises_the_crates_message():
    """Without a GPU (or without kernels) a CUDA context cannot open: the crate's KernelsUnavailable or
    CudaUnavailable message, as an exception."""
    from kd_kernels import _lib
    if torch.cuda.is_available() and kd_kernels.kernels_compiled():
        pytest.skip("a GPU is present and the kernels are compiled: the CUDA tests cover this path")
    if not kd_kernels.kernels_compiled():
        with pytest.raises(kd_kernels.KernelsUnavailableError) as err:
            _lib.context(0)
        assert "built without nvcc" in str(err.value)
    else:
        with pytest.raises(kd_kernels.CudaUnavailableError) as err:
            _lib.context(0)
        assert str(err.value).startswith("CUDA is not usable here")
