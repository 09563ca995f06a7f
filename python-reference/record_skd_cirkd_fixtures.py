"""Record the SKD and CIRKD reference fixtures `tests/fixtures/{skd,cirkd}_*.safetensors` by running the
official code.

Both losses as winycg/CIRKD computes them, at commit dab64dbb5e4172141166cf8434a80ce55d9d3aa7:
  * SKD (pair-wise similarity distillation, Liu et al., CVPR 2019): `losses/skd.py`, class
    `CriterionStructuralKD()`, `forward(feat_S, feat_T)`: a 2x2 max pool (stride 2, `ceil_mode=True`),
    `F.normalize` over channels, one `P x P` similarity per image, the mean squared difference.
  * CIRKD (cross-image pixel relations, Yang et al., CVPR 2022), the mini-batch form:
    `losses/cirkd_mini_batch.py`, class `CriterionMiniBatchCrossImagePair(temperature)`,
    `forward(feat_S, feat_T)`: a 4x4 average pool (`ceil_mode=True`) when H >= 256 and W >= 256,
    `F.normalize`, then for every ordered pair of images (i = j included) `P x P` logits, a row softmax and
    `F.kl_div(..., 'batchmean')`, summed and divided by B^2.
The CIRKD repository carries no license file, so its source is not copied here: this script reads both
files at record time from a CIRKD git directory (`--cirkd-git`, bare or not) or a checkout (`--cirkd-dir`),
checks that each is exactly the pinned blob, and runs it unchanged. Two things make it run on a CPU:
the CIRKD module's `torch.tensor(0.).cuda()` accumulator (`Tensor.cuda` is the identity while the official
code runs) and, for the float64 recomputation, float64 as the default dtype (that accumulator then holds
float64 rather than rounding every pair's KL to float32).

The crate's parameters beyond the official ones, recorded with the official code and nothing else:
  * SKD `pool = 1` (no pooling): the official module on the inputs nearest-upsampled 2x. Every 2x2 window
    of the upsampled map holds one input value four times, so the official max pool returns the input
    exactly, and its gradient (all to the window's first element) summed by the upsampling's backward is the
    gradient with respect to the input.
  * CIRKD `pool = K`: `nn.AvgPool2d(K, K, ceil_mode=True)` (the official's own pool, with K for 4) applied
    to both inputs, then the official module on maps below 256x256 (where it does not pool again).
    `pool = none`: the official module on maps below 256x256. `pool = auto`: the official module as it is.
  * `loss_weight` multiplies the official output (neither official module has a weight).

Each case becomes one file in the crate's fixture format (`docs/fixtures.md`; `loss` = `skd` or `cirkd`,
`format_version` = "1"; parameters `loss_weight`, `pool` and, for CIRKD, `tau`): inputs `student`
[N,Cs,H,W] and `teacher` [N,Ct,H,W] in the case's dtype; F32 outputs `loss` (shape []) and `grad.student`
(autograd), computed by PyTorch in fp32 from the upcast stored inputs. One CIRKD case (the 256x256 pooling
switch) holds `loss` only, to keep the file small.

Before writing a file the recorder checks, and refuses to write on failure:
  * the official code against an independent closed form in float64 (SKD: the `C x C` Gram identity
    `|A_S - A_T|^2 = |G_SS|^2 - 2 |G_ST|^2 + |G_TT|^2`; CIRKD: all pairs' logits at once with `einsum`,
    `log_softmax`), loss and gradient, and in fp32 (except SKD's student-close-to-teacher cases, where the
    Gram form's terms cancel to a few fp32 digits);
  * every recorded fp32 output against the official code in float64;
  * per-case facts (exact zeros for identical inputs, ties inside max-pool windows, which pooling the
    official applied).
Output is deterministic (fixed seeds, sorted metadata).

Usage (from the repository root; the venv needs torch and safetensors):
    .venv-torch/bin/python python-reference/record_skd_cirkd_fixtures.py --cirkd-git PATH/TO/CIRKD/.git \
        [--out tests/fixtures]
"""

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_common import CIRKD_COMMIT, DTYPES, all_finite, fmt_param, fmt_short, rel_err, stored_inputs  # noqa: E402
from record_common import add_cirkd_source, check_official_vs_closed, check_unique_names, finish_run  # noqa: E402
from record_common import fixture_metadata, load_cirkd_class, loss_and_grad, recorder_args, write_case  # noqa: E402

# loss -> (path in CIRKD, git blob id at CIRKD_COMMIT, class name)
OFFICIAL = {
    "skd": ("losses/skd.py", "bca84477cde558a66e43196aa562db0d4da43f50", "CriterionStructuralKD"),
    "cirkd": ("losses/cirkd_mini_batch.py", "d3376314f1f04731deb3b33276edb4ef9c2d01fb",
              "CriterionMiniBatchCrossImagePair"),
}
AUTO_POOL_MIN_SIDE = 256  # the official CIRKD pools when H >= 256 and W >= 256
AUTO_POOL = 4

