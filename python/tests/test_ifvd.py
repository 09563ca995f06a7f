"""IFVD on CPU tensors (the crate's f64 reference through the C ABI) against PyTorch forms of the loss
(python-reference/ifvd_reference.py: the per-class loop and the vectorised closed form), gradcheck in double
precision, label and feature dtypes, bad inputs, the op (opcheck) and ``torch.compile(fullgraph=True)``."""

import sys
from pathlib import Path

import pytest
import torch

import kd_kernels
from compare import loss_and_grad
from kd_kernels import KdInputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python-reference"))
from ifvd_reference import ifvd_class_loop, ifvd_closed_form  # noqa: E402


def features(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def labels(shape, seed, top, ignore=255, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, top, shape, generator=g)
    lab[torch.rand(shape, generator=g) < 0.15] = ignore
    return lab.to(dtype)


# (student, Ct, labels (Hl, Wl), num_classes, labels drawn from [0, top), ignore)
CASES = [
    ((2, 4, 3, 5), 6, (7, 11), 5, 4, 255),  # finer labels, class 4 absent
    ((2, 3, 5, 4), 3, (2, 3), 3, 3, -1),  # coarser labels, -1 ignored
    ((1, 5, 4, 3), 2, (4, 3), 2, 9, 255),  # labels >= num_classes are ignored too
    ((3, 7, 6, 10), 5, (3, 5), 19, 19, 255),  # labels at half resolution
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("reference", [ifvd_closed_form, ifvd_class_loop])
def test_ifvd_matches_the_pytorch_forms(case, reference):
    s_shape, ct, (hl, wl), k, top, ignore = case
    student = features(s_shape, 1)
    teacher = features((s_shape[0], ct, *s_shape[2:]), 2)
    lab = labels((s_shape[0], hl, wl), 3, top, ignore)
    loss, grad = loss_and_grad(lambda s: kd_kernels.ifvd_loss(s, teacher, lab, k, 2.5), student)
    ref, ref_grad = loss_and_grad(lambda s: reference(s, teacher, lab, k, 2.5), student)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-15)
    assert torch.allclose(grad, ref_grad, rtol=1e-7, atol=1e-12)


def test_ifvd_gradcheck_double():
    student = features((2, 3, 3, 4), 4).requires_grad_(True)
    teacher = features((2, 4, 3, 4), 5)
    lab = labels((2, 6, 8), 6, 3)
    assert torch.autograd.gradcheck(lambda s: kd_kernels.ifvd_loss(s, teacher, lab, 3, 3.0), (student,))


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int64])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_ifvd_dtypes(dtype, tolerance, label_dtype):
    student, teacher = features((2, 5, 6, 4), 7, dtype), features((2, 3, 6, 4), 8, dtype)
    lab = labels((2, 6, 4), 9, 4, 255, label_dtype)
    loss, grad = loss_and_grad(lambda s: kd_kernels.ifvd_loss(s, teacher, lab, 4), student)
    ref, ref_grad = loss_and_grad(lambda s: ifvd_closed_form(s, teacher.double(), lab, 4), student.double())
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert abs(loss.item() - ref.item()) <= 1e-6 * abs(ref.item())
    assert (grad.double() - ref_grad).abs().max() <= tolerance * ref_grad.abs().max()


def test_criterion_ifv_module():
    student, teacher = features((2, 4, 3, 5), 10), features((2, 6, 3, 5), 11)
    lab = labels((2, 3, 5), 12, 5)
    module = kd_kernels.CriterionIFV(5, loss_weight=20.0)
    assert "num_classes=5" in repr(module)
    got = module(student, teacher, lab)
    assert got.item() == pytest.approx(ifvd_closed_form(student, teacher, lab, 5, 20.0).item(), rel=1e-9)


def test_ifvd_bad_inputs():
    student, teacher = features((2, 4, 3, 5), 1), features((2, 4, 3, 5), 2)
    lab = labels((2, 3, 5), 3, 3)
    with pytest.raises(KdInputError, match="labels are integers"):
        kd_kernels.ifvd_loss(student, teacher, lab.double(), 3)
    with pytest.raises(KdInputError, match="num_classes"):
        kd_kernels.ifvd_loss(student, teacher, lab, 0)
    with pytest.raises(KdInputError, match="labels"):
        kd_kernels.ifvd_loss(student, teacher, lab[0], 3)  # rank 2
    with pytest.raises(KdInputError, match="labels"):
        kd_kernels.ifvd_loss(student, teacher, lab[:1], 3)  # one label map for two images
    with pytest.raises(KdInputError, match="teacher"):
        kd_kernels.ifvd_loss(student, teacher[:, :, :2], lab, 3)  # another resolution
    with pytest.raises(KdInputError, match="teacher: dtype"):
        kd_kernels.ifvd_loss(student.float(), teacher, lab, 3)


@pytest.mark.parametrize("want", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ifvd_opcheck(dtype, want):
    student = features((2, 3, 4, 5), 1, dtype).requires_grad_(want)
    teacher = features((2, 2, 4, 5), 2, dtype)
    args = (student, teacher, labels((2, 8, 10), 3, 3), 3, 20.0, want)
    torch.library.opcheck(torch.ops.kd_kernels.ifvd.default, args)


def test_ifvd_compiles_without_graph_break():
    conv = torch.nn.Conv2d(3, 4, 1).double()
    image, teacher = features((2, 3, 4, 5), 4), features((2, 6, 4, 5), 5)
    lab = labels((2, 8, 10), 6, 3)

    def step(image, teacher, lab):
        return kd_kernels.ifvd_loss(conv(image), teacher, lab, 3, 20.0)

    explained = torch._dynamo.explain(step)(image, teacher, lab)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=False)
    got = compiled(image, teacher, lab)
    got_grads = torch.autograd.grad(got, list(conv.parameters()))
    want = step(image, teacher, lab)
    want_grads = torch.autograd.grad(want, list(conv.parameters()))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
