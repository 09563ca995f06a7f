"""Record the PKD and DIST reference fixtures `tests/fixtures/{pkd,dist}_*.safetensors`.

The outputs come from the official code, copied into `official/` (each file names its repository,
path, commit and license):
  * PKD: mmrazor `PKDLoss` (`official/mmrazor_pkd_loss.py`), called on the tuple of levels as
    mmrazor's detection configs call it. Metadata `loss` = `pkd`, `loss_weight`, `num_levels` L;
    inputs `student.{l}`, `teacher.{l}` [N, C_l, H_l, W_l]; outputs `loss` and `grad.student.{l}`.
  * DIST: DIST_KD's segmentation `DIST` (`official/dist_kd_dist.py`), fed `S / tau` and `T / tau`
    and scaled by `loss_weight * tau^2` (mmrazor's `DISTLoss` convention; with tau = 1 and weight 1
    this is DIST_KD's loss exactly). Metadata `loss` = `dist`, `tau`, `beta`, `gamma`,
    `loss_weight`; inputs `student`, `teacher` [N, C, H, W]; outputs `loss`, `grad.student`.

Every input is stored in the case's dtype; the outputs are F32, computed by the official code in
fp32 from the stored inputs after upcasting them (`docs/fixtures.md`).

Before writing a file the recorder checks, and refuses to write on failure:
  * every recorded fp32 output against the same official code in float64;
  * the analytic gradients the crate implements (`docs/losses.md`, PKD and DIST sections) against
    the official code's autograd in float64;
  * DIST: mmrazor's `DISTLoss` on the pixels flattened to [N*H*W, C] equals the recorded loss, and
    on the 4-D logits as they are it does not (its intra term is then another loss);
  * PKD, the constant-channel case: torch's `std` backward is 0 where the std is 0, so the official
    gradient is finite in a constant student channel and equals the crate's (the closed form's first
    term alone); it is recorded like any other. Should an autograd give NaN there instead, the
    recorder checks that the NaN is exactly that channel, leaves that level's `grad.student.{l}` out
    (its loss is still recorded) and says so (`official_grad_nan_levels`).
Output is deterministic (fixed seeds, sorted metadata).

Usage (from the repository root):
    .venv-torch/bin/python python-reference/record_pkd_dist_fixtures.py [--out tests/fixtures]
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# No __pycache__ next to the sources: the repo .gitignore does not cover this folder.
sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "official"))
from dist_kd_dist import DIST  # noqa: E402
from mmrazor_dist_loss import DISTLoss  # noqa: E402
from mmrazor_pkd_loss import PKDLoss  # noqa: E402
from record_common import DTYPES, FP64_RTOL, add_outliers, all_finite, fmt_param, fmt_short, rel_err  # noqa: E402
from record_common import check_unique_names, finish_run, fixture_metadata, recorder_args, write_fixture  # noqa: E402

GRAD_ANALYTIC_RTOL_F64 = 1e-10  # the crate's closed-form gradient vs official autograd, float64
MMRAZOR_FLAT_RTOL = 1e-5  # mmrazor DISTLoss on flattened pixels vs DIST_KD's DIST, fp32
PKD_EPS = 1e-6
DIST_EPS = 1e-8

REF_PKD = "mmrazor.PKDLoss"
REF_DIST = "DIST_KD.DIST"


# ---------------------------------------------------------------------------------------------------------
# The crate's closed forms (float64), checked against the official autograd before anything is written.

def pkd_grad_closed_form(levels_s, levels_t, w):
    """d L / d S_l of `docs/losses.md` (PKD): per channel over all images, the constant-channel term dropped."""
    grads = []
    for s, t in zip(levels_s, levels_t):
        n, c, h, wd = s.shape
        numel = s.numel()
        xs = s.permute(1, 0, 2, 3).reshape(c, -1)
        xt = t.permute(1, 0, 2, 3).reshape(c, -1)
        m = xs.shape[1]
        mu_s, sd_s = xs.mean(1, keepdim=True), xs.std(1, keepdim=True)
        mu_t, sd_t = xt.mean(1, keepdim=True), xt.std(1, keepdim=True)
        hat_s = (xs - mu_s) / (sd_s + PKD_EPS)
        hat_t = (xt - mu_t) / (sd_t + PKD_EPS)
        g = w * (hat_s - hat_t) / numel
        d = xs - mu_s
        first = (g - g.mean(1, keepdim=True)) / (sd_s + PKD_EPS)
        proj = (g * d).sum(1, keepdim=True)
        second = d * proj / ((sd_s + PKD_EPS) ** 2 * (m - 1) * sd_s)
        second = torch.where(sd_s > 0, second, torch.zeros_like(second))
        grads.append((first - second).reshape(c, n, h, wd).permute(1, 0, 2, 3))
    return grads


def dist_grad_closed_form(s, t, tau, beta, gamma, w):
    """d L / d S of `docs/losses.md` (DIST): through the two Pearson correlations, then the softmax."""
    c = s.shape[1]
    ps = (s / tau).transpose(1, 3).reshape(-1, c).softmax(1)
    pt = (t / tau).transpose(1, 3).reshape(-1, c).softmax(1)

    def drho(a, b):  # rows: d rho(a_r, b_r) / d a_r
        ac, bc = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        na, nb = ac.norm(dim=1, keepdim=True), bc.norm(dim=1, keepdim=True)
        den = na * nb + DIST_EPS
        dot = (ac * bc).sum(1, keepdim=True)
        second = torch.where(na > 0, dot * nb * ac / (na.clamp_min(1e-300) * den**2), torch.zeros_like(ac))
        return bc / den - second

    m = ps.shape[0]
    gp = -beta / m * drho(ps, pt) - gamma / c * drho(ps.t(), pt.t()).t()
    gp = gp * w * tau * tau
    gz = ps * (gp - (ps * gp).sum(1, keepdim=True)) / tau
    n, _, h, wd = s.shape
    return gz.reshape(n, wd, h, c).transpose(1, 3)


# ---------------------------------------------------------------------------------------------------------
# The official calls.

def pkd_official(levels_s, levels_t, w):
    """(loss, [grad.student.l]) by mmrazor's PKDLoss on fresh leaves."""
    leaves = [s.detach().clone().requires_grad_(True) for s in levels_s]
    loss = PKDLoss(loss_weight=w)(tuple(leaves), tuple(t.detach() for t in levels_t))
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), list(grads)


