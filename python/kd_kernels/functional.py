"""The losses as functions with autograd, on CUDA tensors (the kernels, on the current stream, no host
synchronisation) and CPU tensors (the crate's f64 reference)."""

from __future__ import annotations

import ctypes
import math

import torch
from torch.autograd.function import once_differentiable

from . import _lib
from ._lib import KdInputError

__all__ = ["cwd_loss", "pixel_kd_loss", "cwt_loss", "icsd_loss", "aicsd_loss", "alw_alpha", "semckd_loss"]

_DTYPE_CODES = {
    torch.float32: _lib.DTYPE_F32,
    torch.float16: _lib.DTYPE_F16,
    torch.bfloat16: _lib.DTYPE_BF16,
    torch.float64: _lib.DTYPE_F64,  # the CPU reference only; the kernels refuse it with the crate's message
}
_DTYPE_NAMES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}
_REDUCTIONS = {"mean": 0, "batchmean": 1, "sum": 2, "pixelmean": 3}
_CWT_NORMALIZE = {"batch": 0, "mean": 1}
_ICSD_VARIANTS = {"official": 0, "paper": 1}
_CWT_PARAM_NAMES = ("mlp.linear1.weight", "mlp.linear1.bias", "mlp.linear2.weight", "mlp.linear2.bias")


