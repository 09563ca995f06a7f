"""Record the ICSD reference fixtures `tests/fixtures/icsd_*.safetensors`.

Each case becomes one `*.safetensors` file in the crate's fixture format (`docs/fixtures.md`;
`loss` = `icsd`, `format_version` = "1", parameters `tau`, `loss_weight`, `variant`): inputs
`student`, `teacher` [B,C,H,W] in the case's dtype, and F32 reference outputs computed by
PyTorch in fp32 from the stored inputs after upcasting them:
  * `loss` (shape []), `grad.student` [B,C,H,W];
  * `sim.student`, `sim.teacher` [C,C], the row-normalised similarity matrices.

Which implementation produces the outputs (see `icsd_reference.py` and `docs/losses.md` §3):
  * `official`: the literal official `lo_loss` loop (AICSD distiller.py lines 128-146, any C)
    wherever its loss and gradient are finite. Where its backward is NaN (a probability that
    underflows to 0 along H), the crate's finite closed form (`log_softmax` along H) is
    recorded instead and the file says so: `official_grad_finite` = `false`, with the
    official forward value in `official_loss`.
  * `paper`: the pairwise true-KL loop `icsd_paper`.

Before writing a file the recorder checks, and refuses to write on failure:
  * official: loop vs closed form (`icsd_official_vectorized`) in fp32 (loss, gradient,
    matrices) and in float64; the analytic gradient (`icsd_official_grad_closed_form`)
    against autograd of both forms in float64;
  * paper: the pairwise loop vs its closed form `icsd_paper_vectorized`, fp32 and float64;
    the analytic gradient (`icsd_paper_grad_closed_form`) against autograd in float64;
  * every recorded fp32 output against the same computation in float64 (relative to the
    reference's max magnitude, the verifier's metric);
  * per-case assertions (exact zeros, the H = 1 matrix, the official NaN backward).
It also prints a small self-check of `alw_alpha` and `aicsd_objective` (no fixture: the
format has no AICSD-objective loss). Output is deterministic (fixed seeds, sorted metadata).

Usage (from the repository root):
    .venv-torch/bin/python python-reference/record_icsd_fixtures.py [--out tests/fixtures]
"""

import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

# No __pycache__ next to the sources: the repo .gitignore does not cover this folder.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from icsd_reference import (  # noqa: E402
    _official_matrix_closed_form,
    aicsd_objective,
    aicsd_pi_loss_official,
    alw_alpha,
    icsd,
    icsd_official_grad_closed_form,
    icsd_official_loop,
    icsd_official_vectorized,
    icsd_paper,
    icsd_paper_grad_closed_form,
    icsd_paper_vectorized,
    icsd_similarity_matrices,
)
from kd_reference import pixel_kd  # noqa: E402
from record_common import DTYPES, FP64_RTOL, all_finite, fmt_param, fmt_short, rel_err  # noqa: E402
from record_common import add_outliers, check_unique_names, finish_run, fixture_metadata  # noqa: E402
from record_common import loss_and_grad, recorder_args, stored_inputs, write_case  # noqa: E402

# `KLDivLoss(reduction='mean')` (the official pixel-KD term in the AICSD self-check) warns that
# it is not the mathematical KL mean; dividing by numel is the official behaviour.
warnings.filterwarnings("ignore", message=".*reduction: 'mean' divides the total loss.*")

# Tolerances of the recorder's own consistency checks (not the crate's verifier tolerances).
LOOP_VS_CLOSED_RTOL_F32 = 1e-5  # official loop vs closed form in fp32 (observed <= ~3e-6)
LOOP_VS_CLOSED_RTOL_F64 = 1e-12  # the same in float64 (observed ~1e-14)
PAPER_VS_CLOSED_RTOL_F32 = 1e-4  # a_j - X_ij cancels in fp32, so the closed form is looser
GRAD_CLOSED_FORM_RTOL_F64 = 1e-10  # analytic gradient vs autograd, float64 (observed ~1e-15)
# Official loop forward vs the recorded finite loss (underflow case). Both are fp32 sums of the
# same terms in different orders; the loss squares differences of matrices ~10x smaller than
# their entries, so the two land a few 1e-6 apart (either side of the float64 value).
OFFICIAL_FORWARD_RTOL = 1e-5