def dist_official(s, t, tau, beta, gamma, w):
    """(loss, grad.student) by DIST_KD's DIST with mmrazor's tau and weight convention."""
    leaf = s.detach().clone().requires_grad_(True)
    loss = w * tau**2 * DIST(beta=beta, gamma=gamma)(leaf / tau, t.detach() / tau)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


# ---------------------------------------------------------------------------------------------------------
# Cases.

@dataclass
class PkdCase:
    dtype: str
    shapes: list  # [(N, C_l, H_l, W_l)] per level, one N
    loss_weight: float
    seed: int
    description: str
    suffix: str = ""
    const_student: tuple = None  # (level, channel, value): a constant student channel
    const_teacher: tuple = None  # (level, channel, value): a constant teacher channel

    @property
    def name(self):
        n = self.shapes[0][0]
        levels = "-".join("x".join(str(d) for d in s[1:]) for s in self.shapes)
        parts = ["pkd", self.dtype, f"n{n}", levels, f"w{fmt_short(self.loss_weight)}"]
        if self.suffix:
            parts.append(self.suffix)
        return "_".join(parts)


@dataclass
class DistCase:
    dtype: str
    shape: tuple
    tau: float
    beta: float
    gamma: float
    loss_weight: float
    seed: int
    description: str
    suffix: str = ""
    const_row: tuple = None  # (n, h, w, value): a student pixel whose logits are all equal

    @property
    def name(self):
        shape = "x".join(str(d) for d in self.shape)
        parts = ["dist", self.dtype, shape, f"tau{fmt_short(self.tau)}", f"b{fmt_short(self.beta)}",
                 f"g{fmt_short(self.gamma)}", f"w{fmt_short(self.loss_weight)}"]
        if self.suffix:
            parts.append(self.suffix)
        return "_".join(parts)


