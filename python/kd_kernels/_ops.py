"""The losses as ``torch.library`` custom ops (``torch.ops.kd_kernels.*``): what ``torch.compile`` traces as
one node per loss call, with no graph break.

Each op has a CPU kernel (the crate's f64 reference) and a CUDA kernel (the fused kernels, on the current
stream), a fake kernel that only states shapes and dtypes, and an autograd formula. The op computes the
loss and the gradients it is asked for in one pass (the logits are read once, as the crate's kernels are
built to); its autograd formula multiplies the saved gradients by the upstream gradient. That backward is
two or three elementwise aten ops, which a compiled backward keeps in its graph (inductor fuses the multiply
into the gradient's consumer); it never calls the C ABI, so there is nothing in it to break a graph. A
second backward pass (``create_graph=True``) is not provided: the gradient outputs are constants to
autograd (marked non-differentiable), as ``once_differentiable`` made them before.

The ``want_*`` arguments say which gradients to compute; the public functions pass
``torch.is_grad_enabled() and x.requires_grad``, which ``torch.compile`` evaluates while tracing."""

from __future__ import annotations

import torch

from . import _impl

__all__ = ["cwd", "pixel_kd", "icsd", "dist", "ifvd", "cwt", "semckd", "pkd", "skd", "cirkd", "scaled"]


def _filled(impl, like):
    """The op kernel of ``impl``: an empty tensor (like input ``like[k]``) for each gradient not computed."""
    def kernel(*args):
        loss, *grads = impl(*args)
        return (loss, *[args[i].new_empty(0) if g is None else g for i, g in zip(like, grads)])
    return kernel


def _define(name, schema, cpu, cuda, fake, setup_context, backward, like=None):
    if like is not None:
        cpu, cuda = _filled(cpu, like), _filled(cuda, like)
    op = torch.library.custom_op(f"kd_kernels::{name}", cpu, mutates_args=(), device_types="cpu", schema=schema)
    op.register_kernel("cuda")(cuda)
    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)
    return op


def scaled(grad, grad_loss, needed):
    # On the device, without reading grad_loss on the host (usually 1, or an AMP scale), in the gradient's
    # dtype as the crate's own `upstream` scaling does.
    return grad * grad_loss.to(grad.dtype) if needed else None


def _loss_like(x):
    return x.new_empty((), dtype=_impl.loss_dtype(x.dtype))


def _grad_like(x, want):
    return x.new_empty(x.shape) if want else x.new_empty(0)


# ---- CWD: the teacher may have a gradient -------------------------------------------------------------

def _cwd_fake(student, teacher, tau, loss_weight, want_student, want_teacher):
    return _loss_like(student), _grad_like(student, want_student or want_teacher), _grad_like(teacher, want_teacher)


def _cwd_setup(ctx, inputs, output):
    _, gs, gt = output
    ctx.mark_non_differentiable(gs, gt)
    ctx.save_for_backward(gs, gt)


def _cwd_backward(ctx, grad_loss, _grad_gs, _grad_gt):
    gs, gt = ctx.saved_tensors
    need = ctx.needs_input_grad
    return scaled(gs, grad_loss, need[0]), scaled(gt, grad_loss, need[1]), None, None, None, None


cwd = _define(
    "cwd",
    "(Tensor student, Tensor teacher, float tau, float loss_weight, bool want_student, bool want_teacher)"
    " -> (Tensor, Tensor, Tensor)",
    _impl.cwd_cpu, _impl.cwd_cuda, _cwd_fake, _cwd_setup, _cwd_backward, like=(0, 1))


# ---- pixel KD, ICSD, IFVD, DIST, SKD, CIRKD: only the student has a gradient; the teacher (and labels) are constants

def _student_only_fake(student, *args):
    # The op's last argument is ``want_student``.
    return _loss_like(student), _grad_like(student, args[-1])


def _student_only_setup(ctx, inputs, output):
    _, gs = output
    ctx.mark_non_differentiable(gs)
    ctx.save_for_backward(gs)


def _student_only_backward(ctx, grad_loss, _grad_gs):
    (gs,) = ctx.saved_tensors
    need = ctx.needs_input_grad  # one per input of the op: None for every input but the student
    return (scaled(gs, grad_loss, need[0]), *[None] * (len(need) - 1))


def _define_student_only(name, schema, cpu, cuda):
    return _define(name, schema, cpu, cuda, _student_only_fake, _student_only_setup, _student_only_backward,
                   like=(0,))


pixel_kd = _define_student_only(
    "pixel_kd",
    "(Tensor student, Tensor teacher, float tau, float loss_weight, str reduction, bool scale_tau2,"
    " bool want_student) -> (Tensor, Tensor)",
    _impl.pixel_kd_cpu, _impl.pixel_kd_cuda)

icsd = _define_student_only(
    "icsd",
    "(Tensor student, Tensor teacher, float tau, float loss_weight, str variant, bool want_student)"
    " -> (Tensor, Tensor)",
    _impl.icsd_cpu, _impl.icsd_cuda)

# IFVD: features of two channel counts and integer labels.
ifvd = _define_student_only(
    "ifvd",
    "(Tensor student, Tensor teacher, Tensor labels, int num_classes, float loss_weight, bool want_student)"
    " -> (Tensor, Tensor)",
    _impl.ifvd_cpu, _impl.ifvd_cuda)

