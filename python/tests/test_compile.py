"""A training step with every loss under ``torch.compile(fullgraph=True)``: no graph break
(``torch._dynamo.explain``), and the compiled step's loss and gradients equal eager's, with ``aot_eager``
and with the default inductor backend.

Inductor compiles C++ on this 2-core machine, so each (loss, backend) is compiled once, with
``dynamic=False``, small shapes and one compile thread (a worker pool costs more than it saves here), and
shared by the tests that need it (about a minute for the six losses from a cold cache). The losses are the
steps each family's test file declares (families.py)."""

import copy
import functools

import pytest
import torch
from cases import Step, step_inputs
from families import LOSSES, PAIR_CASES, STEPS

BACKENDS = ("aot_eager", "inductor")
torch._inductor.config.compile_threads = 1


@functools.lru_cache(maxsize=None)
def compiled_step(name, backend):
    """The step of loss ``name``, its compiled forward, and the eager step it started from (a copy)."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    step = Step(STEPS[name])
    eager = copy.deepcopy(step)
    return step, torch.compile(step, backend=backend, fullgraph=True, dynamic=False), eager


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", LOSSES)
def test_no_graph_break(name):
    step = Step(STEPS[name])
    explained = torch._dynamo.explain(step)(*step_inputs(STEPS[name]))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", LOSSES)
def test_compiled_step_equals_eager(name, backend):
    step, compiled, eager = compiled_step(name, backend)
    image, teacher = step_inputs(STEPS[name])
    for module in (step, eager):
        module.zero_grad(set_to_none=True)
    loss = compiled(image, teacher)
    loss.backward()
    want = eager(image, teacher)
    want.backward()
    assert loss.dtype == want.dtype == torch.float64
    # Inductor computes the aten ops around the loss with its own kernels (a 1x1 convolution may become a
    # matmul), so the logits, and what follows from them, may differ from eager's by f64 rounding; the loss
    # op is the same C call (test_compiled_loss_is_the_eager_call_bit_for_bit). aot_eager runs eager's ops.
    exact = backend == "aot_eager"
    rtol, atol = (0, 0) if exact else (1e-12, 1e-14)
    torch.testing.assert_close(loss, want, rtol=rtol, atol=atol)
    got_grads, want_grads = grads(step), grads(eager)
    assert sorted(got_grads) == sorted(want_grads) and got_grads
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=rtol, atol=atol, msg=n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_loss_is_the_eager_call_bit_for_bit(backend):
    """With the logits as inputs, the compiled graph is the ops and the backward's multiplies: each pair
    loss and its gradients are eager's bit for bit, the teacher's too (where a loss has one; none is zeros)."""
    def losses(s, t):
        return tuple(case.call(s, t) for case in PAIR_CASES)

    compiled = torch.compile(losses, backend=backend, fullgraph=True, dynamic=False)
    s, t = (torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    got, want = compiled(s, t), losses(s, t)
    for case, got_loss, want_loss in zip(PAIR_CASES, got, want):
        torch.testing.assert_close(got_loss, want_loss, rtol=0, atol=0, msg=case.name)
        got_grads = torch.autograd.grad(got_loss, (s, t), retain_graph=True, allow_unused=True)
        want_grads = torch.autograd.grad(want_loss, (s, t), retain_graph=True, allow_unused=True)
        for x, a, b in zip((s, t), got_grads, want_grads):
            a, b = (torch.zeros_like(x) if g is None else g for g in (a, b))
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=case.name)