PKD_CASES = [
    PkdCase("f32", [(2, 5, 9, 11), (2, 3, 5, 6), (2, 7, 3, 3)], 1.0, 701,
            "Three levels of different C, H, W (odd sizes), default weight; channels of different "
            "means and scales."),
    PkdCase("f32", [(1, 4, 7, 5), (1, 4, 4, 3), (1, 6, 1, 3)], 6.0, 702,
            "Batch 1, weight 6 (mmrazor's detection configs); the last level has M = 3 values per "
            "channel. (With M = 2 the standardised values are +-1/sqrt(2) whatever the input, so the "
            "gradient is of the order of the eps and fp32 records only its rounding noise.)", suffix="m3"),
    PkdCase("f16", [(2, 6, 8, 7), (2, 6, 4, 4), (2, 6, 2, 2)], 0.5, 703,
            "f16 inputs, an FPN-like pyramid of one channel count, weight 0.5; reference from the "
            "upcast stored values."),
    PkdCase("bf16", [(3, 5, 6, 5), (3, 2, 3, 3)], 2.0, 704,
            "bf16 inputs, two levels, weight 2; reference from the upcast stored values."),
    PkdCase("f32", [(2, 4, 5, 6), (2, 3, 3, 4)], 1.0, 705,
            "Level 0 has a constant student channel (c 2 = 0.5): std = 0 and x_hat = 0 there; torch's "
            "std backward is 0 at std = 0, so the official gradient there is the first term alone, "
            "(g - mean g) / 1e-6 (large). Level 1 has a constant teacher channel (c 1 = -1.25).",
            suffix="const", const_student=(0, 2, 0.5), const_teacher=(1, 1, -1.25)),
]

DIST_CASES = [
    DistCase("f32", (2, 19, 9, 11), 1.0, 1.0, 1.0, 1.0, 801,
             "DIST_KD's segmentation loss as trained (tau 1, beta 1, gamma 1), 19 classes "
             "(Cityscapes), odd H and W; N(0, 2^2) logits."),
    DistCase("f32", (3, 5, 7, 6), 4.0, 2.0, 0.5, 3.0, 802,
             "Every parameter off its default: tau 4, beta 2, gamma 0.5, weight 3."),
    DistCase("f16", (2, 7, 5, 9), 1.0, 1.0, 1.0, 1.0, 803,
             "f16 logits with +-30 outliers; reference from the upcast stored values.",
             suffix="outliers"),
    DistCase("bf16", (2, 11, 6, 7), 2.0, 1.0, 2.0, 1.0, 804,
             "bf16 logits, tau 2, gamma 2; reference from the upcast stored values."),
    DistCase("f32", (1, 3, 1, 4), 1.0, 1.0, 1.0, 1.0, 805,
             "One image, three classes, four pixels: the smallest intra-class correlation "
             "(over 4 values)."),
    DistCase("f32", (2, 4, 3, 5), 1.0, 1.0, 1.0, 1.0, 806,
             "Student pixel (0, 1, 2) has four equal logits: its centred probabilities are exactly 0, "
             "where the norm's derivative is 0/0; torch's norm backward is 0 there, so the official "
             "gradient is finite, b'/(0 + 1e-8) through the softmax (about 1e6, the largest entries).",
             suffix="constrow", const_row=(0, 1, 2, 0.75)),
]


def draw_features(shape, g):
    """Features whose channels have different means and scales (the standardisation matters)."""
    c = shape[1]
    scale = torch.rand((1, c, 1, 1), generator=g) * 3.0 + 0.25
    shift = torch.randn((1, c, 1, 1), generator=g) * 2.0
    return torch.randn(shape, generator=g) * scale + shift


