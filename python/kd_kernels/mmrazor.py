"""The modules in mmrazor's ``MODELS`` registry, so an mmrazor config builds them.

Importing this module registers every loss module under its own name when mmrazor is importable (a config
says ``custom_imports = dict(imports=['kd_kernels.mmrazor'], allow_failed_imports=False)``); without
mmrazor the import does nothing and :func:`register` says why. The names (``type=`` in a config) are each
family's ``MMRAZOR_MODULES`` (its file in kd_kernels/families/; docs/pytorch.md lists them): its modules, or
an adapter of one with mmrazor's ``forward`` argument names (``KD<Name>``, importable from here).

Every registered class has mmrazor's ``forward(preds_S, preds_T)`` (or the argument names of the mmrazor
loss it stands for), which its distillers check ``loss_forward_mappings`` against, and takes a tuple of
levels where it compares maps level by level (see kd_kernels.modules). ``register(replace_mmrazor=True)``
also puts those with an mmrazor counterpart (each family's ``MMRAZOR_REPLACES``) under mmrazor's own names,
with ``force=True``, so existing configs switch without edits; it is never done unasked.
"""

from __future__ import annotations

from .families import FAMILIES

KD_MODULES = {}
# The modules whose arguments and results are those of an mmrazor loss of this name.
MMRAZOR_NAMES = {}
for _family in FAMILIES:
    KD_MODULES.update(getattr(_family, "MMRAZOR_MODULES", {}))
    MMRAZOR_NAMES.update(getattr(_family, "MMRAZOR_REPLACES", {}))

# The adapters written for mmrazor (a class named as it is registered, e.g. ``KDPixelKD``), importable from here.
_ADAPTERS = {name: cls for name, cls in KD_MODULES.items() if cls.__name__ == name}
globals().update(_ADAPTERS)
__all__ = ["register", "KD_MODULES", "MMRAZOR_NAMES", *_ADAPTERS]

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