REF_OFFICIAL_LOOP = "aicsd.Distiller.lo_loss"
REF_OFFICIAL_CLOSED = "icsd_official_vectorized"
REF_PAPER = "icsd_paper"


@dataclass
class Case:
    dtype: str  # key of DTYPES
    shape: tuple  # (B, C, H, W)
    variant: str  # "official" or "paper"
    tau: float
    loss_weight: float
    init: str  # input distribution, see make_inputs
    seed: int
    description: str
    suffix: str = ""
    checks: list = field(default_factory=list)  # extra named assertions, see run_checks

    @property
    def name(self):
        shape = "x".join(str(d) for d in self.shape)
        parts = ["icsd", self.dtype, shape, self.variant, f"tau{fmt_short(self.tau)}",
                 f"w{fmt_short(self.loss_weight)}"]
        if self.suffix:
            parts.append(self.suffix)
        return "_".join(parts)


CASES = [
    # ---------------- official ----------------
    Case("f32", (2, 21, 9, 7), "official", 1.0, 9500.0, "normal2_outliers30", 301,
         "The official setting: C = 21 (Pascal VOC), tau 1, weight 9500; N(0, 2^2) logits with "
         "a few +-30 outliers.", suffix="outliers"),
    Case("f32", (1, 19, 5, 6), "official", 1.0, 9500.0, "normal2", 302,
         "C = 19 (Cityscapes), where the official hard-coded range(21) would fail; batch 1."),
    Case("f32", (3, 4, 17, 13), "official", 2.0, 1.0, "normal2_outliers30", 303,
         "Few classes, odd H and W, tau 2, weight 1, with +-30 outliers.", suffix="outliers"),
    Case("f16", (2, 5, 9, 11), "official", 1.0, 9500.0, "normal2_outliers30", 304,
         "f16 inputs with +-30 outliers; reference from the upcast stored values.", suffix="outliers"),
    Case("bf16", (2, 5, 9, 11), "official", 1.0, 9500.0, "normal2", 305,
         "bf16 inputs; reference from the upcast stored values."),
    Case("f32", (1, 3, 1, 8), "official", 1.0, 9500.0, "normal2", 306, suffix="h1",
         checks=["h1_matrix", "loss_and_grad_exactly_zero"],
         description="H = 1: every column softmax is 1, so A = 0 and M = -G = -W everywhere for "
                     "student and teacher alike; every row normalises to -1/sqrt(C), the loss is "
                     "exactly 0 and the gradient exactly 0 (the softmax along H has no freedom)."),
    Case("f32", (2, 3, 4, 5), "official", 1.0, 9500.0, "identical", 307, suffix="identical",
         checks=["loss_and_grad_exactly_zero"],
         description="Student equals teacher: the matrices are bitwise equal, loss and gradient exactly 0."),
    Case("f32", (2, 4, 6, 5), "official", 1.0, 9500.0, "official_underflow", 308, suffix="underflow",
         checks=["official_backward_nan"],
         description="Student column (b0, c1, w2) has logits [0, 200, 0, 0, 0, 0] along H: "
                     "probabilities underflow to exactly 0 in fp32. The official loop's forward "
                     "is finite but its backward is NaN; the recorded outputs are the finite "
                     "log_softmax closed form. Teacher column (b1, c2, w3) is [200, 0, ...] "
                     "(forward only)."),
    # ---------------- paper ----------------
    Case("f32", (2, 21, 9, 7), "paper", 1.0, 9500.0, "normal2_outliers30", 311,
         "Paper variant (softmax over H*W, true KL) at the official C = 21, tau 1, weight 9500.",
         suffix="outliers"),
    Case("f32", (2, 4, 6, 5), "paper", 2.0, 1.0, "normal2", 312,
         "Paper variant, few classes, tau 2, weight 1."),
    Case("bf16", (2, 5, 9, 11), "paper", 1.0, 9500.0, "normal2_outliers30", 313,
         "Paper variant with bf16 inputs and +-30 outliers.", suffix="outliers"),
]


