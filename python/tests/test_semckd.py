"""SemCKD on CPU tensors (the crate's f64 reference through the C ABI) against the official formulas in
PyTorch (python-reference/semckd_reference.py: SelfA + SemCKDLoss with the regressor outputs given): loss,
attention and every gradient, gradcheck in double precision for the maps and the regressor outputs, bad
inputs."""

import sys
from pathlib import Path

import pytest
import torch
from cases import OPS, Step, needs_kernels, randn, step_inputs
from compare import rel_err

import kd_kernels
from kd_kernels import KdInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python-reference"))
from semckd_reference import init_params, semckd  # noqa: E402

NAMES = ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")


def problem(batch, student_dims, teacher_dims, seed):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn((batch, *d), generator=g).double() for d in student_dims]
    teacher = [torch.randn((batch, *d), generator=g).double() for d in teacher_dims]
    proj = [[torch.randn((batch, t[0], min(s[1], t[1]), min(s[1], t[1])), generator=g).double()
             for t in teacher_dims] for s in student_dims]
    params = {k: v.double() for k, v in init_params(len(student_dims), len(teacher_dims), batch, g).items()}
    query = [[params[f"query.{i}.{n}"] for n in NAMES] for i in range(len(student_dims))]
    key = [[params[f"key.{j}.{n}"] for n in NAMES] for j in range(len(teacher_dims))]
    return student, teacher, proj, params, query, key


CASES = [
    (4, [(3, 4, 4)], [(2, 4, 4)]),
    (8, [(3, 8, 8), (5, 4, 4)], [(6, 4, 4), (2, 8, 8), (3, 2, 2)]),
    (5, [(2, 3, 3), (4, 6, 6)], [(3, 6, 6)]),
]


@pytest.mark.parametrize("batch,student_dims,teacher_dims", CASES)
@pytest.mark.parametrize("eps", [None, 1e-6])
def test_semckd_matches_the_official_code(batch, student_dims, teacher_dims, eps):
    student, teacher, proj, params, query, key = problem(batch, student_dims, teacher_dims, seed=batch)
    leaves = lambda xs: [x.clone().requires_grad_(True) for x in xs]  # noqa: E731
    s1, s2 = leaves(student), leaves(student)
    p1 = [leaves(row) for row in proj]
    p2 = [leaves(row) for row in proj]
    q1 = [leaves(m) for m in query]
    k1 = [leaves(m) for m in key]
    params2 = {name: v.clone().requires_grad_(True) for name, v in params.items()}
    loss, attention = kd_kernels.semckd_loss(s1, teacher, p1, q1, k1, 400.0, eps, return_attention=True)
    ref, ref_attention = semckd(s2, teacher, p2, params2, 400.0, eps)
    loss.backward()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
    assert torch.allclose(attention, ref_attention.detach(), rtol=1e-9, atol=1e-12)
    for a, b in zip(s1, s2):
        assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-10)
    for row1, row2 in zip(p1, p2):
        for a, b in zip(row1, row2):
            assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-10)
    for side, mlps in (("query", q1), ("key", k1)):
        for k, m in enumerate(mlps):
            for n, a in zip(NAMES, m):
                assert torch.allclose(a.grad, params2[f"{side}.{k}.{n}"].grad, rtol=1e-8, atol=1e-10), f"{side}.{k}.{n}"


def test_semckd_gradcheck_double_maps_and_proj():
    student, teacher, proj, _, query, key = problem(4, [(2, 3, 3)], [(3, 3, 3), (2, 2, 2)], seed=1)
    inputs = [student[0].requires_grad_(True), proj[0][0].requires_grad_(True), proj[0][1].requires_grad_(True)]
    assert torch.autograd.gradcheck(
        lambda s, p0, p1: kd_kernels.semckd_loss([s], teacher, [[p0, p1]], query, key, 3.0, None), inputs)


