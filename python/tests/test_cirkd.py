"""CIRKD (``kd_kernels.cirkd_loss``, ``CriterionMiniBatchCrossImagePair``, ``torch.ops.kd_kernels.cirkd``): the
crate's f64 reference through the C ABI on CPU tensors, the kernels on CUDA ones, against CIRKD's
``CriterionMiniBatchCrossImagePair`` written directly in PyTorch with its ``P x P`` matrices, on small odd
shapes whose channel counts differ: every pooling mode, every dtype, gradcheck, the module, bad inputs, the
op (opcheck) and ``torch.compile(fullgraph=True)``. The CUDA part is skipped, with the reason, without a GPU."""

import pytest
import torch
import torch.nn.functional as F
import relation
from cases import OPS, PairStep, needs_kernels
from relation import DTYPES, case_id, pair, unit_pixels

import kd_kernels
from kd_kernels import KdInputError


def cirkd_window(pool, h, w):
    """The average pool's window side: the official rule (4 from 256x256 up) for ``"auto"``."""
    if pool == "auto":
        return 4 if h >= 256 and w >= 256 else 1
    return 1 if pool == "none" else pool


def cirkd_pxp(student, teacher, tau=0.1, loss_weight=1.0, pool="auto"):
    """CIRKD's ``CriterionMiniBatchCrossImagePair(tau)``: average pool (stride = window, ceil_mode), then for
    every ordered pair of images ``(i, j)`` the ``P x P`` logits ``S_i^T S_j / tau``, the KL divergence of the
    row softmaxes (teacher's || student's) summed over a row and averaged over the rows, averaged over the
    ``B^2`` pairs."""
    k = cirkd_window(pool, *student.shape[2:])
    if k > 1:
        student = F.avg_pool2d(student, k, k, ceil_mode=True)
        teacher = F.avg_pool2d(teacher, k, k, ceil_mode=True)
    fs, ft = unit_pixels(student), unit_pixels(teacher)
    log_ps = F.log_softmax(torch.einsum("icp,jcq->ijpq", fs, fs) / tau, dim=-1)
    log_pt = F.log_softmax(torch.einsum("icp,jcq->ijpq", ft, ft) / tau, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean(-1)
    return loss_weight * kl.mean()


# (student shape, Ct, parameters): odd sizes (edge windows of the pools), Cs != Ct and Cs = Ct.
CASES = [
    ((3, 4, 5, 3), 6, dict(tau=0.1)),  # auto: below 256x256, not pooled
    ((2, 3, 4, 7), 2, dict(tau=0.5, loss_weight=3.0, pool="none")),
    ((2, 5, 7, 5), 3, dict(pool=3)),
    ((4, 2, 5, 6), 2, dict(tau=1.0, pool=2)),
]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_the_pxp_reference(case):
    relation.check_matches_the_reference(kd_kernels.cirkd_loss, cirkd_pxp, *case)


@pytest.mark.parametrize("dtype,tolerance", DTYPES)
def test_dtypes(dtype, tolerance):
    relation.check_dtype(kd_kernels.cirkd_loss, cirkd_pxp, dict(tau=0.5, pool=2), dtype, tolerance)


def test_equal_features_give_zero():
    student = relation.features((2, 4, 5, 3), 3)
    assert abs(kd_kernels.cirkd_loss(student, student.clone()).item()) <= 1e-15


def test_auto_does_not_pool_below_256_by_256():
    """The official rule pools only when both sides are at least 256 (the pooled side is checked on CUDA, where
    a 256 x 256 map is cheap)."""
    tall, t_tall = pair((1, 2, 256, 3), 3, 4)
    assert torch.equal(kd_kernels.cirkd_loss(tall, t_tall), kd_kernels.cirkd_loss(tall, t_tall, pool="none"))
    assert not torch.equal(kd_kernels.cirkd_loss(tall, t_tall), kd_kernels.cirkd_loss(tall, t_tall, pool=4))


def test_gradcheck_double():
    relation.check_gradcheck(kd_kernels.cirkd_loss, dict(tau=0.5, pool=2))


def test_module_has_the_official_defaults():
    student, teacher = pair((2, 3, 5, 7), 4, 9)
    cirkd = kd_kernels.CriterionMiniBatchCrossImagePair(0.1)
    assert "temperature=0.1, loss_weight=1.0, pool='auto'" in repr(cirkd)
    assert cirkd(student, teacher).item() == pytest.approx(cirkd_pxp(student, teacher, 0.1).item(), rel=1e-9)
    assert kd_kernels.CriterionMiniBatchCrossImagePair().temperature == 0.1


def test_bad_inputs():
    relation.check_common_bad_inputs(kd_kernels.cirkd_loss)
    student, teacher = pair((2, 3, 4, 5), 2)
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
    torch.library.opcheck(OPS.cirkd.default, (student, teacher, 0.5, 2.0, 3, want))


def test_compiles_without_graph_break():
    relation.check_compiles_without_graph_break(kd_kernels.cirkd_loss, dict(tau=0.5, pool=2))


def _call(s, t):
    return kd_kernels.cirkd_loss(s, t, 0.5, 2.0, 3)


# Features whose teacher has more channels than the student (6 against 5); compiled here with aot_eager, not
# with inductor by test_compile.py (CI minutes).
STEPS = {"cirkd": PairStep(_call, teacher_channels=6, inductor=False)}


def test_training_step_of_the_shared_case():
    relation.check_training_step(STEPS["cirkd"], cirkd_pxp, dict(tau=0.5, loss_weight=2.0, pool=3))


# ---- CUDA: the kernels (skipped without a GPU, or without kernels in this build) -------------------------

# (student shape, Ct, parameters): odd sizes, several tiles, the official pool.
CUDA_CASES_PXP = [
    ((3, 6, 13, 21), 11, dict(tau=0.1)),
    ((2, 16, 33, 17), 16, dict(tau=0.5, pool=3)),
    ((1, 3, 256, 260), 4, dict(tau=0.1)),  # auto: pooled 4x4
]


@needs_kernels
@pytest.mark.parametrize("dtype,tolerance", DTYPES)
@pytest.mark.parametrize("case", CUDA_CASES_PXP, ids=case_id)
def test_cuda_matches_the_pxp_reference(case, dtype, tolerance):
    relation.check_cuda_matches_the_reference(kd_kernels.cirkd_loss, cirkd_pxp, *case, dtype, tolerance)


@needs_kernels
def test_cuda_bad_inputs():
    student, teacher = relation.check_cuda_refuses_f64(kd_kernels.cirkd_loss)
    with pytest.raises(KdInputError, match="teacher .N, H and W must be the student's"):
        kd_kernels.cirkd_loss(student, teacher[:, :, :3].contiguous())


MMRAZOR_NAMES = ["KDMiniBatchCrossImagePair"]
MMRAZOR_BUILDS = [
    (dict(type="KDMiniBatchCrossImagePair", temperature=0.1, pool="none"),
     lambda m, s, t: isinstance(m, kd_kernels.CriterionMiniBatchCrossImagePair) and m.loss_weight == 1.0
     and m(s, t[:, :3]).item() == pytest.approx(kd_kernels.cirkd_loss(s, t[:, :3], 0.1, pool="none").item(),
                                                rel=1e-12)),
]
