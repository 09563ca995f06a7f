"""SKD and CIRKD (the crate's f64 reference through the C ABI on CPU tensors, the kernels on CUDA ones) against
the official computations written directly in PyTorch with their ``P x P`` matrices (reference.py), on small
odd shapes whose channel counts differ: every pooling mode, every dtype, gradcheck, the modules, bad inputs,
the ops (opcheck) and ``torch.compile(fullgraph=True)``. The CUDA part is skipped, with the reason, without a
GPU."""

import pytest
import torch
from compare import loss_and_grad
from ops_cases import RELATION_LOSSES, Step, step_inputs
from reference import cirkd_pxp, skd_pxp

import kd_kernels
from kd_kernels import KdInputError


def features(shape, seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def pair(s_shape, ct, seed=1, dtype=torch.float64, device="cpu"):
    n, _, h, w = s_shape
    return features(s_shape, seed, dtype, device), features((n, ct, h, w), seed + 1, dtype, device)


def ours(name, params):
    fn = kd_kernels.skd_loss if name == "skd" else kd_kernels.cirkd_loss
    return lambda s, t: fn(s, t, **params)


def reference(name, params):
    fn = skd_pxp if name == "skd" else cirkd_pxp
    return lambda s, t: fn(s, t, **params)


# (loss, student shape, Ct, parameters): odd sizes (edge windows of the pools), Cs != Ct and Cs = Ct.
CASES = [
    ("skd", (2, 3, 5, 7), 4, dict(loss_weight=10.0, pool=2)),
    ("skd", (1, 5, 4, 3), 2, dict(pool=1)),
    ("skd", (3, 4, 3, 5), 4, dict(loss_weight=2.0)),  # Cs = Ct: the crate's difference form
    ("cirkd", (3, 4, 5, 3), 6, dict(tau=0.1)),  # auto: below 256x256, not pooled
    ("cirkd", (2, 3, 4, 7), 2, dict(tau=0.5, loss_weight=3.0, pool="none")),
    ("cirkd", (2, 5, 7, 5), 3, dict(pool=3)),
    ("cirkd", (4, 2, 5, 6), 2, dict(tau=1.0, pool=2)),
]
IDS = [f"{c[0]}-{'x'.join(map(str, c[1]))}-ct{c[2]}-{c[3].get('pool', 'default')}" for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_the_pxp_reference(case):
    name, s_shape, ct, params = case
    student, teacher = pair(s_shape, ct)
    loss, grad = loss_and_grad(lambda s: ours(name, params)(s, teacher), student)
    ref, ref_grad = loss_and_grad(lambda s: reference(name, params)(s, teacher), student)
    assert loss.dtype == torch.float64 and grad.dtype == torch.float64
    assert loss.item() > 0
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-15)
    assert torch.allclose(grad, ref_grad, rtol=1e-7, atol=1e-12 * ref_grad.abs().max().item())


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("name", ["skd", "cirkd"])
def test_dtypes(name, dtype, tolerance):
    student, teacher = pair((2, 5, 5, 3), 3, 7, dtype)
    params = dict(pool=2) if name == "skd" else dict(tau=0.5, pool=2)
    loss, grad = loss_and_grad(lambda s: ours(name, params)(s, teacher), student)
    # The reference in double from the same rounded inputs.
    ref, ref_grad = loss_and_grad(lambda s: reference(name, params)(s, teacher.double()), student.double())
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert abs(loss.item() - ref.item()) <= 1e-6 * abs(ref.item())
    assert (grad.double() - ref_grad).abs().max() <= tolerance * ref_grad.abs().max()


def test_equal_features_give_zero():
    student = features((2, 4, 5, 3), 3)
    assert kd_kernels.skd_loss(student, student.clone()).item() == 0.0
    assert abs(kd_kernels.cirkd_loss(student, student.clone()).item()) <= 1e-15


def test_cirkd_auto_does_not_pool_below_256_by_256():
    """The official rule pools only when both sides are at least 256 (the pooled side is checked on CUDA, where
    a 256 x 256 map is cheap)."""
    tall, t_tall = pair((1, 2, 256, 3), 3, 4)
    assert torch.equal(kd_kernels.cirkd_loss(tall, t_tall), kd_kernels.cirkd_loss(tall, t_tall, pool="none"))
    assert not torch.equal(kd_kernels.cirkd_loss(tall, t_tall), kd_kernels.cirkd_loss(tall, t_tall, pool=4))


@pytest.mark.parametrize("name", ["skd", "cirkd"])
def test_gradcheck_double(name):
    student, teacher = pair((2, 3, 3, 5), 2, 8)
    params = dict(loss_weight=3.0) if name == "skd" else dict(tau=0.5, pool=2)
    assert torch.autograd.gradcheck(lambda s: ours(name, params)(s, teacher), (student.requires_grad_(True),))


def test_modules_have_the_official_defaults():
    student, teacher = pair((2, 3, 5, 7), 4, 9)
    skd = kd_kernels.CriterionStructuralKD()
    assert repr(skd) == "CriterionStructuralKD(loss_weight=1.0, pool=2)"
    assert skd(student, teacher).item() == pytest.approx(skd_pxp(student, teacher).item(), rel=1e-9)
    weighted = kd_kernels.CriterionStructuralKD(loss_weight=10.0, pool=1)
    assert weighted(student, teacher).item() == pytest.approx(skd_pxp(student, teacher, 10.0, 1).item(), rel=1e-9)
    cirkd = kd_kernels.CriterionMiniBatchCrossImagePair(0.1)
    assert "temperature=0.1, loss_weight=1.0, pool='auto'" in repr(cirkd)
    assert cirkd(student, teacher).item() == pytest.approx(cirkd_pxp(student, teacher, 0.1).item(), rel=1e-9)
    assert kd_kernels.CriterionMiniBatchCrossImagePair().temperature == 0.1


def test_bad_inputs():
    student, teacher = pair((2, 3, 4, 5), 2)
    for fn in (kd_kernels.skd_loss, kd_kernels.cirkd_loss):
        with pytest.raises(KdInputError, match="teacher .N, H and W must be the student's"):
            fn(student, teacher[:, :, :3])
        with pytest.raises(KdInputError, match="teacher .N, H and W must be the student's"):
            fn(student, teacher[:1])
        with pytest.raises(KdInputError, match="teacher: dtype"):
            fn(student.float(), teacher)
        with pytest.raises(KdInputError, match="rank 4|4 dimensions|rank"):
            fn(student[0], teacher[0])
        with pytest.raises(KdInputError, match="loss_weight"):
            fn(student, teacher, loss_weight=float("nan"))
    for pool in (3, 0, -2, True, "2"):
        with pytest.raises(KdInputError, match="pool"):
            kd_kernels.skd_loss(student, teacher, pool=pool)
    for pool in (0, -1, "max", 2.5, False):
        with pytest.raises(KdInputError, match="pool"):
            kd_kernels.cirkd_loss(student, teacher, pool=pool)
    with pytest.raises(KdInputError, match="tau"):
        kd_kernels.cirkd_loss(student, teacher, tau=0.0)


@pytest.mark.parametrize("want", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck(dtype, want):
    student, teacher = pair((2, 3, 4, 5), 2, 10, dtype)
    student.requires_grad_(want)
    torch.library.opcheck(torch.ops.kd_kernels.skd.default, (student, teacher, 10.0, 2, want))
    torch.library.opcheck(torch.ops.kd_kernels.cirkd.default, (student, teacher, 0.5, 2.0, 3, want))


@pytest.mark.parametrize("name", ["skd", "cirkd"])
def test_compiles_without_graph_break(name):
    conv = torch.nn.Conv2d(3, 4, 1).double()
    image, teacher = features((2, 3, 5, 6), 11), features((2, 6, 5, 6), 12)
    params = dict(loss_weight=10.0) if name == "skd" else dict(tau=0.5, pool=2)

    def step(image, teacher):
        return ours(name, params)(conv(image), teacher)

    explained = torch._dynamo.explain(step)(image, teacher)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=False)
    got = compiled(image, teacher)
    got_grads = torch.autograd.grad(got, list(conv.parameters()))
    want = step(image, teacher)
    want_grads = torch.autograd.grad(want, list(conv.parameters()))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", RELATION_LOSSES)
def test_training_step_of_the_shared_cases(name):
    """The step test_cuda_graphs.py captures on CUDA, here eagerly on the CPU: the loss of a 1x1 convolution's
    features against a teacher of other channels, the reference's value and its gradient into the conv."""
    step = Step(name)
    image, teacher = step_inputs(name)
    loss = step(image, teacher)
    loss.backward()
    student = step.conv(image).detach()
    params = dict(loss_weight=10.0, pool=2) if name == "skd" else dict(tau=0.5, loss_weight=2.0, pool=3)
    assert loss.item() == pytest.approx(reference(name, params)(student, teacher).item(), rel=1e-9)
    assert step.conv.weight.grad.abs().sum() > 0


# ---- CUDA: the kernels (skipped without a GPU, or without kernels in this build) -------------------------

needs_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() or not kd_kernels.kernels_compiled(),
    reason="no CUDA GPU visible to torch, or this build has no kernels: the kernels are not run here")