# Tolerances of the recorder's own consistency checks (not the crate's verifier tolerances).
OFFICIAL_VS_CLOSED_RTOL_F32 = 1e-4
OFFICIAL_VS_CLOSED_RTOL_F64 = 1e-11


def load_official(args):
    """The official classes by loss, from the pinned blobs only."""
    return {loss: load_cirkd_class(args, path, blob, cls) for loss, (path, blob, cls) in OFFICIAL.items()}


@contextlib.contextmanager
def official_on_cpu(dtype):
    """`Tensor.cuda` as the identity and `dtype` as the default dtype while the official code runs."""
    saved_cuda, saved_dtype = torch.Tensor.cuda, torch.get_default_dtype()
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.Tensor.cuda = saved_cuda
        torch.set_default_dtype(saved_dtype)


# --------------------------------------------------------------------------------------------
# The official modules with the crate's parameters (see the module docstring)
# --------------------------------------------------------------------------------------------


def upsample2(x):
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


def official_skd(classes, s, t, case):
    if case.pool == 1:
        s, t = upsample2(s), upsample2(t)
    with official_on_cpu(s.dtype):
        return case.loss_weight * classes["skd"]()(s, t)


def cirkd_pool_size(case, h, w):
    """The average-pool window the crate applies: 0 for none."""
    if case.pool == "auto":
        return AUTO_POOL if h >= AUTO_POOL_MIN_SIDE and w >= AUTO_POOL_MIN_SIDE else 0
    if case.pool == "none":
        return 0
    return int(case.pool)


def official_cirkd(classes, s, t, case):
    h, w = s.shape[2:]
    k = cirkd_pool_size(case, h, w)
    if case.pool != "auto":
        if k > 1:
            pool = nn.AvgPool2d(kernel_size=(k, k), stride=(k, k), padding=0, ceil_mode=True)
            s, t = pool(s), pool(t)
        assert not (s.shape[2] >= AUTO_POOL_MIN_SIDE and s.shape[3] >= AUTO_POOL_MIN_SIDE), \
            f"{case.name}: the official module would pool these {tuple(s.shape)} maps again"
    with official_on_cpu(s.dtype):
        return case.loss_weight * classes["cirkd"](case.tau)(s, t)


# --------------------------------------------------------------------------------------------
# Independent closed forms (the recorder's cross-checks)
# --------------------------------------------------------------------------------------------


def normalized_pixels(x):
    return F.normalize(x, p=2, dim=1).flatten(2)  # [N, C, P]


def skd_gram(s, t, case):
    if case.pool == 2:
        s = F.max_pool2d(s, 2, 2, ceil_mode=True)
        t = F.max_pool2d(t, 2, 2, ceil_mode=True)
    s, t = normalized_pixels(s), normalized_pixels(t)
    n, p = s.shape[0], s.shape[2]
    gss = s @ s.transpose(1, 2)
    gst = s @ t.transpose(1, 2)
    gtt = t @ t.transpose(1, 2)
    return case.loss_weight * ((gss ** 2).sum() - 2 * (gst ** 2).sum() + (gtt ** 2).sum()) / (n * p * p)


def cirkd_einsum(s, t, case):
    k = cirkd_pool_size(case, *s.shape[2:])
    if k > 1:
        s = F.avg_pool2d(s, k, k, ceil_mode=True)
        t = F.avg_pool2d(t, k, k, ceil_mode=True)
    s, t = normalized_pixels(s), normalized_pixels(t)
    b = s.shape[0]
    ls = torch.einsum("icp,jcq->ijpq", s, s) / case.tau
    lt = torch.einsum("icp,jcq->ijpq", t, t) / case.tau
    log_pt = torch.log_softmax(lt, dim=-1)
    kl = (log_pt.exp() * (log_pt - torch.log_softmax(ls, dim=-1))).sum(-1).mean(-1)  # [B, B]
    return case.loss_weight * kl.sum() / (b * b)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    loss: str  # "skd" or "cirkd"
    dtype: str  # key of DTYPES
    shape: tuple  # student (N, Cs, H, W)
    ct: int
    pool: object  # SKD: 2 or 1; CIRKD: "auto", "none" or an integer K
    loss_weight: float
    seed: int
    description: str
    tau: float = 0.1  # CIRKD only
    init: str = "normal"  # "normal", "close" (student = teacher + 1% noise), "identical", "levels" (ties)
    grad: bool = True  # False: the file holds `loss` only
    suffix: str = ""
    checks: list = field(default_factory=list)

    @property
    def name(self):
        shape = "x".join(str(d) for d in self.shape)
        parts = [self.loss, self.dtype, shape, f"ct{self.ct}", f"pool{self.pool}"]
        if self.loss == "cirkd":
            parts.append(f"tau{fmt_short(self.tau)}")
        parts.append(f"w{fmt_short(self.loss_weight)}")
        if self.suffix:
            parts.append(self.suffix)
        return "_".join(parts)