def test_semckd_bad_inputs():
    student, teacher, proj, _, query, key = problem(4, [(3, 4, 4)], [(2, 4, 4)], seed=2)
    with pytest.raises(KdInputError) as err:
        kd_kernels.semckd_loss(student, teacher, [[proj[0][0][:, :, :3, :3]]], query, key)
    assert str(err.value) == "proj[i][j]: shape [4, 2, 3, 3] does not match the expected [4, 2, 4, 4] (i = 0, j = 0)"
    with pytest.raises(KdInputError, match="query\\[0\\].linear1.weight: shape"):
        kd_kernels.semckd_loss(student, teacher, proj, [[query[0][0][:, :3]] + query[0][1:]], key)
    with pytest.raises(KdInputError, match="batch of a feature map"):
        kd_kernels.semckd_loss(student, [teacher[0][:2]], [[proj[0][0]]], query, key)
    with pytest.raises(KdInputError, match="parameter `eps` = -1 is invalid"):
        kd_kernels.semckd_loss(student, teacher, proj, query, key, eps=-1.0)
    with pytest.raises(KdInputError, match="proj: expected 1 rows"):
        kd_kernels.semckd_loss(student, teacher, [], query, key)


# ---- CUDA: the kernels (skipped without a GPU, or without kernels in this build) -------------------------

@needs_kernels
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_semckd_kernels_match_the_official_code_on_cuda(dtype, tolerance):
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
    assert rel_err(loss, ref) <= 1e-4  # the loss row of src/tolerance.rs
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


# ---- its cases for the shared tests ----------------------------------------------------------------------

class SemckdStep:
    """Two student stages, one regressor output per (student, teacher) pair, the MLPs, as parameters; a
    teacher of 2 channels."""

    teacher_channels = 2
    inductor = True
    autocast_exact = False

    def build(self, module):
        module.conv = torch.nn.Conv2d(3, 4, 1)
        module.conv2 = torch.nn.Conv2d(4, 6, 1)
        module.proj = torch.nn.ParameterList([torch.nn.Parameter(randn(shape, 40 + k))
                                              for k, shape in enumerate(((4, 2, 4, 4), (4, 2, 2, 2)))])
        params = init_params(2, 1, 4, torch.Generator().manual_seed(3))
        module.query = torch.nn.ParameterList([torch.nn.Parameter(params[f"query.{i}.{n}"].double())
                                               for i in range(2) for n in NAMES])
        module.key = torch.nn.ParameterList([torch.nn.Parameter(params[f"key.0.{n}"].double()) for n in NAMES])

    def loss(self, module, s, teacher):
        s2 = torch.nn.functional.avg_pool2d(module.conv2(s), 2)
        query = [list(module.query[4 * i:4 * i + 4]) for i in range(2)]
        # As a regressor's output would be, in the maps' dtype (bf16 under autocast).
        proj = [[module.proj[0].to(s.dtype)], [module.proj[1].to(s.dtype)]]
        return kd_kernels.semckd_loss([s, s2], [teacher], proj, query, [list(module.key)])


STEPS = {"semckd": SemckdStep()}


def _op_args(dtype, want):
    g = Step(STEPS["semckd"], dtype=torch.float64)
    image, teacher = step_inputs(STEPS["semckd"])
    with torch.no_grad():
        s1 = g.conv(image)
        s2 = torch.nn.functional.avg_pool2d(g.conv2(s1), 2)
    tensors = lambda xs: [x.detach().to(dtype).requires_grad_(want) for x in xs]  # noqa: E731
    return (tensors([s1, s2]), [teacher.to(dtype)], tensors(list(g.proj)), tensors(list(g.query)),
            tensors(list(g.key)), 400.0, 0.0, want)


OP_CASES = [(f"semckd-{dtype}-{want}", OPS.semckd, _op_args(dtype, want))
            for dtype in (torch.float64, torch.float32) for want in (True, False)]
