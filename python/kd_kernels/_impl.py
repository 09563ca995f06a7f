"""The bodies of the custom ops: one C ABI call per loss and device, on tensors the caller has checked.

Each returns the loss (a 0-d tensor: f32, or f64 for f64 inputs on the CPU) and the gradients the call was
asked for, computed in the same pass as the loss (the logits are read once); a gradient that was not asked
for is None (the op kernels in _ops.py return an empty tensor in its place: an op returns tensors). What the C ABI cannot see (one dtype and one
device for a pair, the MLPs' shapes) is checked before the op is called, in functional.py.

Host cost matters here: at small shapes this path, not the kernel, sets the time of a call, so it avoids
per-call objects: shape arrays are cached, a parameter struct goes to its pointer argument by ctypes'
automatic byref, addresses are plain integers, the CPU loss comes back as one C double made into a 0-d
tensor (cheaper than allocating a tensor for the crate to write and converting it)."""

from __future__ import annotations

import ctypes

import torch

from . import _lib

DTYPE_CODES = {
    torch.float32: _lib.DTYPE_F32,
    torch.float16: _lib.DTYPE_F16,
    torch.bfloat16: _lib.DTYPE_BF16,
    torch.float64: _lib.DTYPE_F64,  # the CPU reference only; the kernels refuse it with the crate's message
}
REDUCTIONS = {"mean": 0, "batchmean": 1, "sum": 2, "pixelmean": 3}
CWT_NORMALIZE = {"batch": 0, "mean": 1}
ICSD_VARIANTS = {"official": 0, "paper": 1}
LABEL_CODES = {torch.uint8: _lib.LABEL_U8, torch.int32: _lib.LABEL_I32, torch.int64: _lib.LABEL_I64}

_F32, _F64 = torch.float32, torch.float64
_C = _lib.lib
_OPTIONS = _lib.DEFAULT_OPTIONS
_U64 = ctypes.c_uint64
_VP = ctypes.c_void_p

try:  # the raw cudaStream_t of the current stream, without building a torch.cuda.Stream object
    _raw_stream = torch._C._cuda_getCurrentRawStream
except AttributeError:  # a CPU-only build of torch
    _raw_stream = None


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The loss's dtype: f64 for f64 inputs (the CPU reference), else f32."""
    return _F64 if dtype == _F64 else _F32


def _stream(device: torch.device) -> int:
    if _raw_stream is not None:
        return _raw_stream(device.index)
    return torch.cuda.current_stream(device).cuda_stream


_byref = ctypes.byref
_c_double = ctypes.c_double
_scalar_tensor = torch.scalar_tensor


def _cpu_loss(value: ctypes.c_double, dtype: torch.dtype) -> torch.Tensor:
    # The crate writes one double; rounded once to f32 unless the inputs are f64.
    return _scalar_tensor(value.value, dtype=_F64 if dtype == _F64 else _F32)


def _pair(student, teacher):
    return student.contiguous(), teacher.contiguous()


def _grad(student, want):
    # `student` is contiguous here, so its empty_like is too (as the fake kernels state).
    return torch.empty_like(student) if want else None


def _ptr(tensor):
    return 0 if tensor is None else tensor.data_ptr()


# ---- CWD -------------------------------------------------------------------------------------------------

def cwd_cpu(student, teacher, tau, loss_weight, want_student, want_teacher):
    student, teacher = _pair(student, teacher)
    # The crate computes the teacher's gradient with the student's.
    gs, gt = _grad(student, want_student or want_teacher), _grad(teacher, want_teacher)
    value = _c_double()
    _lib.check(_C.kd_cwd_cpu(_lib.CwdParams(tau, loss_weight), _lib.shape_array(student.shape), student.dim(),
                             DTYPE_CODES[student.dtype], student.data_ptr(), teacher.data_ptr(), _byref(value),
                             _ptr(gs), _ptr(gt), _OPTIONS))
    return _cpu_loss(value, student.dtype), gs, gt