def _check_tensors(student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Types, dtypes and devices of a student/teacher pair, in the crate's wording."""
    for name, tensor in (("student", student), ("teacher", teacher)):
        if not isinstance(tensor, torch.Tensor):
            raise KdInputError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if student.dtype not in _DTYPE_CODES:
        raise KdInputError(
            f"student: dtype {student.dtype} is not supported; use float32, float16 or bfloat16 "
            "(or float64 on the CPU)"
        )
    if teacher.dtype != student.dtype:
        raise KdInputError(
            f"teacher: dtype {_DTYPE_NAMES.get(teacher.dtype, teacher.dtype)} where "
            f"{_DTYPE_NAMES[student.dtype]} is needed"
        )
    if teacher.device != student.device:
        raise KdInputError(
            f"teacher: on {teacher.device} while the student is on {student.device}; put both on one device"
        )
    if student.device.type not in ("cpu", "cuda"):
        raise KdInputError(f"student: device {student.device} is not supported; use a CUDA or a CPU tensor")


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the C ABI cannot see (it takes one dtype, one shape and one device for both tensors), checked
    here with the crate's wording; the rest (rank, empty dimensions, sizes, parameters) is the crate's.
    Returns contiguous tensors: a non-contiguous one (a slice, a permuted view) is copied, since the kernels
    read dense NCHW."""
    _check_tensors(student, teacher)
    if student.dim() == 4 and teacher.shape != student.shape:
        raise KdInputError(f"teacher: shape {list(teacher.shape)} does not match the expected {list(student.shape)}")
    return student.detach().contiguous(), teacher.detach().contiguous()


def _address(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scaled(grad: torch.Tensor | None, grad_loss: torch.Tensor) -> torch.Tensor | None:
    # On the device, without reading grad_loss on the host (usually 1, or an AMP scale).
    return None if grad is None else grad * grad_loss.to(grad.dtype)


def _run(student, teacher, want_student, want_teacher, cuda_call, cpu_call):
    """One call of a loss: the loss (a 0-d tensor) and the requested gradients, in the input dtype."""
    dims, ndim = _lib.shape_array(student.shape)
    code = _DTYPE_CODES[student.dtype]
    grad_s = torch.empty_like(student) if want_student else None
    grad_t = torch.empty_like(teacher) if want_teacher else None
    if student.device.type == "cuda":
        device = student.device
        loss = torch.empty((), dtype=torch.float32, device=device)
        stream = torch.cuda.current_stream(device).cuda_stream
        _lib.check(cuda_call(_lib.context(device.index), dims, ndim, code, loss, grad_s, grad_t, stream))
    else:
        value = ctypes.c_double()
        _lib.check(cpu_call(dims, ndim, code, ctypes.byref(value), grad_s, grad_t))
        loss = torch.tensor(value.value, dtype=_loss_dtype(student.dtype))
    return loss, grad_s, grad_t


def _cwd(student, teacher, tau, loss_weight, want_student, want_teacher):
    student, teacher = _check_pair(student, teacher)
    params = _lib.CwdParams(float(tau), float(loss_weight))
    # The crate's teacher gradient comes with the student's.
    want_student = want_student or want_teacher

    def cuda_call(ctx, dims, ndim, code, loss, grad_s, grad_t, stream):
        return _lib.lib.kd_cwd_cuda(ctx, ctypes.byref(params), dims, ndim, code, _address(student),
                                    _address(teacher), _address(loss), _address(grad_s), _address(grad_t), 0,
                                    _lib.options(), stream)

    def cpu_call(dims, ndim, code, loss, grad_s, grad_t):
        return _lib.lib.kd_cwd_cpu(ctypes.byref(params), dims, ndim, code, _address(student), _address(teacher),
                                   loss, _address(grad_s) or None, _address(grad_t) or None, _lib.options())

    return _run(student, teacher, want_student, want_teacher, cuda_call, cpu_call)


def _pixel_kd(student, teacher, tau, loss_weight, reduction, scale_tau2, want_student):
    if reduction not in _REDUCTIONS:
        # The crate's `Reduction::from_str` message.
        raise KdInputError(
            f"parameter `reduction` = {reduction!r} is invalid: it must be one of mean, batchmean, sum, pixelmean"
        )
    student, teacher = _check_pair(student, teacher)
    params = _lib.PixelKdParams(float(tau), float(loss_weight), _REDUCTIONS[reduction], 1 if scale_tau2 else 0)

    def cuda_call(ctx, dims, ndim, code, loss, grad_s, _grad_t, stream):
        return _lib.lib.kd_pixel_kd_cuda(ctx, ctypes.byref(params), dims, ndim, code, _address(student),
                                         _address(teacher), _address(loss), _address(grad_s), 0, _lib.options(),
                                         stream)

    def cpu_call(dims, ndim, code, loss, grad_s, _grad_t):
        return _lib.lib.kd_pixel_kd_cpu(ctypes.byref(params), dims, ndim, code, _address(student),
                                        _address(teacher), loss, _address(grad_s) or None, _lib.options())

    return _run(student, teacher, want_student, False, cuda_call, cpu_call)


def _cwt_params(student, teacher, weights):
    """The four MLP parameters as contiguous f32 2-D/1-D tensors on the student's device (a 1x1 convolution's
    [out, in, 1, 1] weight is read as [out, in]), checked against the channel counts in the crate's words."""
    cs = student.shape[1] if student.dim() == 4 else 0
    ct = teacher.shape[1] if teacher.dim() == 4 else 0
    w1 = weights[0]
    ch = w1.shape[0] if isinstance(w1, torch.Tensor) and w1.dim() >= 1 else 0
    expected = ([ch, cs], [ch], [ct, ch], [ct])
    prepared = []
    for name, tensor, want in zip(_CWT_PARAM_NAMES, weights, expected):
        if not isinstance(tensor, torch.Tensor):
            raise KdInputError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device != student.device:
            raise KdInputError(f"{name}: on {tensor.device} while the student is on {student.device}; put both on one device")
        if not tensor.is_floating_point():
            raise KdInputError(f"{name}: dtype {tensor.dtype} is not supported; use a floating-point tensor (read as f32)")
        shape = list(tensor.shape)
        if len(want) == 2 and len(shape) == 4 and shape[2:] == [1, 1]:
            shape = shape[:2]
        # With a feature map of the wrong rank the crate's rank error comes first (the counts are unknown).
        if shape != want and student.dim() == 4 and teacher.dim() == 4:
            raise KdInputError(f"{name}: shape {list(tensor.shape)} does not match the expected {want}")
        prepared.append(tensor.detach().reshape(shape).to(torch.float32).contiguous())
    return prepared


