"""A training step with every loss under ``torch.compile(fullgraph=True)``: no graph break
(``torch._dynamo.explain``), and the compiled step's loss and gradients equal eager's, with ``aot_eager``
and with the default inductor backend.

Inductor compiles C++ on this 2-core machine, so each (loss, backend) is compiled once, with
``dynamic=False``, small shapes and one compile thread (a worker pool costs more than it saves here), and
shared by the tests that need it (about a minute for the six losses from a cold cache)."""

import copy
import functools

import pytest
import torch
from ops_cases import LOSSES, Step, step_inputs

import kd_kernels

BACKENDS = ("aot_eager", "inductor")
torch._inductor.config.compile_threads = 1


@functools.lru_cache(maxsize=None)
def compiled_step(name, backend):
    """The step of loss ``name``, its compiled forward, and the eager step it started from (a copy)."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    step = Step(name)
    eager = copy.deepcopy(step)
    return step, torch.compile(step, backend=backend, fullgraph=True, dynamic=False), eager


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", LOSSES)
def test_no_graph_break(name):
    step = Step(name)
    explained = torch._dynamo.explain(step)(*step_inputs(name))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", LOSSES)
def test_compiled_step_equals_eager(name, backend):
    step, compiled, eager = compiled_step(name, backend)
    image, teacher = step_inputs(name)
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
    """With the logits as inputs, the compiled graph is the op and the backward's multiply: the loss and the
    gradients are eager's bit for bit, the teacher's too."""
    def losses(s, t):
        return kd_kernels.cwd_loss(s, t, 2.0, 3.0) + kd_kernels.pixel_kd_loss(s, t.detach(), 1.5, 10.0, "sum")

    compiled = torch.compile(losses, backend=backend, fullgraph=True, dynamic=False)
    s, t = (torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    got = compiled(s, t)
    got_s, got_t = torch.autograd.grad(got, (s, t))
    want = losses(s, t)
    want_s, want_t = torch.autograd.grad(want, (s, t))
    for a, b in ((got, want), (got_s, want_s), (got_t, want_t)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compiled_no_grad_and_module_levels():
    """Under ``no_grad`` the compiled call asks for no gradient; a module with FPN-like levels compiles to
    one graph too."""
    module = kd_kernels.ChannelWiseDivergence(tau=2.0, loss_weight=3.0)
    levels = [torch.randn(2, 3, 8 // k, 8 // k, dtype=torch.float64) for k in (1, 2, 4)]
    teacher = [x.flip(0) for x in levels]
    explained = torch._dynamo.explain(module)(tuple(levels), tuple(teacher))
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        got = compiled(tuple(levels), tuple(teacher))
    want = sum(kd_kernels.cwd_loss(s, t, 2.0, 3.0) for s, t in zip(levels, teacher))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