def cwd_cuda(student, teacher, tau, loss_weight, want_student, want_teacher):
    student, teacher = _pair(student, teacher)
    gs, gt = _grad(student, want_student or want_teacher), _grad(teacher, want_teacher)
    device = student.device
    loss = torch.empty((), dtype=_F32, device=device)
    _lib.check(_C.kd_cwd_cuda(_lib.context(device.index), _lib.CwdParams(tau, loss_weight),
                              _lib.shape_array(student.shape), student.dim(), DTYPE_CODES[student.dtype],
                              student.data_ptr(), teacher.data_ptr(), loss.data_ptr(), _ptr(gs), _ptr(gt), 0,
                              _OPTIONS, _stream(device)))
    return loss, gs, gt


# ---- pixel KD, DIST and ICSD: the student's gradient only, one shape for the pair ---------------------------

def _student_only_cpu(entry, params, student, teacher, want_student, *outputs):
    """``entry(params, shape, ndim, dtype, student, teacher, &loss, grad_student, *outputs, options)``, the
    CPU reference; ``outputs`` are a loss's extra outputs (null: not wanted)."""
    student, teacher = _pair(student, teacher)
    gs = _grad(student, want_student)
    value = _c_double()
    _lib.check(entry(params, _lib.shape_array(student.shape), student.dim(), DTYPE_CODES[student.dtype],
                     student.data_ptr(), teacher.data_ptr(), _byref(value), _ptr(gs), *outputs, _OPTIONS))
    return _cpu_loss(value, student.dtype), gs


def _student_only_cuda(entry, params, student, teacher, want_student, *outputs):
    """``entry(ctx, params, shape, ndim, dtype, student, teacher, loss, grad_student, upstream, *outputs,
    options, stream)``, the kernels on the current stream (no upstream gradient: the op scales in backward)."""
    student, teacher = _pair(student, teacher)
    gs = _grad(student, want_student)
    device = student.device
    loss = torch.empty((), dtype=_F32, device=device)
    _lib.check(entry(_lib.context(device.index), params, _lib.shape_array(student.shape), student.dim(),
                     DTYPE_CODES[student.dtype], student.data_ptr(), teacher.data_ptr(), loss.data_ptr(), _ptr(gs),
                     0, *outputs, _OPTIONS, _stream(device)))
    return loss, gs


def _pixel_kd_params(tau, loss_weight, reduction, scale_tau2):
    return _lib.PixelKdParams(tau, loss_weight, REDUCTIONS[reduction], 1 if scale_tau2 else 0)


def pixel_kd_cpu(student, teacher, tau, loss_weight, reduction, scale_tau2, want_student):
    params = _pixel_kd_params(tau, loss_weight, reduction, scale_tau2)
    return _student_only_cpu(_C.kd_pixel_kd_cpu, params, student, teacher, want_student)


def pixel_kd_cuda(student, teacher, tau, loss_weight, reduction, scale_tau2, want_student):
    params = _pixel_kd_params(tau, loss_weight, reduction, scale_tau2)
    return _student_only_cuda(_C.kd_pixel_kd_cuda, params, student, teacher, want_student)


def dist_cpu(student, teacher, tau, inter_loss_weight, intra_loss_weight, loss_weight, want_student):
    params = _lib.DistParams(tau, inter_loss_weight, intra_loss_weight, loss_weight)
    return _student_only_cpu(_C.kd_dist_cpu, params, student, teacher, want_student)


def dist_cuda(student, teacher, tau, inter_loss_weight, intra_loss_weight, loss_weight, want_student):
    params = _lib.DistParams(tau, inter_loss_weight, intra_loss_weight, loss_weight)
    return _student_only_cuda(_C.kd_dist_cuda, params, student, teacher, want_student)


def icsd_cpu(student, teacher, tau, loss_weight, variant, want_student):
    params = _lib.IcsdParams(tau, loss_weight, ICSD_VARIANTS[variant])
    # The similarity matrices (sim_student, sim_teacher) are not an op output.
    return _student_only_cpu(_C.kd_icsd_cpu, params, student, teacher, want_student, None, None)


def icsd_cuda(student, teacher, tau, loss_weight, variant, want_student):
    params = _lib.IcsdParams(tau, loss_weight, ICSD_VARIANTS[variant])
    return _student_only_cuda(_C.kd_icsd_cuda, params, student, teacher, want_student, 0, 0)


# ---- IFVD ------------------------------------------------------------------------------------------------