def _cwt(student, teacher, weights, loss_weight, normalize, want_grads):
    if normalize not in _CWT_NORMALIZE:
        raise KdInputError(f"parameter `normalize` = {normalize!r} is invalid: it must be one of batch, mean")
    _check_tensors(student, teacher)
    student, teacher = student.detach().contiguous(), teacher.detach().contiguous()
    params32 = _cwt_params(student, teacher, weights)
    ch = params32[0].shape[0]
    params = _lib.CwtParams(float(loss_weight), _CWT_NORMALIZE[normalize], ch)
    s_dims, s_ndim = _lib.shape_array(student.shape)
    t_dims, t_ndim = _lib.shape_array(teacher.shape)
    code = _DTYPE_CODES[student.dtype]
    grad_s = torch.empty_like(student) if want_grads else None
    if student.device.type == "cuda":
        device = student.device
        loss = torch.empty((), dtype=torch.float32, device=device)
        grad_w = [torch.empty_like(p) for p in params32] if want_grads else None
        w_addr = (ctypes.c_uint64 * 4)(*[p.data_ptr() for p in params32])
        g_addr = (ctypes.c_uint64 * 4)(*[g.data_ptr() for g in grad_w]) if want_grads else None
        stream = torch.cuda.current_stream(device).cuda_stream
        _lib.check(_lib.lib.kd_cwt_cuda(_lib.context(device.index), ctypes.byref(params), s_dims, s_ndim, t_dims,
                                        t_ndim, code, _address(student), _address(teacher), w_addr, _address(loss),
                                        _address(grad_s), g_addr, 0, _lib.options(), stream))
    else:
        grad_w = [torch.empty(p.shape, dtype=torch.float64) for p in params32] if want_grads else None
        w_ptrs = (ctypes.c_void_p * 4)(*[p.data_ptr() for p in params32])
        g_ptrs = (ctypes.c_void_p * 4)(*[g.data_ptr() for g in grad_w]) if want_grads else None
        value = ctypes.c_double()
        _lib.check(_lib.lib.kd_cwt_cpu(ctypes.byref(params), s_dims, s_ndim, t_dims, t_ndim, code,
                                       _address(student), _address(teacher), w_ptrs, ctypes.byref(value),
                                       _address(grad_s) or None, g_ptrs, _lib.options()))
        loss = torch.tensor(value.value, dtype=_loss_dtype(student.dtype))
    return loss, grad_s, grad_w


def _icsd(student, teacher, tau, loss_weight, variant, want_student):
    if variant not in _ICSD_VARIANTS:
        # The crate's `IcsdVariant::parse` message.
        raise KdInputError(f"parameter `variant` = {variant} is invalid: it must be `official` or `paper`")
    student, teacher = _check_pair(student, teacher)
    params = _lib.IcsdParams(float(tau), float(loss_weight), _ICSD_VARIANTS[variant])

    def cuda_call(ctx, dims, ndim, code, loss, grad_s, _grad_t, stream):
        return _lib.lib.kd_icsd_cuda(ctx, ctypes.byref(params), dims, ndim, code, _address(student),
                                     _address(teacher), _address(loss), _address(grad_s), 0, 0, 0, _lib.options(),
                                     stream)

    def cpu_call(dims, ndim, code, loss, grad_s, _grad_t):
        return _lib.lib.kd_icsd_cpu(ctypes.byref(params), dims, ndim, code, _address(student), _address(teacher),
                                    loss, _address(grad_s) or None, None, None, _lib.options())

    return _run(student, teacher, want_student, False, cuda_call, cpu_call)


class _IcsdFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, tau, loss_weight, variant):
        loss, grad_s, _ = _icsd(student, teacher, tau, loss_weight, variant, ctx.needs_input_grad[0])
        ctx.grad_s = grad_s
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        return _scaled(ctx.grad_s, grad_loss), None, None, None, None


class _CwdFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, tau, loss_weight):
        want_s, want_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # One fused call: the gradients are computed with the loss (the logits are read once) and scaled by
        # the upstream gradient in backward.
        loss, grad_s, grad_t = _cwd(student, teacher, tau, loss_weight, want_s, want_t)
        ctx.grads = (grad_s if want_s else None, grad_t)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grad_s, grad_t = ctx.grads
        return _scaled(grad_s, grad_loss), _scaled(grad_t, grad_loss), None, None


class _PixelKdFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, tau, loss_weight, reduction, scale_tau2):
        want_s = ctx.needs_input_grad[0]
        loss, grad_s, _ = _pixel_kd(student, teacher, tau, loss_weight, reduction, scale_tau2, want_s)
        ctx.grad_s = grad_s
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grad_s = ctx.grad_s
        return _scaled(grad_s, grad_loss), None, None, None, None, None


class _CwtFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, w1, b1, w2, b2, loss_weight, normalize):
        weights = (w1, b1, w2, b2)
        want = any(ctx.needs_input_grad[i] for i in (0, 2, 3, 4, 5))
        loss, grad_s, grad_w = _cwt(student, teacher, weights, loss_weight, normalize, want)
        needs = ctx.needs_input_grad
        ctx.grads = (
            grad_s if needs[0] else None,
            # Back to each parameter's own shape and dtype ([out, in, 1, 1] for a convolution's weight).
            [g.reshape(w.shape).to(w.dtype) if needs[2 + i] else None for i, (g, w) in enumerate(zip(grad_w, weights))]
            if want else [None] * 4,
        )
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grad_s, grad_w = ctx.grads
        return (_scaled(grad_s, grad_loss), None, *[_scaled(g, grad_loss) for g in grad_w], None, None)


