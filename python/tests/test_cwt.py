"""CWT on CPU tensors (the crate's f64 reference through the C ABI): the loss and the gradients of the
student and of the four MLP parameters against the formula of docs/losses.md §5 in PyTorch autograd, a
gradcheck in double precision with respect to the student, dtypes, the module, and bad inputs; on CUDA
tensors (skipped without a GPU) the kernels against the formula; its cases for the shared tests (cases.py)."""

import random

import pytest
import torch
import torch.nn.functional as F
from cases import OPS, leaf, needs_kernels
from compare import rel_err

import kd_kernels
from kd_kernels import KdInputError


def cwt_reference(student, teacher, w1, b1, w2, b2, loss_weight, normalize):
    """CWT as docs/losses.md §5.3 states it (no official code exists; python-reference/cwt_reference.py):
    1x1 conv, ReLU, 1x1 conv, then MGD's ``MSELoss(reduction='sum') / N`` (``batch``) or the mean."""
    ch, cs = w1.shape[0], w1.shape[1]
    ct = w2.shape[0]
    hidden = F.relu(F.conv2d(student, w1.reshape(ch, cs, 1, 1), b1))
    y = F.conv2d(hidden, w2.reshape(ct, ch, 1, 1), b2)
    t = teacher.detach()
    if normalize == "batch":
        loss = F.mse_loss(y, t, reduction="sum") / t.shape[0]
    else:
        loss = F.mse_loss(y, t, reduction="mean")
    return loss_weight * loss