def make_inputs(case):
    """Student and teacher logits in fp32, before rounding to the case's dtype."""
    g = torch.Generator().manual_seed(case.seed)
    shape = case.shape

    def draw():
        x = torch.randn(shape, generator=g) * 2.0
        return add_outliers(x, g, 30.0) if case.init.endswith("_outliers30") else x

    if case.init not in ("normal2", "normal2_outliers30", "identical", "official_underflow"):
        raise ValueError(case.init)
    s = draw()
    t = s.clone() if case.init == "identical" else draw()
    if case.init == "official_underflow":
        h = shape[2]
        col = torch.zeros(h)
        col[1] = 200.0
        s[0, 1, :, 2] = col  # e^-200 is exactly 0 in fp32
        col_t = torch.zeros(h)
        col_t[0] = 200.0
        t[1, 2, :, 3] = col_t  # the teacher too (forward only, finite either way)
    return s, t


# variant -> impl ("loop" or "vectorized") -> the loss
FORMS = {"official": {"loop": icsd_official_loop, "vectorized": icsd_official_vectorized},
         "paper": {"loop": icsd_paper, "vectorized": icsd_paper_vectorized}}


def variant_outputs(variant, s, t, tau, w, impl):
    """(loss, grad.student, sim.student, sim.teacher) of `variant` in form `impl`, by autograd."""
    loss, grad = loss_and_grad(FORMS[variant][impl], s, t, tau, w)
    with torch.no_grad():
        sim_s, sim_t = icsd_similarity_matrices(s, t, tau, variant, impl)
    return loss, grad, sim_s.detach(), sim_t.detach()


def official_outputs(s, t, tau, w, impl):
    return variant_outputs("official", s, t, tau, w, impl)


def paper_outputs(s, t, tau, w, impl):
    return variant_outputs("paper", s, t, tau, w, impl)


OUTPUT_NAMES = ("loss", "grad.student", "sim.student", "sim.teacher")


def max_rel(a_outs, b_outs):
    """Largest per-output relative error (the verifier's metric) and its name."""
    errs = {n: rel_err(a, b) for n, a, b in zip(OUTPUT_NAMES, a_outs, b_outs)}
    worst = max(errs, key=errs.get)
    return errs[worst], worst, errs


STATS = {"official loop~closed fp32": 0.0, "official loop~closed f64": 0.0,
         "paper loop~closed fp32": 0.0, "paper loop~closed f64": 0.0,
         "official analytic~autograd f64": 0.0, "paper analytic~autograd f64": 0.0, "fp32~f64": 0.0}


def note_stat(key, value):
    STATS[key] = max(STATS[key], value)


def run_checks(case, s32, t32, outs32, loop_outs32, metadata):
    loss, grad, sim_s, sim_t = outs32
    for check in case.checks:
        if check == "loss_and_grad_exactly_zero":
            assert loss.item() == 0.0, f"{case.name}: expected loss exactly 0, got {loss.item()!r}"
            assert bool((grad == 0).all()), f"{case.name}: expected an exactly zero gradient"
            assert torch.equal(sim_s, sim_t), f"{case.name}: expected bitwise equal matrices"
        elif check == "h1_matrix":
            b, c, h, w = case.shape
            assert h == 1
            for z in (s32, t32):
                m, _, logp = _official_matrix_closed_form(z, case.tau)
                assert bool((logp == 0).all()), f"{case.name}: log P along H = 1 must be 0"
                # A = 0 and G_ij = (1/B) sum_{b,w} 1 = W: M = -W in every entry.
                assert torch.equal(m, torch.full((c, c), -float(w))), f"{case.name}: M != -W"
            expected = torch.full((c, c), -1.0 / math.sqrt(c))
            assert torch.allclose(sim_s, expected, rtol=1e-6, atol=0), f"{case.name}: rows != -1/sqrt(C)"
        elif check == "official_backward_nan":
            probs = torch.softmax(s32 / case.tau, dim=2)
            assert bool((probs == 0).any()), f"{case.name}: no student probability underflowed"
            l_loss, l_grad, l_sim_s, l_sim_t = loop_outs32
            assert torch.isfinite(l_loss), f"{case.name}: the official forward should be finite"
            assert bool(torch.isnan(l_grad).any()), f"{case.name}: expected a NaN official backward"
            err = abs(l_loss.item() - loss.item()) / max(abs(loss.item()), 1e-30)
            assert err <= OFFICIAL_FORWARD_RTOL, (
                f"{case.name}: official forward {l_loss.item()!r} != recorded loss {loss.item()!r} ({err:.2e})")
            for label, a, b in (("sim.student", l_sim_s, sim_s), ("sim.teacher", l_sim_t, sim_t)):
                e = rel_err(a, b)
                assert e <= LOOP_VS_CLOSED_RTOL_F32, f"{case.name}: official {label} differs ({e:.2e})"
            metadata["official_grad_finite"] = "false"
            metadata["official_loss"] = repr(l_loss.item())
            print(f"    official loop: forward {l_loss.item()!r} (rel diff {err:.1e} to the recorded loss), "
                  f"{int(torch.isnan(l_grad).sum())} NaN gradient entries")
        else:
            raise ValueError(check)


