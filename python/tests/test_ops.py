"""The custom ops themselves (``torch.ops.kd_kernels.*``): ``torch.library.opcheck`` on every op (schema,
autograd registration, the fake kernel against the real one, AOT dispatch with dynamic shapes), the fake
kernels under FakeTensorMode, the public functions going through the ops, and autocast."""

import pytest
import torch
from ops_cases import LOSSES, Step, pair_loss, randn, step_inputs
from reference import cwd_official, pixel_kd_official
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import kd_kernels
from kd_kernels.families import FAMILIES

OPS = torch.ops.kd_kernels


def leaf(shape, seed, dtype=torch.float64, grad=True):
    return randn(shape, seed, dtype).requires_grad_(grad)


def semckd_args(dtype, want):
    g = Step("semckd", dtype=torch.float64)
    image, teacher = step_inputs("semckd")
    with torch.no_grad():
        s1 = g.conv(image)
        s2 = torch.nn.functional.avg_pool2d(g.conv2(s1), 2)
    tensors = lambda xs: [x.detach().to(dtype).requires_grad_(want) for x in xs]  # noqa: E731
    return (tensors([s1, s2]), [teacher.to(dtype)], tensors(list(g.proj)), tensors(list(g.query)),
            tensors(list(g.key)), 400.0, 0.0, want)


def op_cases():
    shape = (2, 3, 4, 5)
    cases = []
    for dtype in (torch.float64, torch.float32):
        for want_s, want_t in ((True, True), (True, False), (False, True), (False, False)):
            cases.append((f"cwd-{dtype}-{want_s}-{want_t}", OPS.cwd,
                          (leaf(shape, 1, dtype, want_s), leaf(shape, 2, dtype, want_t), 2.0, 3.0, want_s, want_t)))
        for want in (True, False):
            cases.append((f"pixel_kd-{dtype}-{want}", OPS.pixel_kd,
                          (leaf(shape, 3, dtype, want), leaf(shape, 4, dtype, False), 1.5, 10.0, "pixelmean", True,
                           want)))
            cases.append((f"dist-{dtype}-{want}", OPS.dist,
                          (leaf(shape, 9, dtype, want), leaf(shape, 10, dtype, False), 2.0, 1.5, 0.5, 3.0, want)))
            cases.append((f"icsd-{dtype}-{want}", OPS.icsd,
                          (leaf(shape, 5, dtype, want), leaf(shape, 6, dtype, False), 1.0, 9500.0, "paper", want)))
            w = [leaf(s, 10 + k, torch.float32, want) for k, s in enumerate(((4, 3, 1, 1), (4,), (2, 4), (2,)))]
            cases.append((f"cwt-{dtype}-{want}", OPS.cwt,
                          (leaf(shape, 7, dtype, want), leaf((2, 2, 4, 5), 8, dtype, False), *w, 0.01, "mean", want)))
            cases.append((f"semckd-{dtype}-{want}", OPS.semckd, semckd_args(dtype, want)))
    return cases


CASES = op_cases()


@pytest.mark.parametrize("op,args", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def test_every_loss_is_an_op_with_cpu_and_cuda_kernels():
    """Every op the families define (each its ``OPS``); every family defines at least one."""
    for family in FAMILIES:
        assert family.OPS, family.__name__
    for op in [op for family in FAMILIES for op in family.OPS]:
        for key in ("CPU", "CUDA", "Meta", "Autograd"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), key), (op.name(), key)


def test_fake_kernels_state_shapes_and_dtypes_only():
    with FakeTensorMode():
        s = torch.empty((2, 3, 4, 5), dtype=torch.bfloat16)
        loss, gs, gt = OPS.cwd(s, s, 4.0, 3.0, True, False)
        assert loss.shape == () and loss.dtype == torch.float32
        assert gs.shape == s.shape and gs.dtype == torch.bfloat16 and gt.numel() == 0
        loss, gs = OPS.pixel_kd(s.double(), s.double(), 1.0, 1.0, "mean", False, False)
        assert loss.dtype == torch.float64 and gs.numel() == 0
        # A public function under FakeTensorMode (what torch.compile does) reaches the fake kernel too.
        assert kd_kernels.icsd_loss(s, s).dtype == torch.float32


