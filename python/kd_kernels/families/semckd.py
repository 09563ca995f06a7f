"""SemCKD (docs/losses.md §4): lists of student and teacher maps, the regressors' outputs and the attention's
MLPs; gradients for the student maps, the regressor outputs and the MLPs."""

from __future__ import annotations

import ctypes

import torch

from .. import _checks, _impl, _lib, _ops
from .._lib import KdInputError

__all__ = ["semckd_loss"]

_MLP_NAMES = ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")


class SemckdParams(ctypes.Structure):
    _c_name_ = "kd_semckd_config"
    _fields_ = [("loss_weight", _lib.F64), ("eps", _lib.F64), ("embed_dim", _lib.I64)]


# [ctx,] config, S, student shapes, T, teacher shapes, dtype, student[], teacher[], proj[], query[], key[],
# loss, attention, grad_student[], grad_proj[], grad_query[], grad_key[], [upstream,] options[, stream]
_HEAD = [_lib.SIZE_T, _lib.I64P, _lib.SIZE_T, _lib.I64P, _lib.I32]
_CPU = _lib.declare("kd_semckd_cpu", [ctypes.POINTER(SemckdParams), *_HEAD] + [_lib.VPP] * 5 + [_lib.VP, _lib.VP]
                    + [_lib.VPP] * 4 + [_lib.GradOptions])
_CUDA = _lib.declare("kd_semckd_cuda", [_lib.VP, ctypes.POINTER(SemckdParams), *_HEAD] + [_lib.U64P] * 5
                     + [_lib.U64, _lib.U64] + [_lib.U64P] * 4 + [_lib.U64, _lib.GradOptions, _lib.VP])


def semckd_kernel(student, teacher, proj, query, key, loss_weight, eps, want_grads):
    """SemCKD's loss, attention [B, S, T] (f32 on CUDA, f64 on the CPU) and, with ``want_grads``, the
    gradients of the student maps, the regressor outputs and the MLPs (each in its input's dtype), in that
    order. ``proj`` is flat (pair (i, j) at i*T + j); ``query`` / ``key`` hold 4 tensors per MLP."""
    s_n, t_n = len(student), len(teacher)
    student = _impl.contiguous(*student)
    teacher = _impl.contiguous(*teacher)
    proj = _impl.contiguous(*proj)
    mlps = [m.to(torch.float32).contiguous() for m in list(query) + list(key)]
    batch, device, cuda = student[0].shape[0], student[0].device, student[0].is_cuda
    config = SemckdParams(loss_weight, eps, mlps[3].shape[0])
    head = (s_n, _lib.shape_array([v for x in student for v in x.shape]), t_n,
            _lib.shape_array([v for x in teacher for v in x.shape]), _impl.DTYPE_CODES[student[0].dtype])
    attention = torch.empty((batch, s_n, t_n), dtype=torch.float32 if cuda else torch.float64, device=device)
    n_q = 4 * s_n
    if want_grads:
        grad_student = [torch.empty_like(x) for x in student]
        grad_proj = [torch.empty_like(x) for x in proj]
        # The MLP's gradients in f32 from the kernels, f64 from the CPU reference.
        grad_mlps = [torch.empty_like(m, dtype=torch.float32 if cuda else torch.float64) for m in mlps]
        grad_buffers = (grad_student, grad_proj, grad_mlps[:n_q], grad_mlps[n_q:])
    else:
        grad_buffers = (None,) * 4

    def addr(tensors):
        return _impl.addresses(tensors, cuda)

    inputs = (addr(student), addr(teacher), addr(proj), addr(mlps[:n_q]), addr(mlps[n_q:]))
    loss = _impl.call(_CPU, _CUDA, student[0], config, head, inputs,
                      (attention.data_ptr(), *[addr(g) for g in grad_buffers]))
    if not want_grads:
        return loss, attention, []
    originals = list(query) + list(key)
    return loss, attention, grad_student + grad_proj + [g.to(m.dtype) for g, m in zip(grad_mlps, originals)]


def _fake(student, teacher, proj, query, key, loss_weight, eps, want_grads):
    first = student[0]
    # The CPU reference returns the attention in f64, the kernels in f32.
    attention_dtype = torch.float64 if first.device.type == "cpu" else torch.float32
    attention = first.new_empty((first.shape[0], len(student), len(teacher)), dtype=attention_dtype)
    grads = [x.new_empty(x.shape) for x in list(student) + list(proj) + list(query) + list(key)] if want_grads else []
    return _ops.loss_like(first), attention, grads


def _setup(ctx, inputs, output):
    student, teacher, proj, query, key = inputs[:5]
    _, attention, grads = output
    ctx.mark_non_differentiable(attention, *grads)
    ctx.save_for_backward(*grads)
    ctx.counts = (len(student), len(teacher), len(proj), len(query), len(key))


