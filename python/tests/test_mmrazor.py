"""kd_kernels.mmrazor against a real registry: mmrazor's ``MODELS`` where mmrazor imports, else a registry
built as mmrazor 1.0.0 builds its own (mmengine's ``Registry``, scope ``mmrazor``, child of mmengine's
``MODELS``, mmrazor's ``build_razor_model_from_cfg``). mmrazor itself needs mmcv 2.0-2.1, which PyPI only
has as a source build (a long CUDA compile), so scripts/test installs mmengine alone."""

import inspect

import pytest
import torch
from families import declared, merged
from test_cwd import cwd_official

import kd_kernels

mmengine = pytest.importorskip(
    "mmengine", reason="mmengine is not installed (scripts/test installs it; `pip install mmengine`)")
from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS as MMENGINE_MODELS  # noqa: E402
from mmengine.registry import Registry, build_from_cfg  # noqa: E402

import kd_kernels.mmrazor as kd_mmrazor  # noqa: E402


def build_razor_model_from_cfg(cfg, registry, default_args=None):
    """mmrazor 1.0.0's ``mmrazor.registry.build_razor_model_from_cfg`` (the branches that build a module)."""
    return_architecture = False
    if cfg.get("_return_architecture_", None):
        return_architecture = cfg.pop("_return_architecture_")
    razor_model = build_from_cfg(cfg, registry, default_args)
    return razor_model.architecture if return_architecture else razor_model


class MmrazorChannelWiseDivergence(torch.nn.Module):
    """Stands for mmrazor's own ``ChannelWiseDivergence`` (its forward is test_cwd.py's ``cwd_official``)."""

    def __init__(self, tau=1.0, loss_weight=1.0):
        super().__init__()
        self.tau, self.loss_weight = tau, loss_weight

    def forward(self, preds_S, preds_T):  # noqa: N803
        return cwd_official(preds_S, preds_T, self.tau, self.loss_weight)


def _models():
    try:
        from mmrazor.registry import MODELS
        return MODELS, "mmrazor"
    except Exception:
        models = Registry("model", parent=MMENGINE_MODELS, scope="mmrazor", build_func=build_razor_model_from_cfg)
        models.register_module(name="ChannelWiseDivergence", module=MmrazorChannelWiseDivergence)
        return models, "mmengine"


MODELS, KIND = _models()


def logits(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 3


def test_registers_every_module_under_its_own_name():
    kd_mmrazor.register(MODELS)
    kd_mmrazor.register(MODELS)  # a second time: nothing to do
    for name, cls in kd_mmrazor.KD_MODULES.items():
        assert MODELS.get(name) is cls
    # The names each family's tests expect (their MMRAZOR_NAMES).
    assert sorted(kd_mmrazor.KD_MODULES) == sorted(declared("MMRAZOR_NAMES"))
    # mmrazor's own name is left alone unless asked.
    if KIND == "mmengine":
        assert MODELS.get("ChannelWiseDivergence") is MmrazorChannelWiseDivergence


BUILDS = declared("MMRAZOR_BUILDS")


@pytest.mark.parametrize("config,check", BUILDS, ids=[config["type"] for config, _ in BUILDS])
def test_a_config_builds_the_losses(config, check):
    kd_mmrazor.register(MODELS)
    s, t = logits((2, 4, 5, 6), 1), logits((2, 4, 5, 6), 2)
    assert check(MODELS.build(dict(config)), s, t)
    # From mmengine's root registry with the scope a config gives (`_scope_='mmrazor'`), and scoped names.
    scoped = MMENGINE_MODELS.build(dict(config, _scope_="mmrazor"))
    assert type(scoped) is kd_mmrazor.KD_MODULES[config["type"]] and check(scoped, s, t)
    assert type(MMENGINE_MODELS.build(dict(config, type="mmrazor." + config["type"]))) is type(scoped)


def test_the_docs_config_snippet_builds():
    kd_mmrazor.register(MODELS)
    cfg = Config.fromstring(
        "distill_losses = dict(\n"
        "    loss_cwd_fpn=dict(type='KDChannelWiseDivergence', tau=1.0, loss_weight=10.0),\n"
        "    loss_kl=dict(type='KDKLDivergence', tau=1.0, loss_weight=3.0))\n", ".py")
    losses = {k: MODELS.build(v) for k, v in cfg.distill_losses.items()}
    assert isinstance(losses["loss_cwd_fpn"], kd_kernels.ChannelWiseDivergence)
    assert losses["loss_cwd_fpn"].loss_weight == 10.0


def test_forward_signature_is_mmrazors():
    """mmrazor's ConfigurableDistiller checks each ``loss_forward_mappings`` key against the loss's forward
    parameters: every registered class takes mmrazor's names, ``preds_S`` and ``preds_T`` (``logits_S`` and
    ``logits_T`` for DIST, as mmrazor's ``DISTLoss``)."""
    forward = merged("MMRAZOR_FORWARD")
    for name, cls in kd_mmrazor.KD_MODULES.items():
        params = list(inspect.signature(cls.forward).parameters)
        assert params == forward.get(name, ["self", "preds_S", "preds_T"]), (name, params)


def test_fpn_levels_in_one_call_sum_as_mmrazor_does():
    """A detection config with one mmrazor ``ChannelWiseDivergence`` per FPN level sums the levels' losses;
    one call of the kd_kernels module on the tuple gives that sum."""
    kd_mmrazor.register(MODELS)
    shapes = [(2, 8, 16, 20), (2, 8, 8, 10), (2, 8, 4, 5)]
    preds_s = tuple(logits(s, k).requires_grad_(True) for k, s in enumerate(shapes))
    preds_t = tuple(logits(s, 10 + k) for k, s in enumerate(shapes))
    ours = MODELS.build(dict(type="KDChannelWiseDivergence", tau=1.0, loss_weight=10.0))
    loss = ours(preds_s, preds_t)
    loss.backward()
    ref_s = [x.detach().clone().requires_grad_(True) for x in preds_s]
    ref = sum(cwd_official(s, t, 1.0, 10.0) for s, t in zip(ref_s, preds_t))
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    for a, b in zip(preds_s, ref_s):
        assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    with pytest.raises(kd_kernels.KdInputError, match="2 student and 3 teacher levels"):
        ours(preds_s[:2], preds_t)


@pytest.mark.skipif(KIND == "mmrazor", reason="would replace the installed mmrazor's own losses for the session")
def test_replacing_mmrazors_names_only_when_asked():
    replaces = merged("MMRAZOR_REPLACES")
    before = {name: MODELS.module_dict.get(name) for name in replaces}
    kd_mmrazor.register(MODELS, replace_mmrazor=True)
    try:
        assert kd_mmrazor.MMRAZOR_NAMES == replaces
        for name, cls in replaces.items():
            assert MODELS.get(name) is cls, name
    finally:
        for name, cls in before.items():
            if cls is None:
                MODELS.module_dict.pop(name)
            else:
                MODELS.register_module(name=name, module=cls, force=True)


def test_without_mmrazor_the_import_registers_nothing_and_register_says_why():
    if KIND == "mmrazor":
        pytest.skip("mmrazor is installed: the import registered into its MODELS")
    with pytest.raises(ImportError, match="mmrazor is not importable here"):
        kd_mmrazor.register()