def f32_exact(shape, seed, scale=1.0):
    """Random values that are exact in f32, as float64: the crate reads the MLP in f32, so the reference and
    the crate then see the same parameters."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).double()


def problem(n, cs, ch, ct, h, w, seed):
    student = f32_exact((n, cs, h, w), seed)
    teacher = f32_exact((n, ct, h, w), seed + 1)
    params = [f32_exact((ch, cs), seed + 2, 0.5), f32_exact((ch,), seed + 3, 0.5),
              f32_exact((ct, ch), seed + 4, 0.5), f32_exact((ct,), seed + 5, 0.5)]
    return student, teacher, params


def shapes(count):
    rng = random.Random(5)
    fixed = [(1, 1, 1, 1, 1, 1), (2, 3, 4, 2, 3, 5), (1, 8, 3, 5, 1, 7)]
    return fixed + [tuple(rng.randint(1, 6) for _ in range(4)) + (rng.randint(1, 5), rng.randint(1, 7))
                    for _ in range(count)]


@pytest.mark.parametrize("dims", shapes(6))
@pytest.mark.parametrize("normalize,weight", [("batch", 2e-5), ("mean", 1.0), ("batch", -0.5)])
def test_cwt_matches_the_formula(dims, normalize, weight):
    student, teacher, params = problem(*dims, seed=sum(dims))
    ours_in = [student.clone().requires_grad_(True)] + [p.clone().requires_grad_(True) for p in params]
    ref_in = [student.clone().requires_grad_(True)] + [p.clone().requires_grad_(True) for p in params]
    loss = kd_kernels.cwt_loss(ours_in[0], teacher, *ours_in[1:], loss_weight=weight, normalize=normalize)
    ref = cwt_reference(ref_in[0], teacher, *ref_in[1:], weight, normalize)
    loss.backward()
    ref.backward()
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-300)
    for ours, want in zip(ours_in, ref_in):
        assert ours.grad.shape == want.grad.shape
        assert torch.allclose(ours.grad, want.grad, rtol=1e-9, atol=1e-12 * max(1.0, abs(weight)))


@pytest.mark.parametrize("dims", [(1, 2, 3, 2, 2, 3), (2, 3, 4, 5, 3, 1)])
@pytest.mark.parametrize("normalize", ["batch", "mean"])
def test_cwt_gradcheck_double_student(dims, normalize):
    """gradcheck with respect to the student; the parameters are read as f32 by the crate, so a finite
    difference of 1e-6 on them is below their resolution and is checked against autograd instead (above)."""
    student, teacher, params = problem(*dims, seed=3)
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s: kd_kernels.cwt_loss(s, teacher, *params, loss_weight=0.7, normalize=normalize), (student,))


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_cwt_low_precision_features(dtype, tolerance):
    student, teacher, params = problem(2, 6, 5, 4, 7, 9, seed=11)
    s = student.to(dtype).requires_grad_(True)
    t = teacher.to(dtype)
    p32 = [p.float().requires_grad_(True) for p in params]
    loss = kd_kernels.cwt_loss(s, t, *p32, loss_weight=1.0)
    loss.backward()
    assert loss.dtype == torch.float32 and s.grad.dtype == dtype and p32[0].grad.dtype == torch.float32
    s64 = s.detach().double().requires_grad_(True)
    p64 = [p.detach().double().requires_grad_(True) for p in p32]
    ref = cwt_reference(s64, t.double(), *p64, 1.0, "batch")
    ref.backward()

    def rel(a, b):
        return (a.double() - b).abs().max().item() / b.abs().max().item()

    assert rel(loss, ref) <= 1e-6
    assert rel(s.grad, s64.grad) <= tolerance
    for a, b in zip(p32, p64):
        assert rel(a.grad, b.grad) <= 1e-6


def test_cwt_module_and_convolution_weights():
    torch.manual_seed(0)
    module = kd_kernels.ChannelWiseTransformation(3, 4, hidden_channels=6, loss_weight=0.1).double()
    student = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, 5, 4, dtype=torch.float64)
    loss = module(student, teacher)
    loss.backward()
    # The same through PyTorch on f32-rounded parameters (what the crate reads).
    m = module.mlp
    params = [p.detach().float().double().requires_grad_(True)
              for p in (m.linear1.weight, m.linear1.bias, m.linear2.weight, m.linear2.bias)]
    s_ref = student.detach().clone().requires_grad_(True)
    ref = cwt_reference(s_ref, teacher, *params, 0.1, "batch")
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert m.linear1.weight.grad.shape == (6, 3, 1, 1)
    for p, r in zip((m.linear1.weight, m.linear1.bias, m.linear2.weight, m.linear2.bias), params):
        assert torch.allclose(p.grad, r.grad, rtol=1e-9, atol=1e-12)
    assert torch.allclose(student.grad, s_ref.grad, rtol=1e-9, atol=1e-12)
    assert sorted(n for n, _ in module.named_parameters()) == [
        "mlp.linear1.bias", "mlp.linear1.weight", "mlp.linear2.bias", "mlp.linear2.weight"]


def test_cwt_bad_inputs():
    student, teacher, params = problem(2, 3, 4, 2, 4, 5, seed=1)
    with pytest.raises(KdInputError) as err:
        kd_kernels.cwt_loss(student, teacher[..., :4], *params)
    assert str(err.value) == "teacher: shape [2, 2, 4, 4] does not match the expected [2, 2, 4, 5]"
    with pytest.raises(KdInputError) as err:
        kd_kernels.cwt_loss(student, teacher, params[0][:, :2], *params[1:])
    assert str(err.value) == "mlp.linear1.weight: shape [4, 2] does not match the expected [4, 3]"
    with pytest.raises(KdInputError) as err:
        kd_kernels.cwt_loss(student, teacher, params[0], params[1], params[2], params[3][:1])
    assert str(err.value) == "mlp.linear2.bias: shape [1] does not match the expected [2]"
    with pytest.raises(KdInputError) as err:
        kd_kernels.cwt_loss(student[0], teacher[0], *params)
    assert str(err.value) == "student: expected a rank-4 tensor (NCHW), got rank 3; reshape it to [N, C, H, W]"
    with pytest.raises(KdInputError, match="parameter `normalize` = 'sum' is invalid"):
        kd_kernels.cwt_loss(student, teacher, *params, normalize="sum")
    with pytest.raises(KdInputError, match="parameter `loss_weight` = inf is invalid"):
        kd_kernels.cwt_loss(student, teacher, *params, loss_weight=float("inf"))
    with pytest.raises(KdInputError, match="teacher: dtype f32 where f64 is needed"):
        kd_kernels.cwt_loss(student, teacher.float(), *params)
    with pytest.raises(KdInputError, match="mlp.linear1.bias: on meta"):
        kd_kernels.cwt_loss(student, teacher, params[0], params[1].to("meta"), *params[2:])


# ---- CUDA: the kernels (skipped without a GPU, or without kernels in this build) -------------------------

@needs_kernels
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("dims", [(1, 1, 1, 1, 1, 1), (2, 17, 9, 5, 13, 11), (3, 64, 48, 96, 32, 40)])
@pytest.mark.parametrize("normalize", ["batch", "mean"])
def test_cwt_kernels_match_the_formula_on_cuda(dtype, tolerance, dims, normalize):
    n, cs, ch, ct, h, w = dims
    g = torch.Generator(device="cuda").manual_seed(sum(dims))
    student = torch.randn((n, cs, h, w), generator=g, device="cuda").to(dtype)
    teacher = torch.randn((n, ct, h, w), generator=g, device="cuda").to(dtype)
    params = [torch.randn(shape, generator=g, device="cuda") * 0.3 for shape in ((ch, cs), (ch,), (ct, ch), (ct,))]
    s = student.clone().requires_grad_(True)
    p32 = [p.clone().requires_grad_(True) for p in params]
    loss = kd_kernels.cwt_loss(s, teacher, *p32, loss_weight=0.01, normalize=normalize)
    loss.backward()
    s64 = student.double().requires_grad_(True)
    p64 = [p.double().requires_grad_(True) for p in params]
    ref = cwt_reference(s64, teacher.double(), *p64, 0.01, normalize)
    ref.backward()
    assert rel_err(loss, ref) <= 1e-4  # the loss row of src/tolerance.rs
    assert rel_err(s.grad, s64.grad) <= tolerance
    for a, b in zip(p32, p64):
        assert rel_err(a.grad, b.grad) <= 1e-4


# ---- its cases for the shared tests ----------------------------------------------------------------------

class CwtStep:
    """The student's 4 channels through the module's MLP (hidden 5) against a teacher of 6."""

    teacher_channels = 6
    inductor = True
    autocast_exact = False

    def build(self, module):
        module.conv = torch.nn.Conv2d(3, 4, 1)
        module.cwt = kd_kernels.ChannelWiseTransformation(4, 6, hidden_channels=5, loss_weight=0.01)

    def loss(self, module, student, teacher):
        return module.cwt(student, teacher)


STEPS = {"cwt": CwtStep()}


def _op_case(dtype, want):
    w = [leaf(s, 10 + k, torch.float32, want) for k, s in enumerate(((4, 3, 1, 1), (4,), (2, 4), (2,)))]
    return (f"cwt-{dtype}-{want}", OPS.cwt,
            (leaf((2, 3, 4, 5), 7, dtype, want), leaf((2, 2, 4, 5), 8, dtype, False), *w, 0.01, "mean", want))


OP_CASES = [_op_case(dtype, want) for dtype in (torch.float64, torch.float32) for want in (True, False)]
MMRAZOR_NAMES = ["KDChannelWiseTransformation"]
MMRAZOR_BUILDS = [
    (dict(type="KDChannelWiseTransformation", student_channels=4, teacher_channels=3),
     lambda m, s, t: m(s, t[:, :3]).dim() == 0),
]
