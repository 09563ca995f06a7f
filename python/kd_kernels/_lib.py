"""The C ABI (include/kd_kernels.h) loaded with ctypes: the common prototypes (each family's file declares
its own with :func:`declare`), status codes into exceptions, one ``kd_context`` per CUDA device, and the
small caches that keep a call's host path short.

Host pointers are declared ``c_void_p`` here even where the header says ``double *``: the package passes
``tensor.data_ptr()`` integers, which ctypes turns into a ``void *`` without building a pointer object."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path

__all__ = [
    "KdKernelsError",
    "KdInputError",
    "KernelsUnavailableError",
    "CudaUnavailableError",
]


class KdKernelsError(RuntimeError):
    """An error reported by kd-kernels; ``status`` is the C ABI's ``kd_status`` code, the message the
    crate's."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class KdInputError(KdKernelsError, ValueError):
    """Bad input: shapes, dtypes, devices, parameters. Fix the call."""


class KernelsUnavailableError(KdKernelsError):
    """The library was built without nvcc, so it has no GPU kernels (CPU tensors still work)."""


class CudaUnavailableError(KdKernelsError):
    """No usable CUDA driver or device."""


# kd_status values (include/kd_kernels.h).
KD_OK = 0
_INPUT_ERRORS = {1, 2, 3, 4, 5, 6, 7}  # null pointer, shape, too large, parameter, output, dtype, context
KD_ERR_WORKSPACE = 9  # the workspace would grow during a CUDA graph capture (docs/pytorch.md)
KD_ERR_KERNELS_UNAVAILABLE = 10
KD_ERR_CUDA_UNAVAILABLE = 11

# kd_dtype values.
DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_F64 = 0, 1, 2, 3
# kd_label_dtype values.
LABEL_U8, LABEL_I32, LABEL_I64 = 0, 1, 2


# The C ABI's scalar types, as the families' files declare their structs and prototypes with them.
F64, I32, I64, U64, SIZE_T = ctypes.c_double, ctypes.c_int32, ctypes.c_int64, ctypes.c_uint64, ctypes.c_size_t
VP = ctypes.c_void_p  # a host pointer (passed as an integer address) or an opaque handle
I64P = ctypes.POINTER(ctypes.c_int64)  # a shape
U64P, VPP = ctypes.POINTER(U64), ctypes.POINTER(VP)  # arrays of device / host addresses


class GradOptions(ctypes.Structure):
    """``kd_grad_options``. Every ctypes Structure names its declaration in include/kd_kernels.h (generated
    from the Rust source) in ``_c_name_``; python/tests/test_abi_layout.py checks them field for field. A
    family's configuration struct is in its own file (families/)."""

    _c_name_ = "kd_grad_options"
    _fields_ = [("scale", F64), ("accumulate", I32)]


def _library_path() -> Path:
    override = os.environ.get("KD_KERNELS_LIB")
    if override:
        return Path(override)
    name = {"darwin": "libkd_kernels.dylib", "win32": "kd_kernels.dll"}.get(sys.platform, "libkd_kernels.so")
    return Path(__file__).resolve().parent / name


def _load() -> ctypes.CDLL:
    path = _library_path()
    if not path.is_file():
        raise ImportError(
            f"kd_kernels: the native library {path} is missing; install the package with "
            "`pip install <path to the kd-kernels repository>`, or point KD_KERNELS_LIB at a built "
            "libkd_kernels.so (cargo build --release -p kd-kernels-capi)"
        )
    lib = ctypes.CDLL(str(path))
    protos = {
        "kd_last_error_message": (ctypes.c_char_p, []),
        "kd_kernels_compiled": (I32, []),
        "kd_cuda_probe": (I32, []),
        "kd_context_create": (I32, [I32, VPP]),
        "kd_context_destroy": (None, [VP]),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


lib = _load()


def declare(name: str, argtypes: list):
    """The library's entry point ``name`` (a family's ``kd_x_cpu`` / ``kd_x_cuda``), returning a ``kd_status``,
    with its prototype: each family's file declares its own (test_abi_layout.py checks them all)."""
    fn = getattr(lib, name)
    fn.restype = I32
    fn.argtypes = argtypes
    return fn


def last_error() -> str:
    message = lib.kd_last_error_message()
    return message.decode("utf-8", "replace") if message else ""


def check(status: int) -> None:
    """Raises the exception of a non-OK status, with the crate's message."""
    if status == KD_OK:
        return
    message = last_error()
    if status in _INPUT_ERRORS:
        raise KdInputError(message, status)
    if status == KD_ERR_KERNELS_UNAVAILABLE:
        raise KernelsUnavailableError(message, status)
    if status == KD_ERR_CUDA_UNAVAILABLE:
        raise CudaUnavailableError(message, status)
    raise KdKernelsError(message, status)


def kernels_compiled() -> bool:
    """Whether this build carries the GPU kernels (nvcc was found when the package was built)."""
    return bool(lib.kd_kernels_compiled())


_contexts: dict[int, int] = {}
_contexts_lock = threading.Lock()


def context(device_index: int) -> int:
    """The ``kd_context`` of a CUDA device, created on first use and kept for the process (it owns the
    loaded kernels and their workspaces, so later calls neither reload nor reallocate)."""
    ctx = _contexts.get(device_index)  # a dict read is atomic: the lock is only for the first call
    if ctx is not None:
        return ctx
    with _contexts_lock:
        ctx = _contexts.get(device_index)
        if ctx is None:
            handle = ctypes.c_void_p()
            check(lib.kd_context_create(device_index, ctypes.byref(handle)))
            ctx = _contexts[device_index] = handle.value
        return ctx


_shape_arrays: dict[tuple, ctypes.Array] = {}


def shape_array(shape) -> ctypes.Array:
    """The ``int64_t[]`` of a shape, built once per distinct shape (a training run sees a handful); the C ABI
    only reads it during the call."""
    key = tuple(shape)
    dims = _shape_arrays.get(key)
    if dims is None:
        if len(_shape_arrays) > 4096:  # ever-changing shapes must not grow this without bound
            _shape_arrays.clear()
        dims = _shape_arrays[key] = (ctypes.c_int64 * len(key))(*key)
    return dims


def options(scale: float = 1.0, accumulate: bool = False) -> GradOptions:
    return GradOptions(scale, 1 if accumulate else 0)


# Every call of the package passes these: the upstream gradient is applied in PyTorch, after the call.
DEFAULT_OPTIONS = options()
