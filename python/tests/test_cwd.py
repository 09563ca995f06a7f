"""CWD (``kd_kernels.cwd_loss``, ``ChannelWiseDivergence``, ``torch.ops.kd_kernels.cwd``) on CPU tensors (the
crate's f64 reference through the C ABI): agreement with the official formula in PyTorch (loss and gradients,
random odd shapes), gradcheck in double precision, dtypes, the autograd plumbing (the teacher's gradient,
upstream scaling, accumulation), the module, bad inputs; its cases for the shared tests (cases.py)."""

import pytest
import torch
import torch.nn.functional as F
from cases import OPS, PairCase, PairStep, leaf, needs_kernels, randn
from compare import check_low_precision, check_pair_bad_inputs, logits, ours_and_official, random_shapes
from torch._subclasses.fake_tensor import FakeTensorMode

import kd_kernels
from kd_kernels import KdInputError


def cwd_official(preds_s, preds_t, tau, loss_weight):
    """mmrazor ``ChannelWiseDivergence.forward`` (= TorchDistiller ``CriterionCWD``, channel, kl)."""
    n, c, h, w = preds_s.shape
    softmax_pred_t = F.softmax(preds_t.reshape(-1, w * h) / tau, dim=1)
    logsoftmax = torch.nn.LogSoftmax(dim=1)
    loss = torch.sum(
        softmax_pred_t * logsoftmax(preds_t.reshape(-1, w * h) / tau)
        - softmax_pred_t * logsoftmax(preds_s.reshape(-1, w * h) / tau)
    ) * (tau**2)
    return loss_weight * loss / (c * n)



@pytest.mark.parametrize("shape", random_shapes(1, 8))
@pytest.mark.parametrize("tau,weight", [(4.0, 3.0), (1.0, 10.0), (0.7, -2.5)])
def test_cwd_matches_official_formula(shape, tau, weight):
    student, teacher = logits(shape, 1), logits(shape, 2)
    (loss, gs, gt), (ref, ref_gs, ref_gt) = ours_and_official(
        lambda s, t: kd_kernels.cwd_loss(s, t, tau, weight), lambda s, t: cwd_official(s, t, tau, weight),
        student, teacher, teacher_grad=True)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(gs, ref_gs, rtol=1e-9, atol=1e-12)
    assert torch.allclose(gt, ref_gt, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 3, 4, 5), (3, 2, 3, 1)])
def test_cwd_gradcheck_double(shape):
    student = logits(shape, 5).requires_grad_(True)
    teacher = logits(shape, 6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, t: kd_kernels.cwd_loss(s, t, 2.0, 3.0), (student, teacher))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    check_low_precision(kd_kernels.cwd_loss, lambda s, t: cwd_official(s, t, 4.0, 3.0), dtype)


def test_upstream_gradient_scales_and_grads_accumulate():
    shape = (2, 3, 4, 5)
    student, teacher = logits(shape, 11), logits(shape, 12)
    s = student.clone().requires_grad_(True)
    (kd_kernels.cwd_loss(s, teacher) * 3.0).backward()
    once = s.grad.clone()
    s_ref = student.clone().requires_grad_(True)
    cwd_official(s_ref, teacher, 4.0, 3.0).backward()
    assert torch.allclose(once, 3.0 * s_ref.grad, rtol=1e-12, atol=1e-15)
    (kd_kernels.cwd_loss(s, teacher) + kd_kernels.cwd_loss(s, teacher, 2.0, 0.5)).backward()
    p_ref = student.clone().requires_grad_(True)
    cwd_official(p_ref, teacher, 2.0, 0.5).backward()
    assert torch.allclose(s.grad, once + s_ref.grad + p_ref.grad, rtol=1e-12, atol=1e-15)


def test_teacher_gradient_only_where_asked():
    shape = (2, 3, 4, 5)
    s = logits(shape, 13).requires_grad_(True)
    t = logits(shape, 14)
    kd_kernels.cwd_loss(s, t).backward()
    assert s.grad is not None and t.grad is None
    # Only the teacher: its gradient is computed (the crate computes the student's with it) and the student
    # gets none.
    s2 = logits(shape, 13)
    t2 = logits(shape, 14).requires_grad_(True)
    kd_kernels.cwd_loss(s2, t2).backward()
    t_ref = logits(shape, 14).requires_grad_(True)
    cwd_official(s2, t_ref, 4.0, 3.0).backward()
    assert torch.allclose(t2.grad, t_ref.grad, rtol=1e-9, atol=1e-12)
    # No gradient at all: a plain loss.
    with torch.no_grad():
        value = kd_kernels.cwd_loss(s2, t2)
    assert not value.requires_grad
    assert value.item() == pytest.approx(cwd_official(s2, t2.detach(), 4.0, 3.0).item(), rel=1e-10)


def test_non_contiguous_inputs_are_copied():
    base_s = logits((2, 5, 6, 3), 15)
    base_t = logits((2, 5, 6, 3), 16)
    student = base_s.permute(0, 1, 3, 2).requires_grad_(True)  # a (2, 5, 3, 6) view, not contiguous
    teacher = base_t.permute(0, 1, 3, 2)
    assert not student.is_contiguous()
    loss = kd_kernels.cwd_loss(student, teacher)
    loss.backward()
    s_ref = student.detach().contiguous().requires_grad_(True)
    ref = cwd_official(s_ref, teacher.contiguous(), 4.0, 3.0)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(student.grad, s_ref.grad, rtol=1e-9, atol=1e-12)


