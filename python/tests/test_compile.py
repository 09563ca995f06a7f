"""A training step with every loss under ``torch.compile(fullgraph=True)``: no graph break
(``torch._dynamo.explain``), and the compiled step's loss and gradients equal eager's, with ``aot_eager``
and with the default inductor backend.

Inductor compiles C++ on this 2-core machine, so each (loss, backend) is compiled once, with
``dynamic=False`` and small shapes, and shared by the tests that need it."""

import copy
import functools

import pytest
import torch
from ops_cases import LOSSES, Step, step_inputs

import kd_kernels

BACKENDS = ("aot_eager", "inductor")


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
    # The same C ABI calls on the same inputs, and the same aten ops around them (f64): equal, not close.
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    got_grads, want_grads = grads(step), grads(eager)
    assert sorted(got_grads) == sorted(want_grads) and got_grads
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-14, atol=1e-15, msg=n)


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