def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 4.0, loss_weight: float = 3.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021; docs/losses.md §1): per (n, c), a softmax over the
    H*W positions of ``x / tau``; ``loss_weight * tau^2 / (N*C) * sum KL(pT || pS)``.

    ``student`` and ``teacher`` are NCHW logits of one shape, dtype (float32, float16, bfloat16; float64 on
    the CPU) and device. Returns a 0-d float32 tensor (float64 for float64 inputs) on that device;
    ``backward()`` fills ``student.grad``, and ``teacher.grad`` when the teacher requires grad. Defaults:
    the paper's (tau 4, weight 3). Non-contiguous inputs are copied to contiguous ones."""
    return _CwdFunction.apply(student, teacher, tau, loss_weight)


def pixel_kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    tau: float = 1.0,
    loss_weight: float = 10.0,
    reduction: str = "mean",
    scale_tau2: bool = False,
) -> torch.Tensor:
    """Pixel-wise KD (docs/losses.md §2): per pixel, a softmax over the C channels of ``x / tau``;
    ``loss_weight * [tau^2] / divisor * sum KL(pT || pS)`` with divisor N*C*H*W (``mean``), N
    (``batchmean``), 1 (``sum``) or N*H*W (``pixelmean``), and tau^2 when ``scale_tau2``.

    Defaults: the official TorchDistiller ``CriterionKD`` / AICSD ``pi_loss`` (tau 1, weight 10, ``mean``).
    The teacher is a constant (no gradient flows into it, as in every official config). Otherwise as
    :func:`cwd_loss`."""
    return _PixelKdFunction.apply(student, teacher, tau, loss_weight, reduction, scale_tau2)


def cwt_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    loss_weight: float = 2e-5,
    normalize: str = "batch",
) -> torch.Tensor:
    """Channel-wise transformation (CWT, Liu et al. 2023; docs/losses.md §5, no official code exists): per
    pixel ``Y = W2 ReLU(W1 x + b1) + b2`` (1x1 convolutions ``Cs -> Ch -> Ct``), ``loss = loss_weight *
    sum (Y - teacher)^2 / D`` with ``D = N`` (``batch``, MGD's normaliser) or ``N*Ct*H*W`` (``mean``).

    ``student`` ``[N, Cs, H, W]`` and ``teacher`` ``[N, Ct, H, W]`` features (one dtype and device);
    ``w1`` ``[Ch, Cs]`` (or a 1x1 convolution's ``[Ch, Cs, 1, 1]``), ``b1`` ``[Ch]``, ``w2`` ``[Ct, Ch]`` (or
    ``[Ct, Ch, 1, 1]``), ``b2`` ``[Ct]``, read as f32 (the crate keeps the MLP in f32). ``backward()`` fills
    the gradients of the student and of the four parameters; the teacher is a constant."""
    return _CwtFunction.apply(student, teacher, w1, b1, w2, b2, loss_weight, normalize)


def icsd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    tau: float = 1.0,
    loss_weight: float = 9500.0,
    variant: str = "official",
) -> torch.Tensor:
    """Inter-class similarity distillation ``L_ICS`` (Mansourian et al. 2023; docs/losses.md §3): per class a
    softmax of the logits (``official``: along H, per column, as the official code; ``paper``: over H*W), a
    C x C similarity matrix per network, rows L2-normalised, ``loss_weight / (C^2 B) * sum (Mh_S - Mh_T)^2``.
    Defaults: the official code's (tau 1, ``lo_lambda`` 9500). The teacher is a constant. Otherwise as
    :func:`cwd_loss`."""
    return _IcsdFunction.apply(student, teacher, tau, loss_weight, variant)


def alw_alpha(epoch: float, total_epochs: float = 120.0) -> float:
    """AICSD's adaptive loss weighting ``alpha = clamp(epoch / total_epochs, 0, 1)`` (docs/losses.md §3.10)."""
    if not (math.isfinite(total_epochs) and total_epochs > 0):
        raise KdInputError(f"parameter `total_epochs` = {total_epochs} is invalid: it must be finite and > 0")
    if not math.isfinite(epoch):
        raise KdInputError(f"parameter `epoch` = {epoch} is invalid: it must be finite")
    return min(max(epoch / total_epochs, 0.0), 1.0)