# (loss, student shape, Ct, parameters): odd sizes, several tiles, the official pools.
CUDA_CASES = [
    ("skd", (2, 19, 17, 33), 7, dict(loss_weight=10.0)),
    ("skd", (1, 5, 9, 70), 5, dict(pool=1)),
    ("cirkd", (3, 6, 13, 21), 11, dict(tau=0.1)),
    ("cirkd", (2, 16, 33, 17), 16, dict(tau=0.5, pool=3)),
    ("cirkd", (1, 3, 256, 260), 4, dict(tau=0.1)),  # auto: pooled 4x4
]


@needs_kernels
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("case", CUDA_CASES, ids=[f"{c[0]}-{'x'.join(map(str, c[1]))}" for c in CUDA_CASES])
def test_cuda_matches_the_pxp_reference(case, dtype, tolerance):
    name, s_shape, ct, params = case
    student, teacher = pair(s_shape, ct, 13, dtype, "cuda")
    loss, grad = loss_and_grad(lambda s: ours(name, params)(s, teacher), student)
    assert loss.device == student.device and loss.dtype == torch.float32 and grad.dtype == dtype
    ref, ref_grad = loss_and_grad(lambda s: reference(name, params)(s, teacher.double()), student.double())
    # The repository's tolerance table (src/tolerance.rs): loss 1e-4, gradients per dtype.
    assert abs(loss.item() - ref.item()) <= 1e-4 * abs(ref.item())
    assert (grad.double() - ref_grad).abs().max() <= tolerance * ref_grad.abs().max()
    again, grad_again = loss_and_grad(lambda s: ours(name, params)(s, teacher), student)
    assert torch.equal(again, loss) and torch.equal(grad_again, grad)  # deterministic: bitwise equal


@needs_kernels
def test_cuda_bad_inputs():
    student, teacher = pair((2, 3, 4, 5), 2, 14, torch.float32, "cuda")
    with pytest.raises(KdInputError) as err:
        kd_kernels.skd_loss(student.double(), teacher.double())
    assert err.value.status == 6 and "not f64" in str(err.value)
    with pytest.raises(KdInputError, match="teacher .N, H and W must be the student's"):
        kd_kernels.cirkd_loss(student, teacher[:, :, :3].contiguous())
