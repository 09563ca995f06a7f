"""``nn.Module`` wrappers, named and parametrised like mmrazor's losses so a config can swap them in
(kd_kernels.mmrazor registers them into mmrazor's ``MODELS``): each family's modules (in its file in
families/), gathered here from the families' table.

The pair losses also take a tuple (or list) of levels for ``preds_S`` and ``preds_T``, as detection configs
pass FPN outputs (_nn.py: the sum of the per-level losses)."""

from __future__ import annotations

from ._nn import Levels, over_levels  # noqa: F401 (kept importable from here)
from .families import exports

# Every name a family exports that is an nn.Module, bound here as if each family's file had been
# star-imported from.
_EXPORTS = exports(modules=True)
__all__ = list(_EXPORTS)
globals().update(_EXPORTS)