def _ifvd_args(student, teacher, labels):
    student, teacher = _pair(student, teacher)
    labels = labels.contiguous()
    return student, teacher, labels, (_lib.shape_array(student.shape), student.dim(), _lib.shape_array(teacher.shape),
                                      teacher.dim(), _lib.shape_array(labels.shape), labels.dim(),
                                      DTYPE_CODES[student.dtype], LABEL_CODES[labels.dtype])


def ifvd_cpu(student, teacher, labels, num_classes, loss_weight, want_student):
    student, teacher, labels, shapes = _ifvd_args(student, teacher, labels)
    gs = _grad(student, want_student)
    value = _c_double()
    _lib.check(_C.kd_ifvd_cpu(_lib.IfvdParams(num_classes, loss_weight), *shapes, student.data_ptr(),
                              teacher.data_ptr(), labels.data_ptr(), _byref(value), _ptr(gs), _OPTIONS))
    return _cpu_loss(value, student.dtype), gs


def ifvd_cuda(student, teacher, labels, num_classes, loss_weight, want_student):
    student, teacher, labels, shapes = _ifvd_args(student, teacher, labels)
    gs = _grad(student, want_student)
    device = student.device
    loss = torch.empty((), dtype=_F32, device=device)
    _lib.check(_C.kd_ifvd_cuda(_lib.context(device.index), _lib.IfvdParams(num_classes, loss_weight), *shapes,
                               student.data_ptr(), teacher.data_ptr(), labels.data_ptr(), loss.data_ptr(), _ptr(gs),
                               0, _OPTIONS, _stream(device)))
    return loss, gs


# ---- CWT -------------------------------------------------------------------------------------------------

def _mlp32(weights):
    """The four MLP tensors as contiguous f32 [out, in] / [out] (a 1x1 convolution's [out, in, 1, 1] weight
    is read as [out, in]); their shapes were checked by the caller."""
    out = []
    for w in weights:
        if w.dim() == 4:
            w = w.reshape(w.shape[0], w.shape[1])
        out.append(w.to(_F32).contiguous())
    return out


def _cwt_grads(grad_w, weights):
    # Back to each parameter's own shape and dtype ([out, in, 1, 1] for a convolution's weight).
    return [g.reshape(w.shape).to(w.dtype) for g, w in zip(grad_w, weights)]


def cwt_cpu(student, teacher, w1, b1, w2, b2, loss_weight, normalize, want_grads):
    student, teacher = _pair(student, teacher)
    weights = (w1, b1, w2, b2)
    mlp = _mlp32(weights)
    params = _lib.CwtParams(loss_weight, CWT_NORMALIZE[normalize], mlp[0].shape[0])
    gs = _grad(student, want_grads)
    grad_w = [torch.empty(m.shape, dtype=_F64) for m in mlp] if want_grads else None
    value = _c_double()
    _lib.check(_C.kd_cwt_cpu(params, _lib.shape_array(student.shape), student.dim(), _lib.shape_array(teacher.shape),
                             teacher.dim(), DTYPE_CODES[student.dtype], student.data_ptr(), teacher.data_ptr(),
                             (_VP * 4)(*[m.data_ptr() for m in mlp]), _byref(value), _ptr(gs),
                             None if grad_w is None else (_VP * 4)(*[g.data_ptr() for g in grad_w]), _OPTIONS))
    if gs is None:
        return (_cpu_loss(value, student.dtype), None, None, None, None, None)
    return (_cpu_loss(value, student.dtype), gs, *_cwt_grads(grad_w, weights))


def cwt_cuda(student, teacher, w1, b1, w2, b2, loss_weight, normalize, want_grads):
    student, teacher = _pair(student, teacher)
    weights = (w1, b1, w2, b2)
    mlp = _mlp32(weights)
    params = _lib.CwtParams(loss_weight, CWT_NORMALIZE[normalize], mlp[0].shape[0])
    gs = _grad(student, want_grads)
    grad_w = [torch.empty_like(m) for m in mlp] if want_grads else None
    device = student.device
    loss = torch.empty((), dtype=_F32, device=device)
    _lib.check(_C.kd_cwt_cuda(_lib.context(device.index), params, _lib.shape_array(student.shape), student.dim(),
                              _lib.shape_array(teacher.shape), teacher.dim(), DTYPE_CODES[student.dtype],
                              student.data_ptr(), teacher.data_ptr(), (_U64 * 4)(*[m.data_ptr() for m in mlp]),
                              loss.data_ptr(), _ptr(gs),
                              None if grad_w is None else (_U64 * 4)(*[g.data_ptr() for g in grad_w]), 0, _OPTIONS,
                              _stream(device)))
    if gs is None:
        return (loss, None, None, None, None, None)
    return (loss, gs, *_cwt_grads(grad_w, weights))