def draw_logits(shape, g, outliers):
    x = torch.randn(shape, generator=g) * 2.0
    return add_outliers(x, g, 30.0) if outliers else x


def record_pkd(case, out_dir):
    dtype = DTYPES[case.dtype]
    g = torch.Generator().manual_seed(case.seed)
    assert len({s[0] for s in case.shapes}) == 1, "one batch size across levels"
    raw_s, raw_t = [], []
    for shape in case.shapes:
        raw_s.append(draw_features(shape, g))
        raw_t.append(draw_features(shape, g))
    if case.const_student:
        lv, ch, v = case.const_student
        raw_s[lv][:, ch] = v
    if case.const_teacher:
        lv, ch, v = case.const_teacher
        raw_t[lv][:, ch] = v
    stored_s = [x.to(dtype).contiguous() for x in raw_s]
    stored_t = [x.to(dtype).contiguous() for x in raw_t]
    s32 = [x.float() for x in stored_s]
    t32 = [x.float() for x in stored_t]
    s64 = [x.double() for x in s32]
    t64 = [x.double() for x in t32]
    w = case.loss_weight

    loss32, grads32 = pkd_official(s32, t32, w)
    loss64, grads64 = pkd_official(s64, t64, w)
    metadata_notes = []
    analytic = pkd_grad_closed_form(s64, t64, w)
    nan_levels = []
    for lv, (g32, g64, ga) in enumerate(zip(grads32, grads64, analytic)):
        assert bool(torch.isfinite(ga).all()), f"{case.name}: level {lv}: the closed form is not finite"
        if not all_finite(g32, g64):
            # An autograd whose `std` backward is 0/0 at std = 0 gives NaN, and only in the constant channel.
            assert case.const_student and case.const_student[0] == lv, f"{case.name}: level {lv} not finite"
            ch = case.const_student[1]
            keep = torch.ones(g64.shape[1], dtype=torch.bool)
            keep[ch] = False
            for gg in (g32, g64):
                assert bool(torch.isnan(gg[:, ch]).all()) and all_finite(gg[:, keep]), f"{case.name}: NaN pattern"
            e = rel_err(ga[:, keep], g64[:, keep])
            assert e <= GRAD_ANALYTIC_RTOL_F64, f"{case.name}: level {lv} analytic vs autograd {e:.2e}"
            nan_levels.append(lv)
            continue
        e = rel_err(ga, g64)
        assert e <= GRAD_ANALYTIC_RTOL_F64, f"{case.name}: level {lv} analytic vs autograd {e:.2e}"
        e = rel_err(g32, g64)
        assert e <= FP64_RTOL, f"{case.name}: level {lv} fp32 gradient vs float64 {e:.2e}"
        if case.const_student and case.const_student[0] == lv:
            # torch's `std` backward returns 0 where the std is 0 (masked), so the official gradient is
            # finite there and is the closed form's first term alone: record it, and say so.
            ch = case.const_student[1]
            assert bool((s64[lv][:, ch] == s64[lv][:, ch].flatten()[0]).all())
            metadata_notes.append(f"level {lv} channel {ch}: constant student channel, official gradient finite")
    assert all_finite(loss32, loss64), f"{case.name}: loss not finite"
    e = rel_err(loss32, loss64)
    assert e <= FP64_RTOL, f"{case.name}: loss fp32 vs float64 {e:.2e}"

    metadata = fixture_metadata("pkd", case.seed, case.description, loss_weight=fmt_param(w),
                                num_levels=str(len(case.shapes)), reference_impl=REF_PKD)
    if metadata_notes:
        metadata["notes"] = "; ".join(metadata_notes)
    if nan_levels:
        metadata["official_grad_nan_levels"] = ",".join(str(lv) for lv in nan_levels)
    tensors = {"loss": loss32.float().reshape([]).contiguous()}
    for lv in range(len(case.shapes)):
        tensors[f"student.{lv}"] = stored_s[lv]
        tensors[f"teacher.{lv}"] = stored_t[lv]
        if lv not in nan_levels:
            tensors[f"grad.student.{lv}"] = grads32[lv].float().contiguous()
    path = out_dir / f"{case.name}.safetensors"
    size = write_fixture(path, tensors, metadata)
    print(f"{path.name}: loss {loss32.item():.9g}  ({size} bytes)"
          + (f"  [official grad NaN in level(s) {nan_levels}: not recorded]" if nan_levels else ""))
    return path


