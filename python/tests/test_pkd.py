"""PKD (``kd_kernels.pkd_loss``, ``kd_kernels.PKDLoss``, ``torch.ops.kd_kernels.pkd``): on CPU tensors (the
crate's f64 reference through the C ABI) against mmrazor's own ``PKDLoss`` (python-reference/official), with
levels of different sizes in one call, the module's bilinear resize, a constant channel, gradcheck, the op
under ``torch.library.opcheck`` and ``torch.compile(fullgraph=True)``, bad inputs; on CUDA tensors (skipped
without a GPU) the kernels against the CPU."""

import sys
from pathlib import Path

import pytest
import torch

import kd_kernels
from kd_kernels import KdInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python-reference" / "official"))
from mmrazor_pkd_loss import PKDLoss as OfficialPKDLoss  # noqa: E402

LEVELS = [(2, 5, 7, 9), (2, 3, 4, 5), (2, 6, 1, 3)]


def levels(seed, shapes=LEVELS, dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        shift = torch.randn((1, shape[1], 1, 1), generator=g, dtype=torch.float64) * 3
        out.append((torch.randn(shape, generator=g, dtype=torch.float64) + shift).to(dtype).requires_grad_(grad))
    return out


def official(student, teacher, loss_weight=1.0, resize_stu=True):
    return OfficialPKDLoss(loss_weight, resize_stu)(tuple(student), tuple(teacher))


@pytest.mark.parametrize("loss_weight", [1.0, 6.0])
def test_levels_match_mmrazor(loss_weight):
    s1, t = levels(1, grad=True), levels(2)
    s2 = [x.detach().clone().requires_grad_(True) for x in s1]
    loss = kd_kernels.pkd_loss(s1, t, loss_weight)
    ref = official(s2, t, loss_weight)
    loss.backward()
    ref.backward()
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    for a, b in zip(s1, s2):
        assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12)


def test_module_resizes_the_student_as_mmrazor_does():
    student = levels(3, [(2, 4, 5, 7), (2, 4, 6, 6)], grad=True)
    teacher = levels(4, [(2, 4, 10, 14), (2, 4, 6, 6)])
    twin = [x.detach().clone().requires_grad_(True) for x in student]
    for resize_stu in (True, False):
        module = kd_kernels.PKDLoss(loss_weight=6.0, resize_stu=resize_stu)
        loss = module(tuple(student), tuple(teacher))
        ref = official(twin, teacher, 6.0, resize_stu)
        for x in student + twin:
            x.grad = None
        loss.backward()
        ref.backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
        for a, b in zip(student, twin):
            assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12)
    # One map each, not a tuple.
    one = kd_kernels.PKDLoss()(student[1], teacher[1])
    assert one.item() == pytest.approx(official([student[1]], [teacher[1]]).item(), rel=1e-10)


def test_constant_student_channel_keeps_the_mean_term():
    # torch's autograd of `std` is 0 where the std is 0, so mmrazor's gradient there is (g - mean g) / 1e-6.
    s1, t = levels(5, grad=False), levels(6)
    s1[0][:, 2] = 1.5
    s1 = [x.requires_grad_(True) for x in s1]
    s2 = [x.detach().clone().requires_grad_(True) for x in s1]
    kd_kernels.pkd_loss(s1, t).backward()
    official(s2, t).backward()
    for a, b in zip(s1, s2):
        assert torch.isfinite(a.grad).all()
        assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-6)


def test_gradcheck_double():
    student = levels(7, [(2, 2, 3, 3), (1, 3, 2, 2)], grad=True)
    teacher = levels(8, [(2, 2, 3, 3), (1, 3, 2, 2)])
    assert torch.autograd.gradcheck(lambda a, b: kd_kernels.pkd_loss([a, b], teacher, 2.0), student)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("want", [True, False])
def test_opcheck(dtype, want):
    student = levels(9, dtype=dtype, grad=want)
    teacher = levels(10, dtype=dtype)
    torch.library.opcheck(torch.ops.kd_kernels.pkd, (student, teacher, 6.0, want))


def test_fullgraph_compile_matches_eager():
    module = kd_kernels.PKDLoss(loss_weight=6.0)
    student = levels(11, [(2, 3, 5, 7), (2, 3, 4, 4)], grad=True)
    teacher = levels(12, [(2, 3, 10, 14), (2, 3, 4, 4)])
    eager = module(tuple(student), tuple(teacher))
    eager.backward()
    grads = [x.grad.clone() for x in student]
    for x in student:
        x.grad = None
    compiled = torch.compile(lambda s, t: module(s, t), fullgraph=True, backend="aot_eager")
    loss = compiled(tuple(student), tuple(teacher))
    loss.backward()
    assert loss.item() == pytest.approx(eager.item(), rel=1e-12)
    for a, b in zip(student, grads):
        assert torch.allclose(a.grad, b, rtol=1e-12, atol=0)


def test_bad_inputs():
    student, teacher = levels(13), levels(14)
    with pytest.raises(KdInputError, match="resize the student"):
        kd_kernels.pkd_loss(student, [teacher[0], teacher[1][:, :, :2], teacher[2]])
    with pytest.raises(KdInputError, match="the unbiased standard deviation"):
        one = torch.ones((1, 2, 1, 1), dtype=torch.float64)
        kd_kernels.pkd_loss([one], [one])
    with pytest.raises(KdInputError, match="2 student and 3 teacher levels"):
        kd_kernels.pkd_loss(student[:2], teacher)
    with pytest.raises(KdInputError, match="give every level one dtype"):
        kd_kernels.pkd_loss([student[0], student[1].float()], [teacher[0], teacher[1].float()])
    with pytest.raises(KdInputError, match="parameter `loss_weight`"):
        kd_kernels.pkd_loss(student, teacher, float("nan"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the kernels are not run here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_the_cpu(dtype):
    if not kd_kernels.kernels_compiled():
        pytest.skip("this build has no kernels (nvcc was not found when it was built)")
    student = [x.to(dtype) for x in levels(15)]
    teacher = [x.to(dtype) for x in levels(16)]
    gpu_s = [x.cuda().requires_grad_(True) for x in student]
    cpu_s = [x.double().requires_grad_(True) for x in student]
    loss = kd_kernels.pkd_loss(gpu_s, [x.cuda() for x in teacher], 6.0)
    ref = kd_kernels.pkd_loss(cpu_s, [x.double() for x in teacher], 6.0)
    loss.backward()
    ref.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    for a, b in zip(gpu_s, cpu_s):
        assert a.grad.dtype == dtype
        err = (a.grad.double().cpu() - b.grad).abs().max() / b.grad.abs().max()
        assert err <= tol


MMRAZOR_NAMES = ["KDPKDLoss"]
# mmrazor's PKD detection configs: one PKDLoss on the FPN levels, loss_weight 6.
MMRAZOR_BUILDS = [
    (dict(type="KDPKDLoss", loss_weight=6.0, resize_stu=True),
     lambda m, s, t: isinstance(m, kd_kernels.PKDLoss) and m.loss_weight == 6.0 and m.resize_stu
     and m((s, s[:, :, :3]), (t, t[:, :, :3])).dim() == 0),
]
MMRAZOR_REPLACES = {"PKDLoss": kd_kernels.PKDLoss}
