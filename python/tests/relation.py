"""What the tests of the relation losses (pixel-to-pixel similarities, a teacher of its own channel count, the
student's gradient only) share: features, and the checks each runs on its own cases against its official computation
written directly in PyTorch with its ``P x P`` matrices."""

import pytest
import torch
import torch.nn.functional as F
from cases import Step, step_inputs
from compare import loss_and_grad

from kd_kernels import KdInputError


def features(shape, seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def pair(s_shape, ct, seed=1, dtype=torch.float64, device="cpu"):
    n, _, h, w = s_shape
    return features(s_shape, seed, dtype, device), features((n, ct, h, w), seed + 1, dtype, device)


def unit_pixels(x):
    """``[N, C, H, W]`` features normalised per pixel over the channels, as ``[N, C, P]``."""
    return F.normalize(x, p=2, dim=1).flatten(2)


def case_id(case):
    """``(student shape, Ct, parameters)`` as a test id."""
    return f"{'x'.join(map(str, case[0]))}-ct{case[1]}-{case[2].get('pool', 'default')}"


def check_matches_the_reference(ours, reference, s_shape, ct, params):
    student, teacher = pair(s_shape, ct)
    loss, grad = loss_and_grad(lambda s: ours(s, teacher, **params), student)
    ref, ref_grad = loss_and_grad(lambda s: reference(s, teacher, **params), student)
    assert loss.dtype == torch.float64 and grad.dtype == torch.float64
    assert loss.item() > 0
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-15)
    assert torch.allclose(grad, ref_grad, rtol=1e-7, atol=1e-12 * ref_grad.abs().max().item())


def check_dtype(ours, reference, params, dtype, tolerance):
    student, teacher = pair((2, 5, 5, 3), 3, 7, dtype)
    loss, grad = loss_and_grad(lambda s: ours(s, teacher, **params), student)
    # The reference in double from the same rounded inputs.
    ref, ref_grad = loss_and_grad(lambda s: reference(s, teacher.double(), **params), student.double())
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert abs(loss.item() - ref.item()) <= 1e-6 * abs(ref.item())
    assert (grad.double() - ref_grad).abs().max() <= tolerance * ref_grad.abs().max()


def check_gradcheck(ours, params):
    student, teacher = pair((2, 3, 3, 5), 2, 8)
    assert torch.autograd.gradcheck(lambda s: ours(s, teacher, **params), (student.requires_grad_(True),))


def check_common_bad_inputs(ours):
    student, teacher = pair((2, 3, 4, 5), 2)
    with pytest.raises(KdInputError, match="teacher .N, H and W must be the student's"):
        ours(student, teacher[:, :, :3])
    with pytest.raises(KdInputError, match="teacher .N, H and W must be the student's"):
        ours(student, teacher[:1])
    with pytest.raises(KdInputError, match="teacher: dtype"):
        ours(student.float(), teacher)
    with pytest.raises(KdInputError, match="rank 4|4 dimensions|rank"):
        ours(student[0], teacher[0])
    with pytest.raises(KdInputError, match="loss_weight"):
        ours(student, teacher, loss_weight=float("nan"))


def check_compiles_without_graph_break(ours, params):
    conv = torch.nn.Conv2d(3, 4, 1).double()
    image, teacher = features((2, 3, 5, 6), 11), features((2, 6, 5, 6), 12)

    def step(image, teacher):
        return ours(conv(image), teacher, **params)

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


def check_training_step(step_case, reference, params):
    """The step test_cuda_graphs.py captures on CUDA, here eagerly on the CPU: the loss of a 1x1 convolution's
    features against a teacher of other channels, the reference's value and its gradient into the conv."""
    step = Step(step_case)
    image, teacher = step_inputs(step_case)
    loss = step(image, teacher)
    loss.backward()
    student = step.conv(image).detach()
    assert loss.item() == pytest.approx(reference(student, teacher, **params).item(), rel=1e-9)
    assert step.conv.weight.grad.abs().sum() > 0


def check_cuda_matches_the_reference(ours, reference, s_shape, ct, params, dtype, tolerance):
    student, teacher = pair(s_shape, ct, 13, dtype, "cuda")
    loss, grad = loss_and_grad(lambda s: ours(s, teacher, **params), student)
    assert loss.device == student.device and loss.dtype == torch.float32 and grad.dtype == dtype
    ref, ref_grad = loss_and_grad(lambda s: reference(s, teacher.double(), **params), student.double())
    # The repository's tolerance table (src/tolerance.rs): loss 1e-4, gradients per dtype.
    assert abs(loss.item() - ref.item()) <= 1e-4 * abs(ref.item())
    assert (grad.double() - ref_grad).abs().max() <= tolerance * ref_grad.abs().max()
    again, grad_again = loss_and_grad(lambda s: ours(s, teacher, **params), student)
    assert torch.equal(again, loss) and torch.equal(grad_again, grad)  # deterministic: bitwise equal


def check_cuda_refuses_f64(ours):
    student, teacher = pair((2, 3, 4, 5), 2, 14, torch.float32, "cuda")
    with pytest.raises(KdInputError) as err:
        ours(student.double(), teacher.double())
    assert err.value.status == 6 and "not f64" in str(err.value)
    return student, teacher


DTYPES = [(torch.float32, 1e-4), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)]