def _backward(ctx, grad_loss, _grad_attention, _grad_grads):
    s_n, t_n, p_n, q_n, k_n = ctx.counts
    grads = ctx.saved_tensors
    if grads:
        grads = [g * grad_loss.to(g.dtype) for g in grads]
    else:  # none was asked for (only the teacher requires grad): lists of None, as the inputs are lists
        grads = [None] * (s_n + p_n + q_n + k_n)
    at = [0, s_n, s_n + p_n, s_n + p_n + q_n, s_n + p_n + q_n + k_n]
    return (grads[at[0]:at[1]], [None] * t_n, grads[at[1]:at[2]], grads[at[2]:at[3]], grads[at[3]:at[4]],
            None, None, None)


_OP = _ops.define(
    "semckd",
    "(Tensor[] student, Tensor[] teacher, Tensor[] proj, Tensor[] query, Tensor[] key, float loss_weight,"
    " float eps, bool want_grads) -> (Tensor, Tensor, Tensor[])",
    semckd_kernel, _fake, _setup, _backward)
OPS = (_OP,)  # the ops this family defines


def _check_inputs(student, teacher, proj, query, key) -> None:
    """SemCKD's lists: counts, one dtype and device, the regressor outputs' and the MLPs' shapes."""
    s_n, t_n = len(student), len(teacher)
    if s_n == 0 or t_n == 0:
        raise KdInputError("student/teacher: give at least one feature map on each side")
    for i, s in enumerate(student):
        _checks.tensors(s, teacher[0])
        if s.device != student[0].device:
            raise KdInputError(f"student[{i}]: on {s.device} while student[0] is on {student[0].device}")
    for t in teacher:
        _checks.tensors(student[0], t)
    if len(proj) != s_n or any(len(row) != t_n for row in proj):
        raise KdInputError(f"proj: expected {s_n} rows (one per student map) of {t_n} tensors (one per teacher map)")
    if len(query) != s_n or len(key) != t_n or any(len(m) != 4 for m in list(query) + list(key)):
        raise KdInputError(f"query/key: expected {s_n} query and {t_n} key MLPs of 4 tensors "
                           "(linear1.weight, linear1.bias, linear2.weight, linear2.bias)")
    for s in list(student) + list(teacher):
        if s.dim() != 4:
            raise KdInputError(f"student: expected a rank-4 tensor (NCHW), got rank {s.dim()}; reshape it to [N, C, H, W]")
    batch = student[0].shape[0]
    d = query[0][3].shape[0] if isinstance(query[0][3], torch.Tensor) and query[0][3].dim() == 1 else 0
    device = student[0].device
    # The regressor outputs at the compared size h = min(Hs_i, Ht_j).
    for i in range(s_n):
        for j in range(t_n):
            h = min(student[i].shape[2], teacher[j].shape[2])
            want = [batch, teacher[j].shape[1], h, h]
            p = proj[i][j]
            _checks.tensors(student[0], p)
            if list(p.shape) != want:
                raise KdInputError(f"proj[i][j]: shape {list(p.shape)} does not match the expected {want} (i = {i}, j = {j})")
    mlp_shapes = ([2 * d, batch], [2 * d], [d, 2 * d], [d])
    for side, lst in (("query", query), ("key", key)):
        for k, m in enumerate(lst):
            for name, tensor, want in zip(_MLP_NAMES, m, mlp_shapes):
                if not isinstance(tensor, torch.Tensor) or tensor.device != device:
                    raise KdInputError(f"{side}[{k}].{name}: expected a tensor on {device}")
                if list(tensor.shape) != want:
                    raise KdInputError(f"{side}[{k}].{name}: shape {list(tensor.shape)} does not match the expected {want}")


def semckd_loss(student, teacher, proj, query, key, loss_weight: float = 400.0, eps: float | None = None,
                return_attention: bool = False):
    """SemCKD (Chen et al., AAAI 2021; docs/losses.md §4) without the regressors, which stay yours.

    ``student``: S maps ``[B, Cs_i, Hs_i, Ws_i]``; ``teacher``: T maps ``[B, Ct_j, Ht_j, Wt_j]`` (a constant);
    ``proj[i][j]``: your regressor's output for the pair, ``[B, Ct_j, h, h]`` with ``h = min(Hs_i, Ht_j)``;
    ``query[i]`` / ``key[j]``: the ``MLPEmbed`` parameters ``(linear1.weight [2d, B], linear1.bias [2d],
    linear2.weight [d, 2d], linear2.bias [d])`` (read as f32; officially ``d = B // 4``). Returns
    ``loss_weight * sum(alpha * mse) / (B * S)`` (and the attention ``[B, S, T]`` with ``return_attention``);
    ``backward()`` fills the gradients of the student maps (the Gram/attention path), of ``proj`` (run your
    regressors' backward from there: autograd does it when ``proj`` came from them) and of the MLPs. Default
    weight 400 (CIFAR-100; 50 on ImageNet); ``eps=None`` is the official normalisation without epsilon."""
    _check_inputs(student, teacher, proj, query, key)
    flat_proj = [p for row in proj for p in row]
    query = [p for m in query for p in m]
    key = [p for m in key for p in m]
    want = torch.is_grad_enabled() and any(x.requires_grad for x in (*student, *flat_proj, *query, *key))
    loss, attention, _ = _OP(list(student), list(teacher), flat_proj, query, key, float(loss_weight),
                             0.0 if eps is None else float(eps), want)
    return (loss, attention) if return_attention else loss
