"""The modules in mmrazor's ``MODELS`` registry, so an mmrazor config builds them.

Importing this module registers every loss module under its own name when mmrazor is importable (a config
says ``custom_imports = dict(imports=['kd_kernels.mmrazor'], allow_failed_imports=False)``); without
mmrazor the import does nothing and :func:`register` says why. Names (``type=`` in a config):

=============================== ==============================================================
``KDChannelWiseDivergence``     :class:`kd_kernels.ChannelWiseDivergence` (mmrazor's arguments)
``KDKLDivergence``              :class:`kd_kernels.KLDivergence` (mmrazor's arguments)
``KDPixelKD``                   :class:`kd_kernels.PixelKD`
``KDChannelWiseTransformation`` :class:`kd_kernels.ChannelWiseTransformation`
``KDPKDLoss``                   :class:`kd_kernels.PKDLoss` (mmrazor's arguments)
``KDDISTLoss``                  :class:`kd_kernels.DISTLoss` (mmrazor's arguments; DIST_KD's form on 4-D logits)
=============================== ==============================================================

Every registered class has mmrazor's ``forward(preds_S, preds_T)`` (``KDDISTLoss``: mmrazor's ``DISTLoss``'s
``forward(logits_S, logits_T)``), which its distillers check
``loss_forward_mappings`` against, and takes a tuple of levels where it compares maps level by level (see
kd_kernels.modules). ``register(replace_mmrazor=True)`` also puts the two with an mmrazor counterpart under
mmrazor's own names (``ChannelWiseDivergence``, ``KLDivergence``, ``PKDLoss``, with ``force=True``), so existing configs
switch without edits; it is never done unasked.
"""

from __future__ import annotations

import torch

from . import modules

__all__ = [
    "register", "KD_MODULES", "MMRAZOR_NAMES", "KDPixelKD", "KDChannelWiseTransformation", "KDStructuralKD",
    "KDMiniBatchCrossImagePair",
]


class KDPixelKD(modules.PixelKD):
    """:class:`kd_kernels.PixelKD` with mmrazor's ``forward(preds_S, preds_T)`` argument names."""

    def forward(self, preds_S: modules.Levels, preds_T: modules.Levels) -> torch.Tensor:  # noqa: N803
        return super().forward(preds_S, preds_T)


class KDChannelWiseTransformation(modules.ChannelWiseTransformation):
    """:class:`kd_kernels.ChannelWiseTransformation` with mmrazor's ``forward(preds_S, preds_T)`` names."""

    def forward(self, preds_S: torch.Tensor, preds_T: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return super().forward(preds_S, preds_T)


class KDStructuralKD(modules.CriterionStructuralKD):
    """:class:`kd_kernels.CriterionStructuralKD` with mmrazor's ``forward(preds_S, preds_T)`` names."""

    def forward(self, preds_S: torch.Tensor, preds_T: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return super().forward(preds_S, preds_T)


class KDMiniBatchCrossImagePair(modules.CriterionMiniBatchCrossImagePair):
    """:class:`kd_kernels.CriterionMiniBatchCrossImagePair` with mmrazor's ``forward(preds_S, preds_T)`` names."""

    def forward(self, preds_S: torch.Tensor, preds_T: torch.Tensor) -> torch.Tensor:  # noqa: N803
        return super().forward(preds_S, preds_T)


KD_MODULES = {
    "KDChannelWiseDivergence": modules.ChannelWiseDivergence,
    "KDKLDivergence": modules.KLDivergence,
    "KDPixelKD": KDPixelKD,
    "KDChannelWiseTransformation": KDChannelWiseTransformation,
    "KDPKDLoss": modules.PKDLoss,
    "KDDISTLoss": modules.DISTLoss,
    "KDStructuralKD": KDStructuralKD,
    "KDMiniBatchCrossImagePair": KDMiniBatchCrossImagePair,
}
# The modules whose arguments and results are those of an mmrazor loss of this name.
MMRAZOR_NAMES = {"ChannelWiseDivergence": modules.ChannelWiseDivergence, "KLDivergence": modules.KLDivergence,
                 "PKDLoss": modules.PKDLoss}

_import_error: BaseException | None = None


def _mmrazor_models():
    try:
        from mmrazor.registry import MODELS
    except Exception as error:  # ImportError, or mmrazor's own version assertion on mmcv/mmengine
        raise ImportError(
            f"kd_kernels.mmrazor: mmrazor is not importable here ({type(error).__name__}: {error}); install "
            "mmrazor (with mmcv and mmengine), or pass a registry to register()") from error
    return MODELS


def register(registry=None, replace_mmrazor: bool = False):
    """Registers :data:`KD_MODULES` into ``registry`` (default: mmrazor's ``MODELS``) and returns it.
    Registering twice is a no-op; a name another class holds raises mmengine's ``KeyError``. With
    ``replace_mmrazor``, also registers :data:`MMRAZOR_NAMES` with ``force=True``, replacing mmrazor's own."""
    if registry is None:
        registry = _mmrazor_models()
    for name, cls in KD_MODULES.items():
        if registry.module_dict.get(name) is not cls:
            registry.register_module(name=name, module=cls)
    if replace_mmrazor:
        for name, cls in MMRAZOR_NAMES.items():
            registry.register_module(name=name, module=cls, force=True)
    return registry


try:
    register()
except ImportError as error:
    _import_error = error
