"""kd_kernels on CUDA tensors: the kernels against the official formulas in PyTorch on CUDA (loss and
gradients, odd shapes, every dtype), on the current stream, without host synchronisation. Skipped, with the
reason, where there is no GPU."""

import sys
from pathlib import Path

import pytest
import torch
from reference import cwd_official, cwt_reference, pixel_kd_official

import kd_kernels
from kd_kernels import KdInputError

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible to torch: the kernels' tests need one", allow_module_level=True)

if not kd_kernels.kernels_compiled():
    def test_cuda_without_kernels_raises_kernels_unavailable():
        s = torch.randn(1, 2, 3, 4, device="cuda")
        with pytest.raises(kd_kernels.KernelsUnavailableError, match="built without nvcc"):
            kd_kernels.cwd_loss(s, s)

    pytest.skip("a GPU is present but this build has no kernels (nvcc was not found when it was built)",
                allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python-reference" / "official"))
from dist_kd_dist import DIST  # noqa: E402

# The repository's tolerance table (src/tolerance.rs): loss, GPU gradients.
LOSS_TOLERANCE = 1e-4
GRAD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 19, 17, 33), (1, 5, 1, 4099), (2, 21, 64, 128), (1, 150, 9, 9)]


def rel_err(got, want):
    return (got.double() - want.double()).abs().max().item() / max(want.double().abs().max().item(), 1e-30)


def logits(shape, seed, dtype, spread=4.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(shape, generator=g, device="cuda", dtype=torch.float32) * spread).to(dtype)


CASES = [
    ("cwd", lambda s, t: kd_kernels.cwd_loss(s, t, 4.0, 3.0), lambda s, t: cwd_official(s, t, 4.0, 3.0), True),
    ("cwd_tau1", lambda s, t: kd_kernels.cwd_loss(s, t, 1.0, 10.0), lambda s, t: cwd_official(s, t, 1.0, 10.0), True),
    ("pixel_kd", lambda s, t: kd_kernels.pixel_kd_loss(s, t),
     lambda s, t: pixel_kd_official(s, t, 1.0, 10.0, "mean", False), False),
    ("pixel_kd_batchmean_tau4", lambda s, t: kd_kernels.pixel_kd_loss(s, t, 4.0, 1.0, "batchmean", True),
     lambda s, t: pixel_kd_official(s, t, 4.0, 1.0, "batchmean", True), False),
    ("dist", lambda s, t: kd_kernels.dist_loss(s, t, 2.0, 1.5, 0.5, 3.0),
     lambda s, t: 3.0 * 2.0**2 * DIST(1.5, 0.5)(s / 2.0, t / 2.0), False),
]


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
    kd_kernels.cwd_loss(s, t)  # first call: loads the kernels, sizes the workspace (may synchronise once)
    kd_kernels.pixel_kd_loss(s, t)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = kd_kernels.cwd_loss(s, t) + kd_kernels.pixel_kd_loss(s, t)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


def test_runs_on_the_current_stream():
    shape = (2, 19, 33, 65)
    student, teacher = logits(shape, 5, torch.float32), logits(shape, 6, torch.float32)
    expected = kd_kernels.cwd_loss(student, teacher)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = kd_kernels.cwd_loss(student, teacher)
    torch.cuda.current_stream().wait_stream(side)
    assert got.item() == expected.item()  # deterministic kernels: bitwise equal


def test_cuda_bad_inputs():
    s = logits((2, 3, 4, 5), 7, torch.float32)
    with pytest.raises(KdInputError) as err:
        kd_kernels.cwd_loss(s.double(), s.double())
    assert err.value.status == 6 and "not f64" in str(err.value)
    with pytest.raises(KdInputError, match="teacher: on cpu while the student is on cuda"):
        kd_kernels.cwd_loss(s, s.cpu())
    with pytest.raises(KdInputError, match="does not match the expected"):
        kd_kernels.pixel_kd_loss(s, s[:, :2].contiguous())


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
    assert rel_err(loss, ref) <= LOSS_TOLERANCE
    assert rel_err(s.grad, s64.grad) <= tolerance
    for a, b in zip(p32, p64):
        assert rel_err(a.grad, b.grad) <= 1e-4


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_semckd_kernels_match_the_official_code_on_cuda(dtype, tolerance):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python-reference"))
    from semckd_reference import init_params, semckd

    batch, s_dims, t_dims = 8, [(16, 8, 8), (32, 4, 4)], [(24, 8, 8), (48, 4, 4), (64, 2, 2)]
    g = torch.Generator(device="cuda").manual_seed(0)
    student = [torch.randn((batch, *d), generator=g, device="cuda").to(dtype) for d in s_dims]
    teacher = [torch.randn((batch, *d), generator=g, device="cuda").to(dtype) for d in t_dims]
    proj = [[torch.randn((batch, t[0], min(s[1], t[1]), min(s[1], t[1])), generator=g, device="cuda").to(dtype)
             for t in t_dims] for s in s_dims]
    params = {k: v.cuda() for k, v in init_params(len(s_dims), len(t_dims), batch, torch.Generator().manual_seed(1)).items()}
    names = ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")
    query = [[params[f"query.{i}.{n}"].clone().requires_grad_(True) for n in names] for i in range(len(s_dims))]
    key = [[params[f"key.{j}.{n}"].clone().requires_grad_(True) for n in names] for j in range(len(t_dims))]
    s_leaves = [x.clone().requires_grad_(True) for x in student]
    p_leaves = [[x.clone().requires_grad_(True) for x in row] for row in proj]
    loss = kd_kernels.semckd_loss(s_leaves, teacher, p_leaves, query, key)
    loss.backward()
    s64 = [x.double().requires_grad_(True) for x in student]
    p64 = [[x.double().requires_grad_(True) for x in row] for row in proj]
    params64 = {k: v.double().requires_grad_(True) for k, v in params.items()}
    ref, _ = semckd(s64, [t.double() for t in teacher], p64, params64, 400.0)
    ref.backward()
    assert rel_err(loss, ref) <= LOSS_TOLERANCE
    for a, b in zip(s_leaves, s64):
        assert rel_err(a.grad, b.grad) <= tolerance
    for ra, rb in zip(p_leaves, p64):
        for a, b in zip(ra, rb):
            assert rel_err(a.grad, b.grad) <= tolerance
    # The MLP gradients (f32) against the same table row, as tests/gpu/semckd.rs holds them.
    for side, mlps in (("query", query), ("key", key)):
        for k, m in enumerate(mlps):
            for n, a in zip(names, m):
                assert rel_err(a.grad, params64[f"{side}.{k}.{n}"].grad) <= tolerance