def aicsd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    epoch: float,
    tau: float = 1.0,
    ics_weight: float = 9500.0,
    kd_weight: float = 10.0,
    variant: str = "official",
    total_epochs: float = 120.0,
) -> torch.Tensor:
    """AICSD without the task loss: ``alpha * L_ICS + (1 - alpha) * L_KD`` with ``alpha = alw_alpha(epoch,
    total_epochs)`` (docs/losses.md §3.10; officially ``alpha * (L_CE + L_ICS) + (1 - alpha) * L_KD``, so
    weigh your cross-entropy by :func:`alw_alpha` too). ``L_KD`` is :func:`pixel_kd_loss` with ``kd_weight``
    and the official ``mean`` reduction, at the same ``tau``."""
    alpha = alw_alpha(epoch, total_epochs)
    ics = icsd_loss(student, teacher, tau, ics_weight, variant)
    kd = pixel_kd_loss(student, teacher, tau, kd_weight, "mean", False)
    return alpha * ics + (1.0 - alpha) * kd


_SEMCKD_MLP_NAMES = ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")


def _semckd(student, teacher, proj, query, key, loss_weight, eps, want_grads):
    """One SemCKD call; returns the loss, the attention and (with ``want_grads``) the gradients of the student
    maps, the regressor outputs and the MLP parameters (f32; f64 on the CPU)."""
    s_n, t_n = len(student), len(teacher)
    if s_n == 0 or t_n == 0:
        raise KdInputError("student/teacher: give at least one feature map on each side")
    for i, s in enumerate(student):
        _check_tensors(s, teacher[0])
        if s.device != student[0].device:
            raise KdInputError(f"student[{i}]: on {s.device} while student[0] is on {student[0].device}")
    for j, t in enumerate(teacher):
        _check_tensors(student[0], t)
    if len(proj) != s_n or any(len(row) != t_n for row in proj):
        raise KdInputError(f"proj: expected {s_n} rows (one per student map) of {t_n} tensors (one per teacher map)")
    if len(query) != s_n or len(key) != t_n or any(len(m) != 4 for m in list(query) + list(key)):
        raise KdInputError(f"query/key: expected {s_n} query and {t_n} key MLPs of 4 tensors "
                           "(linear1.weight, linear1.bias, linear2.weight, linear2.bias)")
    for s in list(student) + list(teacher):
        if s.dim() != 4:
            raise KdInputError(f"student: expected a rank-4 tensor (NCHW), got rank {s.dim()}; reshape it to [N, C, H, W]")
    batch = student[0].shape[0]
    d = query[0][3].shape[0] if query[0][3].dim() == 1 else 0
    device = student[0].device
    # The regressor outputs at the compared size h = min(Hs_i, Ht_j), in the crate's words.
    for i in range(s_n):
        for j in range(t_n):
            h = min(student[i].shape[2], teacher[j].shape[2])
            want = [batch, teacher[j].shape[1], h, h]
            p = proj[i][j]
            _check_tensors(student[0], p)
            if list(p.shape) != want:
                raise KdInputError(f"proj[i][j]: shape {list(p.shape)} does not match the expected {want} (i = {i}, j = {j})")
    mlp_shapes = ([2 * d, batch], [2 * d], [d, 2 * d], [d])
    mlps = []
    for side, lst in (("query", query), ("key", key)):
        for k, m in enumerate(lst):
            for name, tensor, want in zip(_SEMCKD_MLP_NAMES, m, mlp_shapes):
                if not isinstance(tensor, torch.Tensor) or tensor.device != device:
                    raise KdInputError(f"{side}[{k}].{name}: expected a tensor on {device}")
                if list(tensor.shape) != want:
                    raise KdInputError(f"{side}[{k}].{name}: shape {list(tensor.shape)} does not match the expected {want}")
                mlps.append(tensor.detach().to(torch.float32).contiguous())
    student = [x.detach().contiguous() for x in student]
    teacher = [x.detach().contiguous() for x in teacher]
    proj_flat = [proj[i][j].detach().contiguous() for i in range(s_n) for j in range(t_n)]
    params = _lib.SemckdParams(float(loss_weight), 0.0 if eps is None else float(eps), d)
    s_shapes = (ctypes.c_int64 * (4 * s_n))(*[v for x in student for v in x.shape])
    t_shapes = (ctypes.c_int64 * (4 * t_n))(*[v for x in teacher for v in x.shape])
    code = _DTYPE_CODES[student[0].dtype]
    grad_student = [torch.empty_like(x) for x in student] if want_grads else None
    grad_proj = [torch.empty_like(x) for x in proj_flat] if want_grads else None
    attention = torch.empty((batch, s_n, t_n), dtype=torch.float32 if device.type == "cuda" else torch.float64,
                            device=device)
    if device.type == "cuda":
        u64 = ctypes.c_uint64

        def addr(tensors):
            return None if tensors is None else (u64 * len(tensors))(*[x.data_ptr() for x in tensors])

        loss = torch.empty((), dtype=torch.float32, device=device)
        grad_mlps = [torch.empty_like(m) for m in mlps] if want_grads else None
        n_q = 4 * s_n
        stream = torch.cuda.current_stream(device).cuda_stream
        _lib.check(_lib.lib.kd_semckd_cuda(
            _lib.context(device.index), ctypes.byref(params), s_n, s_shapes, t_n, t_shapes, code, addr(student),
            addr(teacher), addr(proj_flat), addr(mlps[:n_q]), addr(mlps[n_q:]), loss.data_ptr(), attention.data_ptr(),
            addr(grad_student), addr(grad_proj), addr(grad_mlps[:n_q] if want_grads else None),
            addr(grad_mlps[n_q:] if want_grads else None), 0, _lib.options(), stream))
    else:
        vp = ctypes.c_void_p

        def ptrs(tensors):
            return None if tensors is None else (vp * len(tensors))(*[x.data_ptr() for x in tensors])

        grad_mlps = [torch.empty(m.shape, dtype=torch.float64) for m in mlps] if want_grads else None
        n_q = 4 * s_n
        value = ctypes.c_double()
        _lib.check(_lib.lib.kd_semckd_cpu(
            ctypes.byref(params), s_n, s_shapes, t_n, t_shapes, code, ptrs(student), ptrs(teacher), ptrs(proj_flat),
            ptrs(mlps[:n_q]), ptrs(mlps[n_q:]), ctypes.byref(value), attention.data_ptr(), ptrs(grad_student),
            ptrs(grad_proj), ptrs(grad_mlps[:n_q] if want_grads else None),
            ptrs(grad_mlps[n_q:] if want_grads else None), _lib.options()))
        loss = torch.tensor(value.value, dtype=_loss_dtype(student[0].dtype))
    return loss, attention, grad_student, grad_proj, grad_mlps


