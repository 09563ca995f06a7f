"""The C ABI (include/kd_kernels.h) loaded with ctypes: prototypes, status codes into exceptions, one
``kd_context`` per CUDA device, and the small caches that keep a call's host path short.

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


# The C structs, each naming its declaration in include/kd_kernels.h (generated from the Rust source), which
# python/tests/test_abi_layout.py checks field for field. Declared from one table: the structs differ only in
# their fields.
def _struct(name: str, c_name: str, **fields) -> type:
    """A ctypes Structure `name` for the header's `c_name`, with `fields` in declaration order."""
    body = {"__module__": __name__, "_c_name_": c_name, "_fields_": list(fields.items())}
    return type(name, (ctypes.Structure,), body)


_F64, _I32, _I64 = ctypes.c_double, ctypes.c_int32, ctypes.c_int64
GradOptions = _struct("GradOptions", "kd_grad_options", scale=_F64, accumulate=_I32)
CwdParams = _struct("CwdParams", "kd_cwd_config", tau=_F64, loss_weight=_F64)
PixelKdParams = _struct(
    "PixelKdParams", "kd_pixel_kd_config", tau=_F64, loss_weight=_F64, reduction=_I32, scale_tau2=_I32
)
CwtParams = _struct("CwtParams", "kd_cwt_config", loss_weight=_F64, normalize=_I32, hidden_channels=_I64)
IcsdParams = _struct("IcsdParams", "kd_icsd_config", tau=_F64, loss_weight=_F64, variant=_I32)
IfvdParams = _struct("IfvdParams", "kd_ifvd_config", num_classes=_I64, loss_weight=_F64)
DistParams = _struct(
    "DistParams", "kd_dist_config", tau=_F64, inter_loss_weight=_F64, intra_loss_weight=_F64, loss_weight=_F64
)
SemckdParams = _struct("SemckdParams", "kd_semckd_config", loss_weight=_F64, eps=_F64, embed_dim=_I64)
PkdParams = _struct("PkdParams", "kd_pkd_config", loss_weight=_F64)
SkdParams = _struct("SkdParams", "kd_skd_config", loss_weight=_F64, pool=_I64)
CirkdParams = _struct("CirkdParams", "kd_cirkd_config", tau=_F64, loss_weight=_F64, pool=_I64)


# kd_cirkd_config.pool: the official rule, none; K >= 2 is a K x K average pool.
CIRKD_POOL_AUTO, CIRKD_POOL_NONE = 0, 1


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
    u64, i32, i64p, size_t = ctypes.c_uint64, ctypes.c_int32, ctypes.POINTER(ctypes.c_int64), ctypes.c_size_t
    vp = dp = ctypes.c_void_p
    protos = {
        "kd_last_error_message": (ctypes.c_char_p, []),
        "kd_kernels_compiled": (i32, []),
        "kd_cuda_probe": (i32, []),
        "kd_context_create": (i32, [i32, ctypes.POINTER(vp)]),
        "kd_context_destroy": (None, [vp]),
        "kd_cwd_cuda": (i32, [vp, ctypes.POINTER(CwdParams), i64p, size_t, i32, u64, u64, u64, u64, u64, u64,
                              GradOptions, vp]),
        "kd_cwd_cpu": (i32, [ctypes.POINTER(CwdParams), i64p, size_t, i32, vp, vp, dp, vp, vp, GradOptions]),
        "kd_pixel_kd_cuda": (i32, [vp, ctypes.POINTER(PixelKdParams), i64p, size_t, i32, u64, u64, u64, u64, u64,
                                   GradOptions, vp]),
        "kd_pixel_kd_cpu": (i32, [ctypes.POINTER(PixelKdParams), i64p, size_t, i32, vp, vp, dp, vp, GradOptions]),
        "kd_cwt_cuda": (i32, [vp, ctypes.POINTER(CwtParams), i64p, size_t, i64p, size_t, i32, u64, u64,
                              ctypes.POINTER(u64), u64, u64, ctypes.POINTER(u64), u64, GradOptions, vp]),
        "kd_cwt_cpu": (i32, [ctypes.POINTER(CwtParams), i64p, size_t, i64p, size_t, i32, vp, vp,
                             ctypes.POINTER(vp), dp, vp, ctypes.POINTER(vp), GradOptions]),
        "kd_dist_cuda": (i32, [vp, ctypes.POINTER(DistParams), i64p, size_t, i32, u64, u64, u64, u64, u64,
                               GradOptions, vp]),
        "kd_dist_cpu": (i32, [ctypes.POINTER(DistParams), i64p, size_t, i32, vp, vp, dp, vp, GradOptions]),
        "kd_icsd_cuda": (i32, [vp, ctypes.POINTER(IcsdParams), i64p, size_t, i32, u64, u64, u64, u64, u64, u64, u64,
                               GradOptions, vp]),
        "kd_icsd_cpu": (i32, [ctypes.POINTER(IcsdParams), i64p, size_t, i32, vp, vp, dp, vp, dp, dp, GradOptions]),
        "kd_ifvd_cuda": (i32, [vp, ctypes.POINTER(IfvdParams), i64p, size_t, i64p, size_t, i64p, size_t, i32, i32,
                               u64, u64, u64, u64, u64, u64, GradOptions, vp]),
        "kd_ifvd_cpu": (i32, [ctypes.POINTER(IfvdParams), i64p, size_t, i64p, size_t, i64p, size_t, i32, i32, vp, vp,
                              vp, dp, vp, GradOptions]),
        "kd_semckd_cuda": (i32, [vp, ctypes.POINTER(SemckdParams), size_t, i64p, size_t, i64p, i32]
                           + [ctypes.POINTER(u64)] * 5 + [u64, u64] + [ctypes.POINTER(u64)] * 4
                           + [u64, GradOptions, vp]),
        "kd_semckd_cpu": (i32, [ctypes.POINTER(SemckdParams), size_t, i64p, size_t, i64p, i32]
                          + [ctypes.POINTER(vp)] * 5 + [dp, vp] + [ctypes.POINTER(vp)] * 4 + [GradOptions]),
        "kd_pkd_cuda": (i32, [vp, ctypes.POINTER(PkdParams), size_t, i64p, i64p, i32, ctypes.POINTER(u64),
                              ctypes.POINTER(u64), u64, ctypes.POINTER(u64), u64, GradOptions, vp]),
        "kd_pkd_cpu": (i32, [ctypes.POINTER(PkdParams), size_t, i64p, i64p, i32, ctypes.POINTER(vp),
                             ctypes.POINTER(vp), dp, ctypes.POINTER(vp), GradOptions]),
        "kd_skd_cuda": (i32, [vp, ctypes.POINTER(SkdParams), i64p, size_t, i64p, size_t, i32, u64, u64, u64, u64, u64,
                              GradOptions, vp]),
        "kd_skd_cpu": (i32, [ctypes.POINTER(SkdParams), i64p, size_t, i64p, size_t, i32, vp, vp, dp, vp, GradOptions]),
        "kd_cirkd_cuda": (i32, [vp, ctypes.POINTER(CirkdParams), i64p, size_t, i64p, size_t, i32, u64, u64, u64, u64,
                                u64, GradOptions, vp]),
        "kd_cirkd_cpu": (i32, [ctypes.POINTER(CirkdParams), i64p, size_t, i64p, size_t, i32, vp, vp, dp, vp,
                               GradOptions]),
    }
    for name, (restype, argtypes) in protos.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


lib = _load()


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