# ---- SemCKD ----------------------------------------------------------------------------------------------

def _semckd(student, teacher, proj, query, key, loss_weight, eps, want_grads, cuda):
    """SemCKD's loss, attention [B, S, T] (f32 on CUDA, f64 on the CPU) and, with ``want_grads``, the
    gradients of the student maps, the regressor outputs and the MLPs (each in its input's dtype), in that
    order. ``proj`` is flat (pair (i, j) at i*T + j); ``query`` / ``key`` hold 4 tensors per MLP."""
    s_n, t_n = len(student), len(teacher)
    student = [x.contiguous() for x in student]
    teacher = [x.contiguous() for x in teacher]
    proj = [x.contiguous() for x in proj]
    mlps = [m.to(_F32).contiguous() for m in list(query) + list(key)]
    batch, device = student[0].shape[0], student[0].device
    params = _lib.SemckdParams(loss_weight, eps, mlps[3].shape[0])
    s_shapes = _lib.shape_array([v for x in student for v in x.shape])
    t_shapes = _lib.shape_array([v for x in teacher for v in x.shape])
    code = DTYPE_CODES[student[0].dtype]
    grad_student = [torch.empty_like(x) for x in student] if want_grads else None
    grad_proj = [torch.empty_like(x) for x in proj] if want_grads else None
    n_q = 4 * s_n
    if cuda:
        def addr(tensors):
            return None if tensors is None else (_U64 * len(tensors))(*[x.data_ptr() for x in tensors])

        attention = torch.empty((batch, s_n, t_n), dtype=_F32, device=device)
        loss = torch.empty((), dtype=_F32, device=device)
        grad_mlps = [torch.empty_like(m) for m in mlps] if want_grads else None
        _lib.check(_C.kd_semckd_cuda(
            _lib.context(device.index), params, s_n, s_shapes, t_n, t_shapes, code, addr(student), addr(teacher),
            addr(proj), addr(mlps[:n_q]), addr(mlps[n_q:]), loss.data_ptr(), attention.data_ptr(),
            addr(grad_student), addr(grad_proj), addr(grad_mlps[:n_q] if want_grads else None),
            addr(grad_mlps[n_q:] if want_grads else None), 0, _OPTIONS, _stream(device)))
    else:
        def addr(tensors):
            return None if tensors is None else (_VP * len(tensors))(*[x.data_ptr() for x in tensors])

        attention = torch.empty((batch, s_n, t_n), dtype=_F64)
        value = _c_double()
        grad_mlps = [torch.empty(m.shape, dtype=_F64) for m in mlps] if want_grads else None
        _lib.check(_C.kd_semckd_cpu(
            params, s_n, s_shapes, t_n, t_shapes, code, addr(student), addr(teacher), addr(proj), addr(mlps[:n_q]),
            addr(mlps[n_q:]), _byref(value), attention.data_ptr(), addr(grad_student), addr(grad_proj),
            addr(grad_mlps[:n_q] if want_grads else None), addr(grad_mlps[n_q:] if want_grads else None), _OPTIONS))
        loss = _cpu_loss(value, student[0].dtype)
    if not want_grads:
        return loss, attention, []
    originals = list(query) + list(key)
    return loss, attention, grad_student + grad_proj + [g.to(m.dtype) for g, m in zip(grad_mlps, originals)]


def semckd_cpu(student, teacher, proj, query, key, loss_weight, eps, want_grads):
    return _semckd(student, teacher, proj, query, key, loss_weight, eps, want_grads, cuda=False)


def semckd_cuda(student, teacher, proj, query, key, loss_weight, eps, want_grads):
    return _semckd(student, teacher, proj, query, key, loss_weight, eps, want_grads, cuda=True)


# ---- PKD -------------------------------------------------------------------------------------------------