CASES = [
    # SKD
    Case("skd", "f32", (2, 5, 9, 11), 7, 2, 1.0, 501,
         "The official 2x2 max pool on odd sizes (ceil: 5x6 windows, the last row and column of half "
         "windows), Cs 5 != Ct 7."),
    Case("skd", "f32", (2, 6, 8, 10), 6, 1, 0.5, 502,
         "pool 1 (no pooling): P = 80 pixels per image."),
    Case("skd", "f32", (1, 4, 7, 5), 4, 2, 1.0, 503, init="close", suffix="close",
         description="Student = teacher + 1% noise: the Gram form's three terms nearly cancel."),
    Case("skd", "f32", (2, 3, 5, 6), 3, 1, 1.0, 504, init="close", suffix="close",
         description="Student = teacher + 1% noise without pooling."),
    Case("skd", "f32", (2, 4, 6, 5), 4, 2, 1.0, 505, init="identical", suffix="identical",
         checks=["loss_and_grad_exactly_zero"],
         description="Teacher equals student: the similarities are bitwise equal, loss and gradient 0."),
    Case("skd", "f32", (2, 3, 7, 9), 5, 2, 2.0, 506, init="levels", suffix="ties",
         checks=["max_pool_ties"],
         description="Inputs in {-1.5, -0.5, 0.5, 1.5}: ties inside the max-pool windows, where the gradient "
                     "goes to the first maximum in row-major order."),
    Case("skd", "f32", (3, 2, 3, 1), 4, 2, 1.0, 507,
         "H 3, W 1: windows of 2x1 and 1x1 (ceil), P = 2."),
    Case("skd", "f16", (2, 6, 9, 7), 5, 2, 1.0, 508,
         "f16 inputs, odd sizes, Cs 6 != Ct 5; reference from the upcast stored values."),
    Case("skd", "bf16", (2, 6, 9, 7), 8, 1, 3.0, 509,
         "bf16 inputs, pool 1, Cs 6 != Ct 8; reference from the upcast stored values."),
    # CIRKD
    Case("cirkd", "f32", (2, 5, 9, 11), 7, "none", 1.0, 601,
         "No pooling, B 2 (four ordered pairs, i = j included), Cs 5 != Ct 7, the official tau 0.1."),
    Case("cirkd", "f32", (3, 4, 7, 6), 4, "auto", 2.0, 602, tau=0.5,
         description="pool auto below 256x256: no pooling (as the official); B 3, nine pairs."),
    Case("cirkd", "f32", (2, 4, 9, 11), 6, 4, 1.0, 603,
         "4x4 average pool forced on 9x11 (ceil: 3x3 windows, edge windows average 1, 3 or 2x3 values)."),
    Case("cirkd", "f32", (2, 3, 10, 7), 3, 3, 1.0, 604, tau=1.0,
         description="3x3 average pool on 10x7 (ceil: 4x3 windows), tau 1."),
    Case("cirkd", "f32", (2, 4, 8, 6), 4, "none", 1.0, 605, init="close", suffix="close",
         description="Student = teacher + 1% noise."),
    Case("cirkd", "f32", (1, 3, 257, 5), 4, "auto", 1.0, 606, suffix="tall",
         checks=["auto_does_not_pool"],
         description="pool auto with H 257 >= 256 but W 5 < 256: no pooling (P = 1285)."),
    Case("cirkd", "bf16", (1, 2, 256, 256), 2, "auto", 1.0, 607, grad=False, suffix="auto256",
         checks=["auto_pools"],
         description="pool auto at 256x256: the official 4x4 average pool (P = 4096). Loss only (size)."),
    Case("cirkd", "f16", (2, 6, 9, 7), 5, "none", 1.0, 608,
         "f16 inputs, Cs 6 != Ct 5; reference from the upcast stored values."),
    Case("cirkd", "bf16", (2, 6, 9, 7), 8, 2, 0.5, 609, tau=0.2,
         description="bf16 inputs, 2x2 average pool (ceil: 5x4), Cs 6 != Ct 8."),
]


def make_inputs(case):
    """Student and teacher in fp32 before rounding to the case's dtype."""
    g = torch.Generator().manual_seed(case.seed)
    n, cs, h, w = case.shape
    if case.init == "levels":
        s = torch.randint(0, 4, (n, cs, h, w), generator=g).float() - 1.5
        t = torch.randint(0, 4, (n, case.ct, h, w), generator=g).float() - 1.5
        return s, t
    t = torch.randn((n, case.ct, h, w), generator=g)
    s = torch.randn((n, cs, h, w), generator=g)
    if case.init == "close":
        assert cs == case.ct
        s = t + 0.01 * s
    elif case.init == "identical":
        s = t.clone()
    return s, t


