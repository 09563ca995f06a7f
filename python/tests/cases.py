"""The shared tests' frame for the cases each family's test file declares (families.py gathers them): small
problems for the op, compile, autocast, CUDA-graph and DDP tests.

A family's test file declares what it has of:

* ``PAIR_CASES``: :class:`PairCase` s, the public call of a (student, teacher) loss with non-default
  parameters, and its op's arguments (the fast path against the op, dispatch modes, compile);
* ``STEPS``: name -> step case (:class:`PairStep`, or the family's own with ``build`` / ``loss`` /
  ``teacher_channels``): a training step's distillation term (compile, autocast, CUDA graphs);
* ``OP_CASES``: ``(id, op, args)`` for ``torch.library.opcheck``;
* ``BATCH_MEAN_LOSSES``: (student, teacher) calls whose loss of a batch is the mean of its halves' (DDP);
* ``CUDA_CASES``: ``(id, ours, official, teacher_grad)`` for the kernels against a formula on CUDA;
* ``MMRAZOR_NAMES``: the names kd_kernels.mmrazor registers for it, and ``MMRAZOR_BUILDS``: ``(config,
  check)`` for a config that builds one of them."""

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import kd_kernels

OPS = torch.ops.kd_kernels


def randn(shape, seed, dtype=torch.float64, device="cpu", scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def leaf(shape, seed, dtype=torch.float64, grad=True):
    return randn(shape, seed, dtype).requires_grad_(grad)


needs_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() or not kd_kernels.kernels_compiled(),
    reason="no CUDA GPU visible to torch, or this build has no kernels: the kernels are not run here")


@dataclass
class PairCase:
    """``call(student, teacher)``, the public function with non-default parameters (so that they are seen to
    pass through), and ``op(student, teacher, *op_args)`` the same call through its op (the ``want_*`` flags
    last: the student's gradient, and the teacher's where the op has one)."""

    name: str
    call: Callable
    op: object
    op_args: tuple


@dataclass
class PairStep:
    """A step whose loss is ``call(student, teacher)`` on a 1x1 convolution's 5 channels. ``inductor``: the
    step is among those test_compile.py compiles with inductor and test_ops.py runs under autocast (the
    others' inductor compiles would cost CI minutes; their own files compile them with aot_eager);
    ``autocast_exact``: outside autocast, the same bf16 logits give the same loss bit for bit."""

    call: Callable
    teacher_channels: int = 5
    inductor: bool = True
    autocast_exact: bool = False

    def build(self, module):
        module.conv = torch.nn.Conv2d(3, 5, 1)

    def loss(self, module, student, teacher):
        return self.call(student, teacher)


class Step(torch.nn.Module):
    """A student (1x1 convolutions from an input image) and what the loss needs besides, as parameters: the
    loss of ``forward(image, teacher...)`` is a training step's distillation term."""

    def __init__(self, case, dtype=torch.float64, device="cpu"):
        super().__init__()
        self.case = case
        case.build(self)
        self.to(device=device, dtype=dtype)

    def forward(self, image, teacher):
        return self.case.loss(self, self.conv(image), teacher)


def step_inputs(case, dtype=torch.float64, device="cpu"):
    """The image and the teacher's map of a :class:`Step`."""
    image = randn((4, 3, 4, 4), 1, dtype, device)
    return image, randn((4, case.teacher_channels, 4, 4), 2, dtype, device)