class OpLog(TorchDispatchMode):
    """Records the ops that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_under_a_dispatch_mode_the_public_functions_call_the_ops():
    s, t = leaf((2, 3, 4, 5), 1), leaf((2, 3, 4, 5), 2, grad=False)
    for name in ("cwd", "pixel_kd", "icsd", "dist"):
        with OpLog() as log:
            pair_loss(name)(s, t).backward()
        assert getattr(OPS, name).default in log.seen, (name, log.seen)


@pytest.mark.parametrize("name", ["cwd", "pixel_kd", "icsd", "dist"])
def test_eager_fast_path_equals_the_op(name):
    """In eager mode with plain tensors the public functions call the op's kernel directly (_eager.py): the
    loss and gradients are those of the op through the dispatcher, bit for bit."""
    args = {"cwd": (2.0, 3.0), "pixel_kd": (1.5, 10.0, "batchmean", True), "icsd": (1.0, 95.0, "official"),
            "dist": (2.0, 1.5, 0.5, 3.0)}[name]
    s1, s2 = leaf((2, 3, 4, 5), 1), leaf((2, 3, 4, 5), 1)
    t = leaf((2, 3, 4, 5), 2, grad=False)
    fast = pair_loss(name)(s1, t)
    assert type(fast.grad_fn).__name__ == "FusedBackward"
    want = [True, False] if name == "cwd" else [True]
    through_op = getattr(OPS, name)(s2, t, *args, *want)[0]
    assert "kd_kernels" in type(through_op.grad_fn).__name__
    (fast * 2.5).backward()
    (through_op * 2.5).backward()
    assert torch.equal(fast, through_op) and torch.equal(s1.grad, s2.grad)
    with torch.no_grad():
        assert pair_loss(name)(s1, t).grad_fn is None


def test_gradient_outputs_are_constants_to_autograd():
    """A second derivative is not provided (as with ``once_differentiable`` before): the op's gradient outputs
    do not require grad, so differentiating the gradient again raises instead of returning a wrong value."""
    s, t = leaf((2, 3, 4, 5), 1), leaf((2, 3, 4, 5), 2, grad=False)
    (grad,) = torch.autograd.grad(kd_kernels.cwd_loss(s, t), s, create_graph=True)
    assert not grad.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(grad.sum(), s)


@pytest.mark.parametrize("name", LOSSES)
def test_autocast_bf16_keeps_the_logits_dtype_and_returns_f32(name):
    """Under CPU autocast the convolution gives bf16 logits; the op has no autocast rule, so it takes them in
    bf16 (no cast to f32 first) and returns an f32 loss equal to the same call outside autocast."""
    step = Step(name, dtype=torch.float32)
    image, teacher = step_inputs(name, torch.float32)
    teacher16 = teacher.to(torch.bfloat16)  # a teacher run under autocast too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student = step.conv(image)
        assert student.dtype == torch.bfloat16
        loss = step(image, teacher16)
    assert loss.dtype == torch.float32
    loss.backward()
    assert step.conv.weight.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_again = step(image, teacher16)
    # Outside autocast, with the same bf16 logits.
    if name in ("cwd", "pixel_kd", "icsd", "aicsd"):
        assert torch.equal(pair_loss(name)(student.detach(), teacher16), loss_again.detach())


def test_autocast_value_against_the_formula():
    conv = torch.nn.Conv2d(3, 5, 1)
    image, teacher = randn((2, 3, 6, 7), 1, torch.float32), randn((2, 5, 6, 7), 2, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student = conv(image)
        cwd = kd_kernels.cwd_loss(student, teacher)
        kd = kd_kernels.pixel_kd_loss(student, teacher)
    s64, t64 = student.detach().double(), teacher.double()
    assert cwd.dtype == kd.dtype == torch.float32
    assert cwd.item() == pytest.approx(cwd_official(s64, t64, 4.0, 3.0).item(), rel=1e-6)
    assert kd.item() == pytest.approx(pixel_kd_official(s64, t64, 1.0, 10.0, "mean", False).item(), rel=1e-6)