dist = _define_student_only(
    "dist",
    "(Tensor student, Tensor teacher, float tau, float inter_loss_weight, float intra_loss_weight,"
    " float loss_weight, bool want_student) -> (Tensor, Tensor)",
    _impl.dist_cpu, _impl.dist_cuda)

# SKD and CIRKD: features of two channel counts; `pool` is kd_skd_config's / kd_cirkd_config's code.
skd = _define_student_only(
    "skd",
    "(Tensor student, Tensor teacher, float loss_weight, int pool, bool want_student) -> (Tensor, Tensor)",
    _impl.skd_cpu, _impl.skd_cuda)

cirkd = _define_student_only(
    "cirkd",
    "(Tensor student, Tensor teacher, float tau, float loss_weight, int pool, bool want_student) -> (Tensor, Tensor)",
    _impl.cirkd_cpu, _impl.cirkd_cuda)


# ---- CWT: the student and the four MLP parameters --------------------------------------------------------

def _cwt_fake(student, teacher, w1, b1, w2, b2, loss_weight, normalize, want_grads):
    return (_loss_like(student), _grad_like(student, want_grads),
            *[_grad_like(w, want_grads) for w in (w1, b1, w2, b2)])


def _cwt_setup(ctx, inputs, output):
    grads = output[1:]
    ctx.mark_non_differentiable(*grads)
    ctx.save_for_backward(*grads)


def _cwt_backward(ctx, grad_loss, *_grad_grads):
    gs, g1, gb1, g2, gb2 = ctx.saved_tensors
    need = ctx.needs_input_grad
    return (scaled(gs, grad_loss, need[0]), None, scaled(g1, grad_loss, need[2]),
            scaled(gb1, grad_loss, need[3]), scaled(g2, grad_loss, need[4]), scaled(gb2, grad_loss, need[5]),
            None, None, None)


cwt = _define(
    "cwt",
    "(Tensor student, Tensor teacher, Tensor w1, Tensor b1, Tensor w2, Tensor b2, float loss_weight,"
    " str normalize, bool want_grads) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    _impl.cwt_cpu, _impl.cwt_cuda, _cwt_fake, _cwt_setup, _cwt_backward, like=(0, 2, 3, 4, 5))


# ---- SemCKD: lists of maps, regressor outputs and MLPs ---------------------------------------------------

def _semckd_fake(student, teacher, proj, query, key, loss_weight, eps, want_grads):
    first = student[0]
    # The CPU reference returns the attention in f64, the kernels in f32.
    attention_dtype = torch.float64 if first.device.type == "cpu" else torch.float32
    attention = first.new_empty((first.shape[0], len(student), len(teacher)), dtype=attention_dtype)
    grads = [x.new_empty(x.shape) for x in list(student) + list(proj) + list(query) + list(key)] if want_grads else []
    return _loss_like(first), attention, grads


def _semckd_setup(ctx, inputs, output):
    student, teacher, proj, query, key = inputs[:5]
    _, attention, grads = output
    ctx.mark_non_differentiable(attention, *grads)
    ctx.save_for_backward(*grads)
    ctx.counts = (len(student), len(teacher), len(proj), len(query), len(key))


def _semckd_backward(ctx, grad_loss, _grad_attention, _grad_grads):
    s_n, t_n, p_n, q_n, k_n = ctx.counts
    grads = ctx.saved_tensors
    if grads:
        grads = [g * grad_loss.to(g.dtype) for g in grads]
    else:  # none was asked for (only the teacher requires grad): lists of None, as the inputs are lists
        grads = [None] * (s_n + p_n + q_n + k_n)
    at = [0, s_n, s_n + p_n, s_n + p_n + q_n, s_n + p_n + q_n + k_n]
    return (grads[at[0]:at[1]], [None] * t_n, grads[at[1]:at[2]], grads[at[2]:at[3]], grads[at[3]:at[4]],
            None, None, None)


semckd = _define(
    "semckd",
    "(Tensor[] student, Tensor[] teacher, Tensor[] proj, Tensor[] query, Tensor[] key, float loss_weight,"
    " float eps, bool want_grads) -> (Tensor, Tensor, Tensor[])",
    _impl.semckd_cpu, _impl.semckd_cuda, _semckd_fake, _semckd_setup, _semckd_backward)


# ---- PKD: a list of levels, the teacher a constant -----------------------------------------------------

def _pkd_fake(student, teacher, loss_weight, want_student):
    grads = [x.new_empty(x.shape) for x in student] if want_student else []
    return _loss_like(student[0]), grads


def _pkd_setup(ctx, inputs, output):
    student, teacher = inputs[:2]
    _, grads = output
    ctx.mark_non_differentiable(*grads)
    ctx.save_for_backward(*grads)
    ctx.counts = (len(student), len(teacher))


def _pkd_backward(ctx, grad_loss, _grad_grads):
    s_n, t_n = ctx.counts
    grads = ctx.saved_tensors
    # None per level when no gradient was asked for (only the teacher requires grad), as the inputs are lists.
    student = [g * grad_loss.to(g.dtype) for g in grads] if grads else [None] * s_n
    return student, [None] * t_n, None, None


pkd = _define(
    "pkd",
    "(Tensor[] student, Tensor[] teacher, float loss_weight, bool want_student) -> (Tensor, Tensor[])",
    _impl.pkd_cpu, _impl.pkd_cuda, _pkd_fake, _pkd_setup, _pkd_backward)
