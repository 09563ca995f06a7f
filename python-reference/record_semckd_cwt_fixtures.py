"""Record the SemCKD and CWT reference fixtures in `tests/fixtures/`.

Each case becomes one `*.safetensors` file in the fixture format of `docs/fixtures.md` (see also
`record_fixtures.py`): inputs in the case's dtype (contiguous NCHW), reference outputs F32,
computed by PyTorch in fp32 from the stored inputs after upcasting them.

SemCKD (`semckd_*.safetensors`, reference: `semckd_reference.py`, docs/losses.md §4):
  inputs  `student.{i}`, `teacher.{j}`, `student_proj.{i}.{j}` [B, Ct_j, h, h] (h = min(Hs_i, Ht_j)),
          `query.{i}.linear{1,2}.{weight,bias}`, `key.{j}.linear{1,2}.{weight,bias}`; all in the
          case dtype (parameters too);
  outputs `loss`, `attention` [B, S, T], `grad.student.{i}` (Gram/attention path only),
          `grad.student_proj.{i}.{j}`, `grad.query.{i}.*`, `grad.key.{j}.*`.
  The stored `student_proj` are real regressor outputs: the official `SelfA` (with its
  `AAEmbed` regressors, batch norms in train mode, seeded) is run on the stored features and
  parameters, and its `proj_value_stu` are rounded to the case dtype.
  Checks before writing:
    * the crate's split (`SelfA` with the regressor outputs as inputs + `SemCKDLoss`) equals the
      literal official `SelfA` + `SemCKDLoss` on the same values: loss, attention, MLP-parameter
      gradients and regressor-output gradients, and the official student gradient equals our
      Gram-path gradient plus the regressor path's vector-Jacobian product (1e-5 relative);
    * the hand-derived gradients (docs/losses.md §4.4) equal autograd in float64 (1e-10);
    * every recorded fp32 output equals the float64 recomputation (1e-4 relative, as the
      verifier measures it; the recorder warns above 1e-5);
    * ReLU margins: no MLP pre-activation and no embedding norm is so close to 0 that fp32
      rounding could flip a ReLU mask or blow up the normalisation.

CWT (`cwt_*.safetensors`, reference: `cwt_reference.py`, docs/losses.md §5):
  inputs  `student` [N, Cs, H, W], `teacher` [N, Ct, H, W] in the case dtype,
          `mlp.linear1.weight` [Ch, Cs], `mlp.linear1.bias` [Ch], `mlp.linear2.weight` [Ct, Ch],
          `mlp.linear2.bias` [Ct] always F32 (the crate keeps parameters in f32);
  outputs `loss`, `grad.student`, `grad.mlp.linear1.weight`, `grad.mlp.linear1.bias`,
          `grad.mlp.linear2.weight`, `grad.mlp.linear2.bias`.
  Checks: the functional form equals MGD's module form (`normalize=batch`), the analytic
  gradients equal autograd in float64, the fp32 outputs equal float64, ReLU margins.

Output is deterministic (fixed seeds, sorted metadata), so re-recording changes no bytes
unless a value changes.

Usage (from the repository root):
    .venv-torch/bin/python python-reference/record_semckd_cwt_fixtures.py [--out tests/fixtures]
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# No __pycache__ next to the sources: the repo .gitignore does not cover this folder.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cwt_reference as cwt_ref  # noqa: E402
import semckd_reference as sem_ref  # noqa: E402
from record_common import DTYPES, check_unique_names, fixture_metadata, fmt_param, fmt_short  # noqa: E402
from record_common import recorder_args, warn_stale, write_fixture  # noqa: E402

FP64_RTOL = 1e-4  # fp32 reference vs float64 recomputation: the verifier's f32 tolerance
FP64_WARN = 1e-5  # above this the crate would have less than 10x headroom: warn
ANALYTIC_RTOL = 1e-10  # hand-derived gradients vs autograd, both float64
OFFICIAL_RTOL = 1e-5  # our split vs the literal official modules, both fp32
RELU_MARGIN = 1e-4  # min |pre-activation| / max |pre-activation| (exact zeros excepted where built)
NORM_MARGIN = 1e-3  # min embedding norm / max embedding norm per MLP
MAX_FILE_BYTES = 200 * 1024

REF_SEMCKD = "semckd_reference.SelfA+SemCKDLoss (DefangChen/SemCKD, regressor outputs as inputs)"
REF_CWT = "cwt_reference.cwt (inferred; MGD harness with a 1x1-conv MLP)"


def max_rel_err(a, b):
    return sem_ref.max_rel_err(a, b)


def check_close(label, got, ref, tol, errors, name):
    err = max_rel_err(got, ref)
    assert err <= tol, f"{name}: {label} differs by {err:.2e} (> {tol:.0e})"
    errors[label] = max(errors.get(label, 0.0), err)
    return err


def save_fixture(path, tensors, metadata):
    size = write_fixture(path, {k: v.contiguous() for k, v in sorted(tensors.items())}, metadata)
    assert size < MAX_FILE_BYTES, f"{path.name}: {size} bytes, over the {MAX_FILE_BYTES} limit"
    return size


# ---------------------------------------------------------------------------------------------
# SemCKD


@dataclass
class SemCase:
    dtype: str
    batch: int
    student: list  # (C, H, W) per student layer
    teacher: list  # (C, H, W) per teacher layer
    loss_weight: float
    seed: int
    init: str  # "relu": post-ReLU-like features (max(0, N(0,1))), "normal": N(0,1)
    description: str
    suffix: str
    partial: bool = False  # d = 1: record only the outputs that are not identically zero

    @property
    def name(self):
        return "_".join(["semckd", self.dtype, f"b{self.batch}", f"s{len(self.student)}t{len(self.teacher)}",
                         f"w{fmt_short(self.loss_weight)}", self.suffix])


CIFAR_S = [(4, 8, 8), (8, 4, 4), (16, 2, 2)]
CIFAR_T = [(6, 8, 8), (8, 4, 4), (12, 2, 2)]
MIXED_S = [(3, 6, 6), (5, 3, 3)]
MIXED_T = [(6, 7, 7), (4, 5, 5), (8, 2, 2)]
SMALL_S = [(4, 4, 4), (6, 2, 2)]
SMALL_T = [(5, 4, 4), (8, 2, 2)]

SEMCKD_CASES = [
    SemCase("f32", 8, CIFAR_S, CIFAR_T, 400.0, 301, "relu", suffix="cifar",
            description="CIFAR-like 3x3 layers scaled down (student 4/8/16 ch, teacher 6/8/12 ch at 8/4/2), "
                        "post-ReLU features, beta 400 (the CIFAR-100 setting); includes student-larger pairs."),
    SemCase("f32", 8, MIXED_S, MIXED_T, 1.0, 302, "normal", suffix="mixed",
            description="2 student vs 3 teacher layers: student-larger pairs (h = Ht_j: 6>5, 6>2, 3>2) and "
                        "non-integer teacher pooling (7x7 to 6x6 and 3x3, 5x5 to 3x3)."),
    SemCase("f32", 8, [(3, 4, 4), (5, 2, 2)], [(4, 6, 9), (6, 4, 4)], 50.0, 303, "normal", suffix="nonsquare",
            description="Non-square teacher map 6x9 pooled to the official square target (4x4, 2x2: H used for "
                        "both sides); equal-size pair 4x4 (pooling is the identity); beta 50 (ImageNet)."),
    SemCase("f32", 4, MIXED_S, MIXED_T, 1.0, 304, "normal", suffix="d1", partial=True,
            description="B = 4 gives d = 1: each embedding is the sign of a scalar, energies are +-1, and the "
                        "gradients into the MLPs and the student features are exactly 0, so only loss, "
                        "attention and grad.student_proj are recorded."),
    SemCase("f16", 8, SMALL_S, SMALL_T, 400.0, 305, "relu", suffix="small",
            description="f16 inputs and parameters, 2x2 layers, post-ReLU features, beta 400."),
    SemCase("bf16", 8, SMALL_S, SMALL_T, 1.0, 306, "relu", suffix="small",
            description="bf16 inputs and parameters, 2x2 layers, post-ReLU features, beta 1."),
]


def semckd_inputs(case):
    g = torch.Generator().manual_seed(case.seed)
    B = case.batch

    def feat(chw):
        x = torch.randn((B, *chw), generator=g)
        return x.clamp_min(0) if case.init == "relu" else x

    fs = [feat(s) for s in case.student]
    ft = [feat(t) for t in case.teacher]
    params = sem_ref.init_params(len(fs), len(ft), B, g)
    return fs, ft, params


def semckd_official(fs, ft, params, loss_weight, regressor_seed):
    """The literal official SelfA (regressors included) + SemCKDLoss, fp32, with our MLP params."""
    S, T, B = len(fs), len(ft), fs[0].shape[0]
    with torch.random.fork_rng():
        torch.manual_seed(regressor_seed)
        module = sem_ref.SelfAOfficial(S, T, B, [f.shape[1] for f in fs], [t.shape[1] for t in ft])
    missing, unexpected = module.load_state_dict(
        {sem_ref.module_name(k): v for k, v in params.items()}, strict=False)
    assert not unexpected and all(k.startswith("regressor") for k in missing), (missing, unexpected)
    module.train()  # the regressors' batch norms are in train mode during distillation
    feat_s = [x.clone().requires_grad_(True) for x in fs]
    feat_t = [x.clone() for x in ft]  # detached, as helper/loops.py line 122
    s_value, f_target, weight = module(feat_s, feat_t)
    for row in s_value:
        for v in row:
            v.retain_grad()
    loss = loss_weight * sem_ref.SemCKDLossOfficial()(s_value, f_target, weight)
    loss.backward(retain_graph=True)
    named = dict(module.named_parameters())
    out = {"loss": loss.detach(), "attention": weight.detach()}
    for i, x in enumerate(feat_s):
        out[f"grad.student.{i}"] = x.grad  # both paths: Gram/attention and regressor
    for i, row in enumerate(s_value):
        for j, v in enumerate(row):
            out[f"grad.student_proj.{i}.{j}"] = v.grad
    for k in params:
        out[f"grad.{k}"] = named[sem_ref.module_name(k)].grad
    return out, feat_s, s_value


def semckd_margins(fs, ft, params):
    """min |z1| / max |z1| and min ||z2|| / max ||z2|| over the MLPs, in float64."""
    relu, norm = float("inf"), float("inf")
    for side, feats in (("query", fs), ("key", ft)):
        for i, f in enumerate(feats):
            x = f.double().reshape(f.shape[0], -1)
            p = {n: params[f"{side}.{i}.{n}"].double() for n in
                 ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")}
            z1, _, _, denom, _, _ = sem_ref._mlp_forward(x @ x.t(), p["linear1.weight"], p["linear1.bias"],
                                                         p["linear2.weight"], p["linear2.bias"], None)
            relu = min(relu, (z1.abs().min() / z1.abs().max()).item())
            norm = min(norm, (denom.min() / denom.max()).item())
    return relu, norm


def record_semckd(case, out_dir):
    dtype = DTYPES[case.dtype]
    S, T, B = len(case.student), len(case.teacher), case.batch
    assert B % sem_ref.FACTOR == 0, "B must be a multiple of 4 (d = B // 4)"
    errors = {}
    fs_raw, ft_raw, params_raw = semckd_inputs(case)
    fs_st = [x.to(dtype) for x in fs_raw]
    ft_st = [x.to(dtype) for x in ft_raw]
    params_st = {k: v.to(dtype) for k, v in params_raw.items()}
    fs32 = [x.float() for x in fs_st]
    ft32 = [x.float() for x in ft_st]
    params32 = {k: v.float() for k, v in params_st.items()}

    # 1. Official SelfA with its regressors: produces the regressor outputs we store, and the
    #    official loss/gradients our split must reproduce.
    official, feat_s_off, s_value = semckd_official(fs32, ft32, params32, case.loss_weight, case.seed + 10000)
    proj_raw = [[v.detach().clone() for v in row] for row in s_value]
    ours_raw = sem_ref.semckd_with_grads(fs32, ft32, proj_raw, params32, case.loss_weight)
    flat_proj = [v for row in s_value for v in row]
    flat_gproj = [ours_raw[f"grad.student_proj.{i}.{j}"] for i in range(S) for j in range(T)]
    vjp = torch.autograd.grad(flat_proj, feat_s_off, grad_outputs=flat_gproj)
    for key in official:
        if key.startswith("grad.student.") and not key.startswith("grad.student_proj."):
            i = int(key.rsplit(".", 1)[1])
            check_close("official", ours_raw[key] + vjp[i], official[key], OFFICIAL_RTOL, errors, case.name)
        elif case.partial and key.startswith(("grad.query.", "grad.key.")):
            continue  # exactly zero in exact arithmetic: only fp32 rounding noise on both sides
        else:
            check_close("official", ours_raw[key], official[key], OFFICIAL_RTOL, errors, case.name)

    # 2. The recorded reference: fp32 on the upcast stored inputs (regressor outputs rounded).
    proj_st = [[v.to(dtype) for v in row] for row in proj_raw]
    proj32 = [[v.float() for v in row] for row in proj_st]
    ref = sem_ref.semckd_with_grads(fs32, ft32, proj32, params32, case.loss_weight)
    assert all(bool(torch.isfinite(v).all()) for v in ref.values()), f"{case.name}: non-finite reference"
    if case.partial:
        kept = ["loss", "attention"] + [k for k in ref if k.startswith("grad.student_proj.")]
        hand = sem_ref.semckd_analytic([x.double() for x in fs32], [x.double() for x in ft32],
                                       [[v.double() for v in row] for row in proj32],
                                       {k: v.double() for k, v in params32.items()}, case.loss_weight)
        zero = [k for k in hand if k not in kept]
        assert all(bool((hand[k] == 0).all()) for k in zero), f"{case.name}: d = 1 gradients not exactly 0"
        errors["fp32 |zero grads|"] = max(ref[k].abs().max().item() for k in zero)
        assert bool((ref["attention"] > 0).all())
    else:
        kept = sorted(ref)

    # 3. float64 recomputation and 4. analytic gradients.
    ref64 = sem_ref.semckd_with_grads(fs32, ft32, proj32, params32, case.loss_weight, dtype=torch.float64)
    for k in kept:
        check_close("fp64", ref[k], ref64[k], FP64_RTOL, errors, case.name)
    analytic = sem_ref.check_semckd_analytic(fs32, ft32, proj32, params32, case.loss_weight, names=set(kept))
    for k, err in analytic.items():
        assert err <= ANALYTIC_RTOL, f"{case.name}: analytic {k} differs from autograd by {err:.2e}"
    errors["analytic"] = max(analytic.values())

    relu_margin, norm_margin = semckd_margins(fs32, ft32, params32)
    assert relu_margin > RELU_MARGIN, f"{case.name}: MLP pre-activation too close to 0 ({relu_margin:.1e})"
    assert norm_margin > NORM_MARGIN, f"{case.name}: embedding norm too small ({norm_margin:.1e})"

    metadata = fixture_metadata(
        "semckd", case.seed, case.description, loss_weight=fmt_param(case.loss_weight), num_student_layers=str(S),
        num_teacher_layers=str(T), embed_dim=str(B // sem_ref.FACTOR), reference_impl=REF_SEMCKD,
        student_proj_source=f"official AAEmbed regressors, train-mode BN, torch.manual_seed({case.seed + 10000})")
    tensors = {}
    for i, x in enumerate(fs_st):
        tensors[f"student.{i}"] = x
    for j, x in enumerate(ft_st):
        tensors[f"teacher.{j}"] = x
    for i, row in enumerate(proj_st):
        for j, x in enumerate(row):
            tensors[f"student_proj.{i}.{j}"] = x
    tensors.update(params_st)
    for k in kept:
        tensors[k] = ref[k].float().reshape([] if k == "loss" else ref[k].shape)
    path = out_dir / f"{case.name}.safetensors"
    size = save_fixture(path, tensors, metadata)
    print(f"{path.name} ({size} B): loss {ref['loss'].item():.9g}  relu margin {relu_margin:.1e}  "
          f"norm margin {norm_margin:.1e}")
    return path, size, errors


# ---------------------------------------------------------------------------------------------
# CWT


@dataclass
class CwtCase:
    dtype: str
    shape: tuple  # student (N, Cs, H, W)
    hidden: int
    teacher_channels: int
    normalize: str
    loss_weight: float
    seed: int
    init: str  # "default" or "dead"
    description: str
    suffix: str = ""

    @property
    def name(self):
        parts = ["cwt", self.dtype, "x".join(str(d) for d in self.shape), f"h{self.hidden}",
                 f"c{self.teacher_channels}", self.normalize, f"w{fmt_short(self.loss_weight)}"]
        if self.suffix:
            parts.append(self.suffix)
        return "_".join(parts)


CWT_CASES = [
    CwtCase("f32", (2, 7, 5, 6), 13, 5, "batch", 1.0, 418, "default",
            "Odd channel counts Cs 7 -> hidden 13 -> Ct 5, MGD normaliser (sum / N)."),
    CwtCase("f32", (2, 7, 5, 6), 13, 5, "mean", 1.0, 418, "default",
            "Same inputs as the batch case, normalised over all elements."),
    CwtCase("f32", (1, 16, 4, 4), 32, 16, "batch", 0.5, 402, "default",
            "Single image, hidden wider than both sides (16 -> 32 -> 16), weight 0.5."),
    CwtCase("f16", (2, 8, 3, 5), 8, 8, "batch", 1.0, 403, "default",
            "f16 student and teacher (parameters f32), 8 -> 8 -> 8."),
    CwtCase("bf16", (2, 8, 3, 5), 8, 8, "mean", 3.0, 404, "default",
            "bf16 student and teacher (parameters f32), 8 -> 8 -> 8, mean, weight 3."),
    CwtCase("f32", (2, 6, 4, 5), 10, 4, "batch", 1.0, 405, "dead", suffix="dead",
            description="Most hidden pre-activations negative (b1 shifted by -0.8); unit 0 has zero weights "
                        "and bias (pre-activation exactly 0: ReLU'(0) = 0 as in PyTorch), unit 1 is always "
                        "dead (b1 = -10)."),
]


def cwt_inputs(case):
    g = torch.Generator().manual_seed(case.seed)
    n, cs, h, w = case.shape
    s = torch.randn(case.shape, generator=g)
    t = torch.randn((n, case.teacher_channels, h, w), generator=g)
    params = cwt_ref.init_params(cs, case.hidden, case.teacher_channels, g)
    if case.init == "dead":
        params["mlp.linear1.bias"] -= 0.8
        params["mlp.linear1.weight"][0] = 0.0
        params["mlp.linear1.bias"][0] = 0.0
        params["mlp.linear1.bias"][1] = -10.0
    else:
        assert case.init == "default"
    return s, t, params


def record_cwt(case, out_dir):
    dtype = DTYPES[case.dtype]
    errors = {}
    s_raw, t_raw, params = cwt_inputs(case)
    s_st, t_st = s_raw.to(dtype), t_raw.to(dtype)
    s32, t32 = s_st.float(), t_st.float()
    ref = cwt_ref.cwt_with_grads(s32, t32, params, case.loss_weight, case.normalize)
    assert all(bool(torch.isfinite(v).all()) for v in ref.values()), f"{case.name}: non-finite reference"

    if case.normalize == "batch":  # MGD's module form, loss only and its gradients
        module = cwt_ref.CWTFeatureLoss(s32.shape[1], case.hidden, case.teacher_channels, case.loss_weight)
        module.load_fixture_params(params)
        s_leaf = s32.clone().requires_grad_(True)
        loss_m = module(s_leaf, t32)
        loss_m.backward()
        check_close("module form", loss_m.detach(), ref["loss"], OFFICIAL_RTOL, errors, case.name)
        check_close("module form", s_leaf.grad, ref["grad.student"], OFFICIAL_RTOL, errors, case.name)
        gen = module.generation
        for k, got in (("mlp.linear1.weight", gen[0].weight.grad), ("mlp.linear1.bias", gen[0].bias.grad),
                       ("mlp.linear2.weight", gen[2].weight.grad), ("mlp.linear2.bias", gen[2].bias.grad)):
            check_close("module form", got.reshape(params[k].shape), ref[f"grad.{k}"], OFFICIAL_RTOL, errors,
                        case.name)

    ref64 = cwt_ref.cwt_with_grads(s32, t32, params, case.loss_weight, case.normalize, dtype=torch.float64)
    for k in ref:
        check_close("fp64", ref[k], ref64[k], FP64_RTOL, errors, case.name)
    analytic = cwt_ref.check_cwt_analytic(s32, t32, params, case.loss_weight, case.normalize)
    for k, err in analytic.items():
        assert err <= ANALYTIC_RTOL, f"{case.name}: analytic {k} differs from autograd by {err:.2e}"
    errors["analytic"] = max(analytic.values())

    a = cwt_ref.hidden_preactivations(s32.double(), {k: v.double() for k, v in params.items()})
    exact_zero_rows = (a == 0).all(dim=1)
    nonzero = a[~exact_zero_rows]
    relu_margin = (nonzero.abs().min() / nonzero.abs().max()).item()
    assert relu_margin > RELU_MARGIN, f"{case.name}: hidden pre-activation too close to 0 ({relu_margin:.1e})"
    active = (a > 0).double().mean().item()
    if case.init == "dead":
        assert bool(exact_zero_rows[0]) and not bool((a[1] > 0).any()) and active < 0.2, active
        assert bool((ref["grad.mlp.linear1.weight"][:2] == 0).all()), "dead units must get exactly 0 gradient"

    metadata = fixture_metadata("cwt", case.seed, case.description, loss_weight=fmt_param(case.loss_weight),
                                normalize=case.normalize, reference_impl=REF_CWT)
    tensors = {"student": s_st, "teacher": t_st}
    tensors.update({k: v.float() for k, v in params.items()})  # parameters always F32
    for k, v in ref.items():
        tensors[k] = v.float().reshape([] if k == "loss" else v.shape)
    path = out_dir / f"{case.name}.safetensors"
    size = save_fixture(path, tensors, metadata)
    print(f"{path.name} ({size} B): loss {ref['loss'].item():.9g}  active hidden {active:.0%}  "
          f"relu margin {relu_margin:.1e}")
    return path, size, errors


def main():
    args = recorder_args(__doc__, lambda parser: parser.add_argument(
        "--losses", nargs="+", choices=["semckd", "cwt"], default=["semckd", "cwt"]))
    jobs = []
    if "semckd" in args.losses:
        jobs += [(record_semckd, c) for c in SEMCKD_CASES]
    if "cwt" in args.losses:
        jobs += [(record_cwt, c) for c in CWT_CASES]
    check_unique_names([c for _, c in jobs])

    written, worst = set(), {}
    for fn, case in jobs:
        path, size, errors = fn(case, args.out)
        written.add(path.name)
        print("    " + "; ".join(f"{k} {v:.1e}" for k, v in sorted(errors.items())))
        if errors.get("fp64", 0.0) > FP64_WARN:
            print(f"warning: {path.name}: fp32 vs float64 error {errors['fp64']:.1e} leaves the crate "
                  f"less than 10x headroom", file=sys.stderr)
        loss = path.name.split("_", 1)[0]
        for k, v in errors.items():
            worst[(loss, k)] = max(worst.get((loss, k), 0.0), v)

    warn_stale(args.out, [f"{loss}_" for loss in args.losses], written)
    print("worst errors: " + "; ".join(f"{loss} {k} {v:.1e}" for (loss, k), v in sorted(worst.items())))
    total = sum((args.out / n).stat().st_size for n in written)
    print(f"{len(written)} files written to {args.out} ({total / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