def record_case(case, out_dir):
    (s_stored, t_stored), (s32, t32) = stored_inputs(DTYPES[case.dtype], *make_inputs(case))
    s64, t64 = s32.double(), t32.double()
    tau, w = case.tau, case.loss_weight
    notes = []

    metadata = fixture_metadata("icsd", case.seed, case.description, tau=fmt_param(tau), loss_weight=fmt_param(w),
                                variant=case.variant)

    loop_outs32 = None
    if case.variant == "official":
        loop_outs32 = official_outputs(s32, t32, tau, w, "loop")
        closed32 = official_outputs(s32, t32, tau, w, "vectorized")
        closed64 = official_outputs(s64, t64, tau, w, "vectorized")
        loop64 = official_outputs(s64, t64, tau, w, "loop")
        assert all_finite(*closed32), f"{case.name}: the closed form is not finite"
        if all_finite(*loop_outs32):
            outs32, impl = loop_outs32, REF_OFFICIAL_LOOP
            err, worst, _ = max_rel(closed32, loop_outs32)
            assert err <= LOOP_VS_CLOSED_RTOL_F32, f"{case.name}: loop vs closed form (fp32) {worst} {err:.2e}"
            note_stat("official loop~closed fp32", err)
            notes.append(f"loop~closed fp32 {err:.1e}")
        else:
            outs32, impl = closed32, REF_OFFICIAL_CLOSED
            assert "official_backward_nan" in case.checks, f"{case.name}: unexpected non-finite official loop"
        # Float64: loop vs closed form, and the analytic gradient vs both autograds.
        assert all_finite(*loop64), f"{case.name}: the float64 loop is not finite"
        err, worst, _ = max_rel(closed64, loop64)
        assert err <= LOOP_VS_CLOSED_RTOL_F64, f"{case.name}: loop vs closed form (f64) {worst} {err:.2e}"
        note_stat("official loop~closed f64", err)
        analytic = icsd_official_grad_closed_form(s64, t64, tau, w)
        e_grad = max(rel_err(analytic, closed64[1]), rel_err(analytic, loop64[1]))
        assert e_grad <= GRAD_CLOSED_FORM_RTOL_F64, f"{case.name}: analytic gradient vs autograd {e_grad:.2e}"
        note_stat("official analytic~autograd f64", e_grad)
        notes.append(f"loop~closed f64 {err:.1e}; analytic grad~autograd f64 {e_grad:.1e}")
        ref64 = loop64
    else:
        outs32, impl = paper_outputs(s32, t32, tau, w, "loop"), REF_PAPER
        closed32 = paper_outputs(s32, t32, tau, w, "vectorized")
        ref64 = paper_outputs(s64, t64, tau, w, "loop")
        closed64 = paper_outputs(s64, t64, tau, w, "vectorized")
        err32, worst32, _ = max_rel(closed32, outs32)
        assert err32 <= PAPER_VS_CLOSED_RTOL_F32, f"{case.name}: paper loop vs closed (fp32) {worst32} {err32:.2e}"
        err64, worst64, _ = max_rel(closed64, ref64)
        assert err64 <= LOOP_VS_CLOSED_RTOL_F64, f"{case.name}: paper loop vs closed (f64) {worst64} {err64:.2e}"
        note_stat("paper loop~closed fp32", err32)
        note_stat("paper loop~closed f64", err64)
        analytic = icsd_paper_grad_closed_form(s64, t64, tau, w)
        e_grad = max(rel_err(analytic, ref64[1]), rel_err(analytic, closed64[1]))
        assert e_grad <= GRAD_CLOSED_FORM_RTOL_F64, f"{case.name}: analytic gradient vs autograd {e_grad:.2e}"
        note_stat("paper analytic~autograd f64", e_grad)
        notes.append(f"loop~closed fp32 {err32:.1e}, f64 {err64:.1e}; analytic grad~autograd f64 {e_grad:.1e}")
        # The true KL of a distribution with itself: the diagonal is exactly 0 (before and
        # after normalisation).
        assert bool((torch.diagonal(outs32[2]) == 0).all()) and bool((torch.diagonal(outs32[3]) == 0).all())

    metadata["reference_impl"] = impl
    loss, grad, sim_s, sim_t = outs32
    assert all_finite(loss, grad, sim_s, sim_t), f"{case.name}: recorded reference is not finite"

    # Every recorded fp32 output against float64.
    err, worst, _ = max_rel(outs32, ref64)
    assert err <= FP64_RTOL, f"{case.name}: {worst} differs from float64 by {err:.2e}"
    note_stat("fp32~f64", err)
    notes.append(f"fp32~f64 {err:.1e} ({worst})")

    run_checks(case, s32, t32, outs32, loop_outs32, metadata)

    tensors = {
        "student": s_stored,
        "teacher": t_stored,
        "loss": loss.float().reshape([]).contiguous(),
        "grad.student": grad.float().contiguous(),
        "sim.student": sim_s.float().contiguous(),
        "sim.teacher": sim_t.float().contiguous(),
    }
    return write_case(out_dir, case.name, tensors, metadata, loss, grad, "; ".join([impl, *notes]))