def test_module_is_mmrazors():
    shape = (2, 4, 3, 5)
    student, teacher = logits(shape, 17), logits(shape, 18)
    cwd = kd_kernels.ChannelWiseDivergence(tau=4, loss_weight=10)
    assert cwd(student, teacher).item() == pytest.approx(cwd_official(student, teacher, 4, 10).item(), rel=1e-10)
    assert kd_kernels.ChannelWiseDivergence()(student, teacher).item() == pytest.approx(
        cwd_official(student, teacher, 1.0, 1.0).item(), rel=1e-10)  # mmrazor's defaults

def test_identical_inputs_give_zero_and_one_position_rows_too():
    x = logits((2, 3, 4, 5), 19)
    assert kd_kernels.cwd_loss(x, x.clone()).item() == 0.0
    # H*W = 1: every CWD row is a one-element softmax, KL exactly 0 whatever the logits.
    assert kd_kernels.cwd_loss(logits((2, 3, 1, 1), 20), logits((2, 3, 1, 1), 21)).item() == 0.0


def test_bad_inputs_raise_the_crates_messages():
    check_pair_bad_inputs(kd_kernels.cwd_loss)


# ---- the op, compile, CUDA: what only CWD has (its teacher's gradient), and its cases for the shared tests ----

def test_fake_kernel_states_shapes_and_dtypes_only():
    with FakeTensorMode():
        s = torch.empty((2, 3, 4, 5), dtype=torch.bfloat16)
        loss, gs, gt = OPS.cwd(s, s, 4.0, 3.0, True, False)
        assert loss.shape == () and loss.dtype == torch.float32
        assert gs.shape == s.shape and gs.dtype == torch.bfloat16 and gt.numel() == 0


def test_autocast_value_against_the_formula():
    conv = torch.nn.Conv2d(3, 5, 1)
    image, teacher = randn((2, 3, 6, 7), 1, torch.float32), randn((2, 5, 6, 7), 2, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student = conv(image)
        cwd = kd_kernels.cwd_loss(student, teacher)
    assert cwd.dtype == torch.float32
    assert cwd.item() == pytest.approx(cwd_official(student.detach().double(), teacher.double(), 4.0, 3.0).item(),
                                       rel=1e-6)


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


@needs_kernels
def test_cuda_bad_inputs():
    s = randn((2, 3, 4, 5), 7, torch.float32, "cuda")
    with pytest.raises(KdInputError) as err:
        kd_kernels.cwd_loss(s.double(), s.double())
    assert err.value.status == 6 and "not f64" in str(err.value)
    with pytest.raises(KdInputError, match="teacher: on cpu while the student is on cuda"):
        kd_kernels.cwd_loss(s, s.cpu())


@needs_kernels
def test_a_capture_that_would_grow_the_workspace_raises():
    """A shape larger than any warm-up call needs a bigger workspace, which the crate refuses to allocate
    during a capture (a graph keeps the addresses it was captured with): KD_ERR_WORKSPACE, not a corrupt
    graph."""
    small = torch.randn(1, 2, 3, 4, device="cuda")
    kd_kernels.cwd_loss(small, small)
    big = torch.randn(8, 64, 256, 256, device="cuda")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(Exception) as err:
        with torch.cuda.graph(graph):
            kd_kernels.cwd_loss(big, big.flip(0), 3.0, 1.0)
    kd_errors = [e for e in (err.value, err.value.__context__) if isinstance(e, kd_kernels.KdKernelsError)]
    assert kd_errors and kd_errors[0].status == 9, repr(err.value)


def _call(s, t):
    return kd_kernels.cwd_loss(s, t, 2.0, 3.0)


PAIR_CASES = [PairCase("cwd", _call, OPS.cwd, (2.0, 3.0, True, False))]
STEPS = {"cwd": PairStep(_call, autocast_exact=True)}
# CWD divides by N*C: a batch's loss is the mean of its two equal halves' (test_ddp.py).
BATCH_MEAN_LOSSES = [_call]
OP_CASES = [(f"cwd-{dtype}-{want_s}-{want_t}", OPS.cwd,
             (leaf((2, 3, 4, 5), 1, dtype, want_s), leaf((2, 3, 4, 5), 2, dtype, want_t), 2.0, 3.0, want_s, want_t))
            for dtype in (torch.float64, torch.float32)
            for want_s, want_t in ((True, True), (True, False), (False, True), (False, False))]
CUDA_CASES = [
    ("cwd", lambda s, t: kd_kernels.cwd_loss(s, t, 4.0, 3.0), lambda s, t: cwd_official(s, t, 4.0, 3.0), True),
    ("cwd_tau1", lambda s, t: kd_kernels.cwd_loss(s, t, 1.0, 10.0), lambda s, t: cwd_official(s, t, 1.0, 10.0), True),
]
MMRAZOR_NAMES = ["KDChannelWiseDivergence"]
MMRAZOR_BUILDS = [
    (dict(type="KDChannelWiseDivergence", tau=4.0, loss_weight=3.0),
     lambda m, s, t: isinstance(m, kd_kernels.ChannelWiseDivergence)
     and m(s, t).item() == pytest.approx(cwd_official(s, t, 4.0, 3.0).item(), rel=1e-10)),
]
MMRAZOR_REPLACES = {"ChannelWiseDivergence": kd_kernels.ChannelWiseDivergence}