def official_outputs(classes, s, t, case):
    fn = official_skd if case.loss == "skd" else official_cirkd
    return loss_and_grad(lambda x: fn(classes, x, t, case), s)


def closed_outputs(s, t, case):
    return loss_and_grad(skd_gram if case.loss == "skd" else cirkd_einsum, s, t, case)


STATS = {"official~closed fp32": 0.0, "official~closed f64": 0.0, "fp32~f64": 0.0}


def max_rel(a, b):
    return max(rel_err(x, y) for x, y in zip(a, b))


def run_checks(case, s32, loss, grad):
    for check in case.checks:
        if check == "loss_and_grad_exactly_zero":
            assert loss.item() == 0.0 and bool((grad == 0).all()), f"{case.name}: expected exact zeros"
        elif check == "max_pool_ties":
            windows = F.unfold(s32, 2, stride=2)  # full 2x2 windows only, [N, C*4, L]
            n, _, l = windows.shape
            windows = windows.reshape(n, -1, 4, l)
            ties = (windows == windows.max(dim=2, keepdim=True).values).sum(dim=2) > 1
            assert int(ties.sum()) >= 10, f"{case.name}: only {int(ties.sum())} windows with tied maxima"
        elif check == "auto_does_not_pool":
            assert cirkd_pool_size(case, *s32.shape[2:]) == 0
        elif check == "auto_pools":
            assert cirkd_pool_size(case, *s32.shape[2:]) == AUTO_POOL
        else:
            raise ValueError(check)


def record_case(classes, case, out_dir):
    (s_stored, t_stored), (s32, t32) = stored_inputs(DTYPES[case.dtype], *make_inputs(case))
    s64, t64 = s32.double(), t32.double()

    outs32 = official_outputs(classes, s32, t32, case)
    outs64 = official_outputs(classes, s64, t64, case)
    closed32 = closed_outputs(s32, t32, case)
    closed64 = closed_outputs(s64, t64, case)
    assert all_finite(*outs32), f"{case.name}: the official output is not finite"
    if case.init == "identical":
        # Both are zero: the relative error is 0/0.
        errors = (0.0, 0.0, 0.0)
        assert all(bool((x == 0).all()) for x in (*outs64, *closed64)), case.name
    else:
        errors = max_rel(closed32, outs32), max_rel(closed64, outs64), max_rel(outs32, outs64)
    if case.init == "close" and case.loss == "skd":
        # The Gram form's three terms nearly cancel here: in fp32 it keeps only a few digits (the reason the
        # crate accumulates them carefully); float64 still checks it.
        errors = (0.0, *errors[1:])
    note = check_official_vs_closed(case.name, errors, OFFICIAL_VS_CLOSED_RTOL_F32, OFFICIAL_VS_CLOSED_RTOL_F64, STATS)
    loss, grad = outs32
    run_checks(case, s32, loss, grad)

    if case.loss == "skd":
        impl = "cirkd.CriterionStructuralKD"
        if case.pool == 1:
            impl += " on the inputs nearest-upsampled 2x"
        params = {"loss_weight": fmt_param(case.loss_weight), "pool": str(case.pool)}
    else:
        impl = "cirkd.CriterionMiniBatchCrossImagePair"
        if case.pool not in ("auto", "none"):
            impl = f"nn.AvgPool2d({case.pool}, ceil_mode=True) then " + impl
        params = {"loss_weight": fmt_param(case.loss_weight), "pool": str(case.pool), "tau": fmt_param(case.tau)}
    metadata = fixture_metadata(case.loss, case.seed, case.description, **params, reference_impl=impl,
                                official_source=f"winycg/CIRKD {OFFICIAL[case.loss][0]} @ {CIRKD_COMMIT}")
    tensors = {
        "student": s_stored,
        "teacher": t_stored,
        "loss": loss.float().reshape([]).contiguous(),
    }
    if case.grad:
        tensors["grad.student"] = grad.float().contiguous()
    return write_case(out_dir, case.name, tensors, metadata, loss, grad, note)


def main():
    args = recorder_args(__doc__, lambda parser: add_cirkd_source(
        parser, "--cirkd-dir", "a winycg/CIRKD checkout at the pinned commit"))
    classes = load_official(args)
    check_unique_names(CASES)
    paths = [record_case(classes, case, args.out) for case in CASES]
    finish_run(args.out, ("skd_", "cirkd_"), paths, STATS)


if __name__ == "__main__":
    main()