def aicsd_self_check():
    """Print and check ALW and the AICSD objective (no fixture format exists for them)."""
    alphas = {e: alw_alpha(e) for e in (-1, 0, 1, 60, 119, 120, 200)}
    print("alw_alpha(epoch, 120): " + ", ".join(f"{e}: {a:.6g}" for e, a in alphas.items()))
    assert alphas[-1] == 0.0 and alphas[0] == 0.0 and alphas[60] == 0.5 and alphas[120] == 1.0
    assert alphas[200] == 1.0 and alphas[119] == 119 / 120
    assert alw_alpha(25, total_epochs=50) == 0.5

    g = torch.Generator().manual_seed(399)
    s = torch.randn((2, 21, 9, 7), generator=g) * 2.0
    t = torch.randn((2, 21, 9, 7), generator=g) * 2.0
    l_kd = pixel_kd(s, t, 1.0, 10.0, "mean", False)
    official_kd = aicsd_pi_loss_official(s, t, pi_lambda=10.0, temperature=1.0)
    assert abs(l_kd.item() - official_kd.item()) <= 1e-6 * abs(official_kd.item()), "pi_loss != pixel_kd(mean)"
    for variant in ("official", "paper"):
        l_ics = icsd(s, t, 1.0, 9500.0, variant)
        for epoch in (0, 30, 60, 120):
            alpha = alw_alpha(epoch)
            obj = aicsd_objective(s, t, epoch, variant=variant)
            expect = alpha * l_ics + (1 - alpha) * l_kd
            assert abs(obj.item() - expect.item()) <= 1e-6 * max(abs(expect.item()), 1e-30)
            print(f"aicsd_objective[{variant}] epoch {epoch:3d}: alpha {alpha:.4f}  L_ICS {l_ics.item():.6g}  "
                  f"L_KD {l_kd.item():.6g}  total {obj.item():.6g}")
    # The objective's gradient is the same mix of the two gradients.
    sg = s.clone().requires_grad_(True)
    (g_obj,) = torch.autograd.grad(aicsd_objective(sg, t, 30), sg)
    (g_ics,) = torch.autograd.grad(icsd(sg, t, 1.0, 9500.0), sg)
    (g_kd,) = torch.autograd.grad(pixel_kd(sg, t, 1.0, 10.0, "mean", False), sg)
    err = rel_err(g_obj, 0.25 * g_ics + 0.75 * g_kd)
    assert err <= 1e-6, f"AICSD objective gradient mix {err:.2e}"
    print(f"aicsd_objective gradient = alpha*grad(L_ICS) + (1-alpha)*grad(L_KD): rel err {err:.1e}")


def main():
    args = recorder_args(__doc__)
    check_unique_names(CASES)
    paths = [record_case(case, args.out) for case in CASES]
    finish_run(args.out, ("icsd_",), paths, STATS)
    aicsd_self_check()


if __name__ == "__main__":
    main()
