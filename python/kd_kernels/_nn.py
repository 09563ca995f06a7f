"""What the families' ``nn.Module`` s share: tuples of levels, and mmrazor's ``forward`` argument names.

Detection configs pass FPN outputs as ``preds_S`` and ``preds_T``, and a pair loss's module returns the sum of
the per-level losses, which is what mmrazor computes from one loss entry per level (its distiller sums every
loss it returns). Each level is one op call (the C ABI takes one shape per call)."""

from __future__ import annotations

from typing import Sequence, Union

import torch

from ._lib import KdInputError

__all__ = ["Levels", "over_levels", "PredsForward"]

Levels = Union[torch.Tensor, Sequence[torch.Tensor]]


def over_levels(loss, preds_S, preds_T, **kwargs) -> torch.Tensor:  # noqa: N803 (mmrazor's names)
    """``loss`` of a pair of tensors, or the sum over a tuple/list of levels (one pair per level)."""
    if isinstance(preds_S, torch.Tensor) or isinstance(preds_T, torch.Tensor):
        return loss(preds_S, preds_T, **kwargs)
    if not isinstance(preds_S, (tuple, list)) or not isinstance(preds_T, (tuple, list)):
        raise KdInputError(
            f"preds_S/preds_T: expected tensors or tuples of levels, got {type(preds_S).__name__} and "
            f"{type(preds_T).__name__}")
    if len(preds_S) != len(preds_T) or len(preds_S) == 0:
        raise KdInputError(
            f"preds_S/preds_T: {len(preds_S)} student and {len(preds_T)} teacher levels; give one pair per level")
    total = loss(preds_S[0], preds_T[0], **kwargs)
    for s, t in zip(preds_S[1:], preds_T[1:]):
        total = total + loss(s, t, **kwargs)
    return total


class PredsForward:
    """Mixed in before a module class (``class KDX(PredsForward, X)``): that module with mmrazor's
    ``forward(preds_S, preds_T)`` argument names, which mmrazor's distillers check ``loss_forward_mappings``
    against (kd_kernels.mmrazor registers such adapters)."""

    def forward(self, preds_S: Levels, preds_T: Levels) -> torch.Tensor:  # noqa: N803 (mmrazor's names)
        return super().forward(preds_S, preds_T)