def _pkd(student, teacher, loss_weight, want_student, cuda):
    """PKD's loss over a list of levels (every level in one call) and, with ``want_student``, each level's
    gradient in its dtype. Student and teacher levels have one shape each (resized before, in modules.py)."""
    student = [x.contiguous() for x in student]
    teacher = [x.contiguous() for x in teacher]
    n = len(student)
    params = _lib.PkdParams(loss_weight)
    s_shapes = _lib.shape_array([v for x in student for v in x.shape])
    t_shapes = _lib.shape_array([v for x in teacher for v in x.shape])
    code = DTYPE_CODES[student[0].dtype]
    grads = [torch.empty_like(x) for x in student] if want_student else None
    if cuda:
        def addr(tensors):
            return None if tensors is None else (_U64 * len(tensors))(*[x.data_ptr() for x in tensors])

        device = student[0].device
        loss = torch.empty((), dtype=_F32, device=device)
        _lib.check(_C.kd_pkd_cuda(_lib.context(device.index), params, n, s_shapes, t_shapes, code, addr(student),
                                  addr(teacher), loss.data_ptr(), addr(grads), 0, _OPTIONS, _stream(device)))
    else:
        def addr(tensors):
            return None if tensors is None else (_VP * len(tensors))(*[x.data_ptr() for x in tensors])

        value = _c_double()
        _lib.check(_C.kd_pkd_cpu(params, n, s_shapes, t_shapes, code, addr(student), addr(teacher), _byref(value),
                                 addr(grads), _OPTIONS))
        loss = _cpu_loss(value, student[0].dtype)
    return loss, grads if want_student else []


def pkd_cpu(student, teacher, loss_weight, want_student):
    return _pkd(student, teacher, loss_weight, want_student, cuda=False)


def pkd_cuda(student, teacher, loss_weight, want_student):
    return _pkd(student, teacher, loss_weight, want_student, cuda=True)


# ---- SKD and CIRKD: a shape each (the channel counts may differ), the student's gradient only --------------

def _relation_cpu(entry, params, student, teacher, want_student):
    """``entry(params, student_shape, ndim, teacher_shape, ndim, dtype, student, teacher, &loss, grad_student,
    options)``, the CPU reference."""
    student, teacher = _pair(student, teacher)
    gs = _grad(student, want_student)
    value = _c_double()
    _lib.check(entry(params, _lib.shape_array(student.shape), student.dim(), _lib.shape_array(teacher.shape),
                     teacher.dim(), DTYPE_CODES[student.dtype], student.data_ptr(), teacher.data_ptr(),
                     _byref(value), _ptr(gs), _OPTIONS))
    return _cpu_loss(value, student.dtype), gs


def _relation_cuda(entry, params, student, teacher, want_student):
    """``entry(ctx, params, student_shape, ndim, teacher_shape, ndim, dtype, student, teacher, loss,
    grad_student, upstream, options, stream)``, the kernels on the current stream (no upstream gradient: the op
    scales in backward)."""
    student, teacher = _pair(student, teacher)
    gs = _grad(student, want_student)
    device = student.device
    loss = torch.empty((), dtype=_F32, device=device)
    _lib.check(entry(_lib.context(device.index), params, _lib.shape_array(student.shape), student.dim(),
                     _lib.shape_array(teacher.shape), teacher.dim(), DTYPE_CODES[student.dtype], student.data_ptr(),
                     teacher.data_ptr(), loss.data_ptr(), _ptr(gs), 0, _OPTIONS, _stream(device)))
    return loss, gs


def skd_cpu(student, teacher, loss_weight, pool, want_student):
    return _relation_cpu(_C.kd_skd_cpu, _lib.SkdParams(loss_weight, pool), student, teacher, want_student)


def skd_cuda(student, teacher, loss_weight, pool, want_student):
    return _relation_cuda(_C.kd_skd_cuda, _lib.SkdParams(loss_weight, pool), student, teacher, want_student)


def cirkd_cpu(student, teacher, tau, loss_weight, pool, want_student):
    # `pool` is kd_cirkd_config's code (functional.cirkd_loss translates "auto", "none" and K).
    return _relation_cpu(_C.kd_cirkd_cpu, _lib.CirkdParams(tau, loss_weight, pool), student, teacher, want_student)


def cirkd_cuda(student, teacher, tau, loss_weight, pool, want_student):
    return _relation_cuda(_C.kd_cirkd_cuda, _lib.CirkdParams(tau, loss_weight, pool), student, teacher, want_student)