def record_dist(case, out_dir):
    dtype = DTYPES[case.dtype]
    g = torch.Generator().manual_seed(case.seed)
    outliers = case.suffix == "outliers"
    s_raw = draw_logits(case.shape, g, outliers)
    if case.const_row:
        n, h, w, v = case.const_row
        s_raw[n, :, h, w] = v
    s_stored = s_raw.to(dtype).contiguous()
    t_stored = draw_logits(case.shape, g, outliers).to(dtype).contiguous()
    s32, t32 = s_stored.float(), t_stored.float()
    s64, t64 = s32.double(), t32.double()
    p = (case.tau, case.beta, case.gamma, case.loss_weight)

    loss32, grad32 = dist_official(s32, t32, *p)
    loss64, grad64 = dist_official(s64, t64, *p)
    assert all_finite(loss32, grad32, loss64, grad64), f"{case.name}: not finite"
    e_loss, e_grad = rel_err(loss32, loss64), rel_err(grad32, grad64)
    assert max(e_loss, e_grad) <= FP64_RTOL, f"{case.name}: fp32 vs float64 {e_loss:.2e} {e_grad:.2e}"
    e_an = rel_err(dist_grad_closed_form(s64, t64, *p), grad64)
    assert e_an <= GRAD_ANALYTIC_RTOL_F64, f"{case.name}: analytic gradient vs autograd {e_an:.2e}"

    # mmrazor's DISTLoss is this loss on the pixels flattened as DIST_KD flattens them, not on 4-D logits.
    c = case.shape[1]
    tau, beta, gamma, w = p
    mm = DISTLoss(inter_loss_weight=beta, intra_loss_weight=gamma, tau=tau, loss_weight=w)
    flat = mm(s32.transpose(1, 3).reshape(-1, c), t32.transpose(1, 3).reshape(-1, c))
    e_flat = rel_err(flat, loss32)
    assert e_flat <= MMRAZOR_FLAT_RTOL, f"{case.name}: mmrazor DISTLoss (flattened) differs by {e_flat:.2e}"
    as_is = mm(s32, t32)
    assert rel_err(as_is, loss32) > 1e-3, f"{case.name}: mmrazor's 4-D DISTLoss unexpectedly equals DIST"

    metadata = fixture_metadata("dist", case.seed, case.description, tau=fmt_param(case.tau),
                                beta=fmt_param(case.beta), gamma=fmt_param(case.gamma),
                                loss_weight=fmt_param(case.loss_weight), reference_impl=REF_DIST,
                                mmrazor_distloss_4d=repr(as_is.item()))
    tensors = {
        "student": s_stored,
        "teacher": t_stored,
        "loss": loss32.float().reshape([]).contiguous(),
        "grad.student": grad32.float().contiguous(),
    }
    path = out_dir / f"{case.name}.safetensors"
    size = write_fixture(path, tensors, metadata)
    print(f"{path.name}: loss {loss32.item():.9g}  max|grad| {grad32.abs().max().item():.6e}  "
          f"(fp32~f64 {max(e_loss, e_grad):.1e}, analytic~autograd f64 {e_an:.1e}, mmrazor flat {e_flat:.1e}, "
          f"mmrazor 4-D {as_is.item():.6g}; {size} bytes)")
    return path


def main():
    args = recorder_args(__doc__)
    check_unique_names(PKD_CASES + DIST_CASES)
    paths = [record_pkd(c, args.out) for c in PKD_CASES] + [record_dist(c, args.out) for c in DIST_CASES]
    finish_run(args.out, ("pkd_", "dist_"), paths)


if __name__ == "__main__":
    main()
