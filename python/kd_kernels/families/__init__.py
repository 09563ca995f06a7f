"""The loss families' Python sides, one file each, and the table the shared modules take them from.

A family's file holds what only it has: its C configuration struct (``_c_name_``: its name in
include/kd_kernels.h) and its entry points' prototypes (``_lib.declare``), its kernel (one C ABI call on the
inputs' device, through ``_impl.call``), its input checks beyond the shared ones, its custom op(s) (``OPS``:
schema, fake kernel, autograd; ``_ops.define_student_only`` / ``define_saved_grads`` for the common formula),
its public ``*_loss`` function(s) and its ``nn.Module`` s, the names ``kd_kernels`` exports in ``__all__``,
and what ``kd_kernels.mmrazor`` registers (``MMRAZOR_MODULES``, and ``MMRAZOR_REPLACES`` under mmrazor's own
names). A new family is a new file, imported here and listed in ``FAMILIES``."""

from torch import nn

from . import cirkd, cwd, cwt, dist, icsd, ifvd, pixel_kd, pkd, semckd, skd

FAMILIES = (
    cwd,
    pixel_kd,
    icsd,
    dist,
    cwt,
    semckd,
    pkd,
    ifvd,
    skd,
    cirkd,
)


def _is_module(value) -> bool:
    return isinstance(value, type) and issubclass(value, nn.Module)


def exports(modules: bool) -> dict:
    """The names the families export (each its ``__all__``, in the table's order) with their values: the
    ``nn.Module`` classes (``modules=True``, kd_kernels.modules') or the rest (kd_kernels.functional's)."""
    return {name: getattr(family, name) for family in FAMILIES for name in family.__all__
            if _is_module(getattr(family, name)) == modules}
