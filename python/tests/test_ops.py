"""The custom ops themselves (``torch.ops.kd_kernels.*``), on the cases each family's test file declares
(families.py): ``torch.library.opcheck`` (schema, autograd registration, the fake kernel against the real
one, AOT dispatch with dynamic shapes), every op's kernels, the public functions going through the ops, the
eager fast path, and autocast."""

import pytest
import torch
from cases import Step, leaf, step_inputs
from families import LOSSES, PAIR_CASES, STEPS, declared
from torch.utils._python_dispatch import TorchDispatchMode

from kd_kernels.families import FAMILIES

OPS = torch.ops.kd_kernels
CASES = declared("OP_CASES")


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
    assert PAIR_CASES
    for case in PAIR_CASES:
        with OpLog() as log:
            case.call(s, t).backward()
        assert case.op.default in log.seen, (case.name, log.seen)


@pytest.mark.parametrize("case", PAIR_CASES, ids=[c.name for c in PAIR_CASES])
def test_eager_fast_path_equals_the_op(case):
    """In eager mode with plain tensors the public functions call the op's kernel directly (_eager.py): the
    loss and gradients are those of the op through the dispatcher, bit for bit."""
    s1, s2 = leaf((2, 3, 4, 5), 1), leaf((2, 3, 4, 5), 1)
    t = leaf((2, 3, 4, 5), 2, grad=False)
    fast = case.call(s1, t)
    assert type(fast.grad_fn).__name__ == "FusedBackward"
    through_op = case.op(s2, t, *case.op_args)[0]
    assert "kd_kernels" in type(through_op.grad_fn).__name__
    (fast * 2.5).backward()
    (through_op * 2.5).backward()
    assert torch.equal(fast, through_op) and torch.equal(s1.grad, s2.grad)
    with torch.no_grad():
        assert case.call(s1, t).grad_fn is None


@pytest.mark.parametrize("case", PAIR_CASES, ids=[c.name for c in PAIR_CASES])
def test_gradient_outputs_are_constants_to_autograd(case):
    """A second derivative is not provided (as with ``once_differentiable`` before): the op's gradient outputs
    do not require grad, so differentiating the gradient again raises instead of returning a wrong value."""
    s, t = leaf((2, 3, 4, 5), 1), leaf((2, 3, 4, 5), 2, grad=False)
    (grad,) = torch.autograd.grad(case.call(s, t), s, create_graph=True)
    assert not grad.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.autograd.grad(grad.sum(), s)


@pytest.mark.parametrize("name", LOSSES)
def test_autocast_bf16_keeps_the_logits_dtype_and_returns_f32(name):
    """Under CPU autocast the convolution gives bf16 logits; the op has no autocast rule, so it takes them in
    bf16 (no cast to f32 first) and returns an f32 loss equal to the same call outside autocast."""
    step = Step(STEPS[name], dtype=torch.float32)
    image, teacher = step_inputs(STEPS[name], torch.float32)
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
    if STEPS[name].autocast_exact:
        assert torch.equal(STEPS[name].call(student.detach(), teacher16), loss_again.detach())
