"""The call frame of the custom ops' bodies: one C ABI call per loss, on tensors the caller has checked, on
the device of the inputs (the CUDA kernels on the current stream, or the crate's f64 reference on the CPU).

A family's kernel (in its file under families/) returns the loss (a 0-d tensor: f32, or f64 for f64 inputs
on the CPU) and the gradients the call was asked for, computed in the same pass as the loss (the logits are
read once); a gradient that was not asked for is None (the op kernels return an empty tensor in its place:
an op returns tensors). What the C ABI cannot see (one dtype and one device for a pair, the MLPs' shapes) is
checked before the op is called, by the public function.

Every entry point of the C ABI has one argument order, which :func:`call` writes once: ``[ctx,] config,
*head, *inputs, loss, *outputs, [upstream,] *after_upstream, options[, stream]`` (the bracketed arguments on
CUDA only). Host cost matters here: at small shapes this path, not the kernel, sets the time of a call, so it
avoids per-call objects: shape arrays are cached, a configuration struct goes to its pointer argument by
ctypes' automatic byref, addresses are plain integers, the CPU loss comes back as one C double made into a
0-d tensor (cheaper than allocating a tensor for the crate to write and converting it)."""

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
LABEL_CODES = {torch.uint8: _lib.LABEL_U8, torch.int32: _lib.LABEL_I32, torch.int64: _lib.LABEL_I64}

_F32, _F64 = torch.float32, torch.float64
_OPTIONS = _lib.DEFAULT_OPTIONS
_NO_UPSTREAM = 0  # the CUDA entry points' upstream gradient: none, the op scales in backward

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
_shape_array = _lib.shape_array
_check = _lib.check
_context = _lib.context


def call(cpu, cuda, like, config, head, inputs, outputs, after_upstream=()):
    """The loss of one call of a family's ``kd_x_cuda`` (``cuda``) for CUDA inputs, else its ``kd_x_cpu``
    (``cpu``), with the argument order of the module's docs; ``like`` is the first input (its device, and its
    dtype: the CPU loss is rounded once to f32 unless it is f64)."""
    if like.is_cuda:  # not `device.type`: an attribute read is cheaper than building the device's type string
        device = like.device
        loss = torch.empty((), dtype=_F32, device=device)
        _check(cuda(_context(device.index), config, *head, *inputs, loss.data_ptr(), *outputs, _NO_UPSTREAM,
                    *after_upstream, _OPTIONS, _stream(device)))
        return loss
    value = _c_double()
    _check(cpu(config, *head, *inputs, _byref(value), *outputs, *after_upstream, _OPTIONS))
    return _scalar_tensor(value.value, dtype=_F64 if like.dtype == _F64 else _F32)


def shape_head(*tensors):
    """``shape, ndim`` of each tensor, as the C ABI takes them."""
    head = ()
    for t in tensors:
        head += (_shape_array(t.shape), t.dim())
    return head


def contiguous(*tensors):
    return [t.contiguous() for t in tensors]


def grad(like, want):
    # `like` is contiguous here, so its empty_like is too (as the fake kernels state).
    return torch.empty_like(like) if want else None


def ptr(tensor):
    return 0 if tensor is None else tensor.data_ptr()


def addresses(tensors, cuda):
    """An array of the tensors' addresses (``uint64_t[]`` for ``cuda``, ``void *[]`` on the CPU), None for
    None."""
    if tensors is None:
        return None
    kind = _lib.U64 if cuda else _lib.VP
    return (kind * len(tensors))(*[t.data_ptr() for t in tensors])


# ---- the (student, teacher) pairs whose only gradient is the student's ----------------------------------------

def pair_argtypes(config, outputs=0):
    """The prototypes ``(kd_x_cpu, kd_x_cuda)`` of a pair of one shape whose only gradient is the student's:
    ``[ctx,] config, shape, ndim, dtype, student, teacher, loss, grad_student, [upstream,] *outputs, options[,
    stream]`` (``outputs``: a loss's extra output buffers, null where not wanted)."""
    cfg = ctypes.POINTER(config)
    vp, u64 = _lib.VP, _lib.U64
    return ([cfg, _lib.I64P, _lib.SIZE_T, _lib.I32, vp, vp, vp, vp] + [vp] * outputs + [_lib.GradOptions],
            [vp, cfg, _lib.I64P, _lib.SIZE_T, _lib.I32, u64, u64, u64, u64, u64] + [u64] * outputs
            + [_lib.GradOptions, vp])


def relation_argtypes(config):
    """The prototypes ``(kd_x_cpu, kd_x_cuda)`` of a pair whose teacher has a shape of its own (the channel
    counts may differ), the student's gradient only: ``[ctx,] config, student_shape, ndim, teacher_shape,
    ndim, dtype, student, teacher, loss, grad_student, [upstream,] options[, stream]``."""
    cfg = ctypes.POINTER(config)
    vp, u64, i64p, size_t = _lib.VP, _lib.U64, _lib.I64P, _lib.SIZE_T
    return ([cfg, i64p, size_t, i64p, size_t, _lib.I32, vp, vp, vp, vp, _lib.GradOptions],
            [vp, cfg, i64p, size_t, i64p, size_t, _lib.I32, u64, u64, u64, u64, u64, _lib.GradOptions, vp])


def student_grad_kernel(cpu_name, cuda_name, config, make_config=None, outputs=0, own_teacher_shape=False):
    """Declares the entry points ``cpu_name`` and ``cuda_name`` of a pair whose only gradient is the student's
    (:func:`pair_argtypes` with ``outputs`` extra output buffers, passed null; :func:`relation_argtypes` with
    ``own_teacher_shape``) and returns the op kernel ``(student, teacher, *params, want_student) -> (loss,
    grad_student)``, whose configuration struct is ``make_config(*params)`` (default: ``config(*params)``)."""
    cpu_args, cuda_args = relation_argtypes(config) if own_teacher_shape else pair_argtypes(config, outputs)
    cpu, cuda = _lib.declare(cpu_name, cpu_args), _lib.declare(cuda_name, cuda_args)
    make_config = make_config or config
    unwanted = (0,) * outputs

    def kernel(student, teacher, *args):
        student, teacher = student.contiguous(), teacher.contiguous()
        gs = grad(student, args[-1])  # the last argument is want_student
        head = shape_head(student, teacher) if own_teacher_shape else shape_head(student)
        loss = call(cpu, cuda, student, make_config(*args[:-1]), (*head, DTYPE_CODES[student.dtype]),
                    (student.data_ptr(), teacher.data_ptr()), (ptr(gs),), unwanted)
        return loss, gs

    return kernel