class _SemckdFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layout, loss_weight, eps, *tensors):
        s_n, t_n = layout
        student = tensors[:s_n]
        teacher = tensors[s_n:s_n + t_n]
        flat_proj = tensors[s_n + t_n:s_n + t_n + s_n * t_n]
        proj = [flat_proj[i * t_n:(i + 1) * t_n] for i in range(s_n)]
        mlps = tensors[s_n + t_n + s_n * t_n:]
        query = [mlps[4 * i:4 * i + 4] for i in range(s_n)]
        key = [mlps[4 * s_n + 4 * j:4 * s_n + 4 * j + 4] for j in range(t_n)]
        want = any(ctx.needs_input_grad[3:])
        loss, attention, g_s, g_p, g_m = _semckd(student, teacher, proj, query, key, loss_weight, eps, want)
        ctx.mark_non_differentiable(attention)
        if want:
            grads = [None] * len(tensors)
            for k, g in enumerate(g_s):
                grads[k] = g
            for k, g in enumerate(g_p):
                grads[s_n + t_n + k] = g
            for k, (g, m) in enumerate(zip(g_m, mlps)):
                grads[s_n + t_n + s_n * t_n + k] = g.to(m.dtype)
            ctx.grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[3:])]
        else:
            ctx.grads = [None] * len(tensors)
        return loss, attention

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_attention):
        return (None, None, None, *[_scaled(g, grad_loss) for g in ctx.grads])


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
    s_n, t_n = len(student), len(teacher)
    flat = list(student) + list(teacher) + [p for row in proj for p in row] + [p for m in list(query) + list(key) for p in m]
    if len(proj) != s_n or any(len(row) != t_n for row in proj):
        raise KdInputError(f"proj: expected {s_n} rows (one per student map) of {t_n} tensors (one per teacher map)")
    loss, attention = _SemckdFunction.apply((s_n, t_n), loss_weight, eps, *flat)
    return (loss, attention) if return_attention else loss
