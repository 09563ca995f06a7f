"""SKD (``kd_kernels.skd_loss``, ``CriterionStructuralKD``, ``torch.ops.kd_kernels.skd``): the crate's f64
reference through the C ABI on CPU tensors, the kernels on CUDA ones, against CIRKD's
``CriterionStructuralKD`` written directly in PyTorch with its ``P x P`` matrices, on small odd shapes whose
channel counts differ: both pooling modes, every dtype, gradcheck, the module, bad inputs, the op (opcheck)
and ``torch.compile(fullgraph=True)``. The CUDA part is skipped, with the reason, without a GPU."""

import pytest
import torch
import torch.nn.functional as F
import relation
from cases import OPS, PairStep, needs_kernels
from relation import DTYPES, case_id, pair, unit_pixels

import kd_kernels
from kd_kernels import KdInputError


def skd_pxp(student, teacher, loss_weight=1.0, pool=2):
    """SKD as CIRKD's ``CriterionStructuralKD`` computes it: 2x2 max pool (stride 2, ceil_mode) unless
    ``pool = 1``, then every image's ``P x P`` cosine similarities, and the mean squared difference."""
    if pool == 2:
        student = F.max_pool2d(student, 2, 2, ceil_mode=True)
        teacher = F.max_pool2d(teacher, 2, 2, ceil_mode=True)
    fs, ft = unit_pixels(student), unit_pixels(teacher)
    a_s = fs.transpose(1, 2) @ fs
    a_t = ft.transpose(1, 2) @ ft
    return loss_weight * ((a_s - a_t) ** 2).mean()


# (student shape, Ct, parameters): odd sizes (edge windows of the pool), Cs != Ct and Cs = Ct.
CASES = [
    ((2, 3, 5, 7), 4, dict(loss_weight=10.0, pool=2)),
    ((1, 5, 4, 3), 2, dict(pool=1)),
    ((3, 4, 3, 5), 4, dict(loss_weight=2.0)),  # Cs = Ct: the crate's difference form
]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_the_pxp_reference(case):
    relation.check_matches_the_reference(kd_kernels.skd_loss, skd_pxp, *case)


@pytest.mark.parametrize("dtype,tolerance", DTYPES)
def test_dtypes(dtype, tolerance):
    relation.check_dtype(kd_kernels.skd_loss, skd_pxp, dict(pool=2), dtype, tolerance)


def test_equal_features_give_zero():
    student = relation.features((2, 4, 5, 3), 3)
    assert kd_kernels.skd_loss(student, student.clone()).item() == 0.0


def test_gradcheck_double():
    relation.check_gradcheck(kd_kernels.skd_loss, dict(loss_weight=3.0))


def test_module_has_the_official_defaults():
    student, teacher = pair((2, 3, 5, 7), 4, 9)
    skd = kd_kernels.CriterionStructuralKD()
    assert repr(skd) == "CriterionStructuralKD(loss_weight=1.0, pool=2)"
    assert skd(student, teacher).item() == pytest.approx(skd_pxp(student, teacher).item(), rel=1e-9)
    weighted = kd_kernels.CriterionStructuralKD(loss_weight=10.0, pool=1)
    assert weighted(student, teacher).item() == pytest.approx(skd_pxp(student, teacher, 10.0, 1).item(), rel=1e-9)


def test_bad_inputs():
    relation.check_common_bad_inputs(kd_kernels.skd_loss)
    student, teacher = pair((2, 3, 4, 5), 2)
    for pool in (3, 0, -2, True, "2"):
        with pytest.raises(KdInputError, match="pool"):
            kd_kernels.skd_loss(student, teacher, pool=pool)


@pytest.mark.parametrize("want", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck(dtype, want):
    student, teacher = pair((2, 3, 4, 5), 2, 10, dtype)
    student.requires_grad_(want)
    torch.library.opcheck(OPS.skd.default, (student, teacher, 10.0, 2, want))


def test_compiles_without_graph_break():
    relation.check_compiles_without_graph_break(kd_kernels.skd_loss, dict(loss_weight=10.0))


def _call(s, t):
    return kd_kernels.skd_loss(s, t, 10.0, 2)


# Features whose teacher has more channels than the student (6 against 5); compiled here with aot_eager, not
# with inductor by test_compile.py (CI minutes).
STEPS = {"skd": PairStep(_call, teacher_channels=6, inductor=False)}


def test_training_step_of_the_shared_case():
    relation.check_training_step(STEPS["skd"], skd_pxp, dict(loss_weight=10.0, pool=2))


# ---- CUDA: the kernels (skipped without a GPU, or without kernels in this build) -------------------------

# (student shape, Ct, parameters): odd sizes, several tiles, the official pool.
CUDA_CASES_PXP = [
    ((2, 19, 17, 33), 7, dict(loss_weight=10.0)),
    ((1, 5, 9, 70), 5, dict(pool=1)),
]


@needs_kernels
@pytest.mark.parametrize("dtype,tolerance", DTYPES)
@pytest.mark.parametrize("case", CUDA_CASES_PXP, ids=case_id)
def test_cuda_matches_the_pxp_reference(case, dtype, tolerance):
    relation.check_cuda_matches_the_reference(kd_kernels.skd_loss, skd_pxp, *case, dtype, tolerance)


@needs_kernels
def test_cuda_bad_inputs():
    relation.check_cuda_refuses_f64(kd_kernels.skd_loss)


MMRAZOR_NAMES = ["KDStructuralKD"]
MMRAZOR_BUILDS = [
    (dict(type="KDStructuralKD", loss_weight=10.0),
     lambda m, s, t: isinstance(m, kd_kernels.CriterionStructuralKD) and m.pool == 2
     and m(s, t[:, :3]).item() == pytest.approx(kd_kernels.skd_loss(s, t[:, :3], 10.0).item(), rel=1e-12)),
]
