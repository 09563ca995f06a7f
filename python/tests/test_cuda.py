"""kd_kernels on CUDA tensors: the kernels against the official formulas in PyTorch on CUDA (loss and
gradients, odd shapes, every dtype: the cases each family's test file declares, families.py), on the current
stream, without host synchronisation. Skipped, with the reason, where there is no GPU."""

import pytest
import torch
from families import PAIR_CASES, declared

import kd_kernels

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible to torch: the kernels' tests need one", allow_module_level=True)

if not kd_kernels.kernels_compiled():
    def test_cuda_without_kernels_raises_kernels_unavailable():
        s = torch.randn(1, 2, 3, 4, device="cuda")
        with pytest.raises(kd_kernels.KernelsUnavailableError, match="built without nvcc"):
            PAIR_CASES[0].call(s, s)

    pytest.skip("a GPU is present but this build has no kernels (nvcc was not found when it was built)",
                allow_module_level=True)

# The repository's tolerance table (src/tolerance.rs): loss, GPU gradients.
LOSS_TOLERANCE = 1e-4
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 19, 17, 33), (1, 5, 1, 4099), (2, 21, 64, 128), (1, 150, 9, 9)]


def rel_err(got, want):
    return (got.double() - want.double()).abs().max().item() / max(want.double().abs().max().item(), 1e-30)


def logits(shape, seed, dtype, spread=4.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(shape, generator=g, device="cuda", dtype=torch.float32) * spread).to(dtype)


CASES = declared("CUDA_CASES")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_match_official_formula_on_cuda(case, dtype, shape):
    _, ours, official, teacher_grad = case
    student, teacher = logits(shape, 1, dtype), logits(shape, 2, dtype)
    s = student.clone().requires_grad_(True)
    t = teacher.clone().requires_grad_(teacher_grad)
    loss = ours(s, t)
    loss.backward()
    assert loss.device == student.device and loss.dtype == torch.float32
    # The reference in double from the same rounded inputs, on CUDA.
    s64 = student.double().requires_grad_(True)
    t64 = teacher.double().requires_grad_(teacher_grad)
    ref = official(s64, t64)
    ref.backward()
    assert rel_err(loss, ref) <= LOSS_TOLERANCE
    assert s.grad.dtype == dtype
    assert rel_err(s.grad, s64.grad) <= GRAD_TOLERANCE[dtype]
    if teacher_grad:
        assert rel_err(t.grad, t64.grad) <= GRAD_TOLERANCE[dtype]


def test_no_host_synchronisation():
    s = logits((4, 19, 64, 64), 3, torch.bfloat16).requires_grad_(True)
    t = logits((4, 19, 64, 64), 4, torch.bfloat16)
    for case in PAIR_CASES:  # first call: loads the kernels, sizes the workspace (may synchronise once)
        case.call(s, t)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = sum(case.call(s, t) for case in PAIR_CASES)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("case", PAIR_CASES, ids=[c.name for c in PAIR_CASES])
def test_runs_on_the_current_stream(case):
    shape = (2, 19, 33, 65)
    student, teacher = logits(shape, 5, torch.float32), logits(shape, 6, torch.float32)
    expected = case.call(student, teacher)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = case.call(student, teacher)
    torch.cuda.current_stream().wait_stream(side)
    assert got.item() == expected.item()  # deterministic kernels: bitwise equal
