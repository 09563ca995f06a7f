"""Record the CWD and pixel-KD reference fixtures in `tests/fixtures/`.

Each case becomes one `*.safetensors` file in the format of `docs/fixtures.md`:
inputs `student`, `teacher` in the case's dtype (contiguous NCHW), reference outputs `loss`
(shape [], F32), `grad.student` (F32) and optionally `grad.teacher` (F32), computed by PyTorch
in fp32 from the stored inputs after upcasting them (so a f16/bf16 case checks fp32
accumulation, not low-precision rounding).

Besides writing files, the recorder cross-checks the official forms against each other and
against float64, so that a fixture can only be written if the reference is trustworthy:
  * CWD: TorchDistiller `CriterionCWD` vs mmrazor `ChannelWiseDivergence` must agree (1e-5
    relative, loss and gradient) wherever TorchDistiller's result is finite; where it is not,
    the mmrazor value is recorded and TorchDistiller's is kept in the metadata.
  * pixel KD: TorchDistiller `CriterionKD` must equal `pixel_kd(reduction='mean',
    scale_tau2=False, loss_weight=1)` on every case's inputs.
  * every recorded fp32 output is compared with the same computation in float64.

Usage (from the repository root):
    .venv-torch/bin/python python-reference/record_fixtures.py [--out tests/fixtures]
"""

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

# No __pycache__ next to the sources: the repo .gitignore does not cover this folder.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_reference import cwd_mmrazor, cwd_teacher_grad_closed_form, cwd_torchdistiller, pixel_kd  # noqa: E402
from kd_reference import pixel_kd_torchdistiller_official  # noqa: E402
from record_common import DTYPES, FP64_RTOL, all_finite, fmt_param, fmt_short, rel_err  # noqa: E402
from record_common import add_outliers, check_unique_names, fixture_metadata, recorder_args, warn_stale  # noqa: E402
from record_common import stored_inputs, write_fixture  # noqa: E402

# `KLDivLoss(reduction='mean')` warns that it is not the mathematical KL mean; dividing by
# numel is exactly the official behaviour we are recording, so the warning is noise here.
warnings.filterwarnings("ignore", message=".*reduction: 'mean' divides the total loss.*")

# Tolerance of the recorder's own consistency check (not the crate's verifier tolerances).
FORM_AGREEMENT_RTOL = 1e-5  # TorchDistiller vs mmrazor CWD, as required by the task

REF_CWD_TORCHDISTILLER = "torchdistiller.CriterionCWD"
REF_CWD_MMRAZOR = "mmrazor.ChannelWiseDivergence"
REF_PIXEL_KD = "pixel_kd"
REF_PIXEL_KD_TORCHDISTILLER = "torchdistiller.CriterionKD"


@dataclass
class Case:
    loss: str  # "cwd" or "pixel_kd"
    dtype: str  # key of DTYPES
    shape: tuple
    params: dict  # tau, loss_weight (+ reduction, scale_tau2 for pixel_kd)
    init: str  # input distribution, see make_inputs
    seed: int
    impl: str  # which official form produces the recorded outputs
    description: str
    suffix: str = ""
    teacher_grad: bool = False
    checks: list = field(default_factory=list)  # extra named assertions, see run_extra_checks

    @property
    def name(self):
        shape = "x".join(str(d) for d in self.shape)
        tau = f"tau{fmt_short(self.params['tau'])}"
        w = f"w{fmt_short(self.params['loss_weight'])}"
        parts = [self.loss, self.dtype, shape, tau]
        if self.loss == "pixel_kd":
            parts.append(self.params["reduction"])
            if self.params["scale_tau2"]:
                parts.append("tau2")
        parts.append(w)
        if self.suffix:
            parts.append(self.suffix)
        return "_".join(parts)


def cwd(dtype, shape, tau, w, init, seed, impl, description, suffix="", **kw):
    return Case("cwd", dtype, shape, {"tau": tau, "loss_weight": w}, init, seed, impl, description, suffix, **kw)


def pkd(dtype, shape, tau, w, reduction, scale_tau2, init, seed, impl, description, suffix="", **kw):
    params = {"tau": tau, "loss_weight": w, "reduction": reduction, "scale_tau2": scale_tau2}
    return Case("pixel_kd", dtype, shape, params, init, seed, impl, description, suffix, **kw)


TD, MM = REF_CWD_TORCHDISTILLER, REF_CWD_MMRAZOR
CASES = [
    # ---------------- CWD ----------------
    cwd("f32", (1, 3, 5, 7), 1.0, 1.0, "normal", 101, TD,
        "Small odd shape, unit temperature and weight, moderate logits."),
    cwd("f32", (1, 3, 5, 7), 4.0, 3.0, "normal3", 102, MM,
        "Paper setting (tau 4, loss_weight 3) on a small odd shape."),
    cwd("f32", (2, 5, 9, 11), 4.0, 3.0, "uniform50", 103, TD, suffix="spread50",
        description="Paper setting with logits uniform in [-50, 50]."),
    cwd("f32", (2, 5, 9, 11), 1.0, 1.0, "uniform50", 104, MM, suffix="spread50",
        description="Logits uniform in [-50, 50] at tau 1: in-row gaps near 100 push student "
                    "probabilities into fp32 denormals, where TorchDistiller's log(softmax) "
                    "gradient overflows; the log_softmax form is the reference."),
    cwd("f32", (3, 4, 17, 13), 1.0, 3.0, "outliers", 105, TD, suffix="outliers",
        description="normal(0,1) logits with a few injected +-40 outliers per tensor."),
    cwd("f32", (3, 4, 17, 13), 4.0, 1.0, "normal15clip50", 106, MM, suffix="clip50",
        description="Logits normal*15 clipped to [-50, 50], tau 4."),
    cwd("f32", (2, 5, 9, 11), 4.0, 3.0, "normal5", 107, MM, suffix="teachergrad", teacher_grad=True,
        description="Paper setting with the optional teacher gradient (teacher requires grad)."),
    cwd("f16", (1, 3, 5, 7), 4.0, 3.0, "normal5", 108, TD,
        description="f16 inputs, paper setting; reference from the upcast stored values."),
    cwd("f16", (3, 4, 17, 13), 1.0, 1.0, "outliers", 109, TD, suffix="outliers",
        description="f16 inputs with +-40 outliers among normal(0,1) logits, tau 1."),
    cwd("f16", (2, 5, 9, 11), 4.0, 3.0, "uniform50", 110, MM, suffix="spread50",
        description="f16 inputs uniform in [-50, 50], paper setting."),
    cwd("bf16", (1, 3, 5, 7), 1.0, 1.0, "normal", 111, TD,
        description="bf16 inputs, unit temperature and weight."),
    cwd("bf16", (2, 5, 9, 11), 4.0, 3.0, "uniform50", 112, TD, suffix="spread50",
        description="bf16 inputs uniform in [-50, 50], paper setting."),
    cwd("bf16", (3, 4, 17, 13), 1.0, 3.0, "normal15clip50", 113, MM, suffix="clip50",
        description="bf16 inputs normal*15 clipped to [-50, 50] at tau 1, weight 3."),
    cwd("f32", (1, 2, 1, 4), 1.0, 1.0, "cwd_underflow", 114, MM, suffix="underflow",
        checks=["cwd_torchdistiller_nan", "student_prob_underflows"],
        description="Row 0 student [200,0,0,0] vs teacher [0,200,0,0]: a student probability "
                    "is exactly 0 in fp32, TorchDistiller gives NaN, log_softmax gives a finite loss."),
    cwd("f32", (1, 1, 1, 1), 4.0, 3.0, "normal", 115, MM, suffix="single",
        checks=["loss_and_grad_exactly_zero"],
        description="One-element rows: every softmax is 1, so the loss and gradient are exactly 0."),
    # ---------------- pixel KD ----------------
    pkd("f32", (2, 19, 9, 11), 1.0, 1.0, "mean", False, "normal3", 201, REF_PIXEL_KD_TORCHDISTILLER,
        description="TorchDistiller CriterionKD as configured (19 classes, tau 1, mean over numel)."),
    pkd("f32", (2, 19, 9, 11), 4.0, 1.0, "batchmean", True, "normal3", 202, REF_PIXEL_KD,
        description="Hinton-style KD: tau 4, batchmean, tau^2 scaling."),
    pkd("f32", (3, 5, 7, 9), 1.0, 1.0, "sum", False, "normal", 203, REF_PIXEL_KD,
        description="Odd class count, sum reduction."),
    pkd("f32", (3, 5, 7, 9), 4.0, 3.0, "pixelmean", True, "normal3", 204, REF_PIXEL_KD,
        description="Odd class count, per-pixel mean with tau^2 scaling and weight 3."),
    pkd("f32", (2, 7, 5, 13), 1.0, 10.0, "mean", False, "uniform50", 205, REF_PIXEL_KD, suffix="spread50",
        description="AICSD pi_loss setting (mean, tau 1, weight 10) with logits uniform in [-50, 50]."),
    pkd("f32", (1, 19, 13, 7), 4.0, 1.0, "sum", True, "uniform50", 206, REF_PIXEL_KD, suffix="spread50",
        description="19 classes, logits uniform in [-50, 50], sum with tau^2 scaling."),
    pkd("f32", (2, 5, 9, 11), 1.0, 1.0, "batchmean", False, "normal3", 207, REF_PIXEL_KD,
        description="batchmean without tau^2 scaling."),
    pkd("f32", (2, 7, 9, 5), 4.0, 1.0, "mean", True, "normal15clip50", 208, REF_PIXEL_KD, suffix="clip50",
        description="mean with tau^2 scaling, logits normal*15 clipped to [-50, 50]."),
    pkd("f32", (1, 19, 5, 3), 1.0, 2.0, "pixelmean", False, "normal3", 209, REF_PIXEL_KD,
        description="pixelmean without tau^2 scaling, weight 2."),
    pkd("f32", (2, 5, 7, 3), 4.0, 1.0, "sum", False, "normal3", 210, REF_PIXEL_KD,
        description="tau 4 without tau^2 scaling (as CriterionKD would do with temperature 4)."),
    pkd("f16", (2, 19, 9, 11), 1.0, 10.0, "mean", False, "normal3", 211, REF_PIXEL_KD,
        description="f16 inputs, AICSD pi_loss setting."),
    pkd("f16", (3, 7, 5, 9), 4.0, 1.0, "batchmean", True, "uniform50", 212, REF_PIXEL_KD, suffix="spread50",
        description="f16 inputs uniform in [-50, 50], batchmean with tau^2."),
    pkd("bf16", (2, 19, 9, 11), 4.0, 1.0, "pixelmean", True, "normal3", 213, REF_PIXEL_KD,
        description="bf16 inputs, pixelmean with tau^2."),
    pkd("bf16", (3, 5, 7, 9), 1.0, 1.0, "sum", False, "uniform50", 214, REF_PIXEL_KD, suffix="spread50",
        description="bf16 inputs uniform in [-50, 50], sum."),
    pkd("f32", (1, 5, 3, 3), 1.0, 1.0, "mean", False, "pixel_underflow", 215, REF_PIXEL_KD, suffix="underflow",
        checks=["student_prob_underflows"],
        description="One pixel has student [200,0,0,0,0] vs teacher [0,200,0,0,0]: a student "
                    "probability is exactly 0 in fp32; log_softmax keeps the loss finite."),
    pkd("f32", (1, 1, 1, 1), 1.0, 1.0, "mean", False, "normal", 216, REF_PIXEL_KD, suffix="single",
        checks=["loss_and_grad_exactly_zero"],
        description="A single class: every softmax is 1, so the loss and gradient are exactly 0."),
]


def make_inputs(case):
    """Student and teacher logits in fp32, before rounding to the case's dtype."""
    g = torch.Generator().manual_seed(case.seed)
    shape = case.shape

    def draw():
        if case.init in ("normal", "cwd_underflow", "pixel_underflow"):
            return torch.randn(shape, generator=g)
        if case.init.startswith("normal") and case.init[6:].isdigit():
            return torch.randn(shape, generator=g) * float(case.init[6:])
        if case.init == "uniform50":
            return torch.rand(shape, generator=g) * 100.0 - 50.0
        if case.init == "normal15clip50":
            return (torch.randn(shape, generator=g) * 15.0).clamp(-50.0, 50.0)
        if case.init == "outliers":
            return add_outliers(torch.randn(shape, generator=g), g, 40.0)
        raise ValueError(case.init)

    s, t = draw(), draw()
    if case.init == "cwd_underflow":
        # Row (0,0): e^-200 underflows to exactly 0 in fp32 where the teacher's mass sits.
        s[0, 0].view(-1).copy_(torch.tensor([200.0, 0.0, 0.0, 0.0]))
        t[0, 0].view(-1).copy_(torch.tensor([0.0, 200.0, 0.0, 0.0]))
    if case.init == "pixel_underflow":
        one_hot_s = torch.zeros(shape[1])
        one_hot_t = torch.zeros(shape[1])
        one_hot_s[0], one_hot_t[1] = 200.0, 200.0
        s[0, :, 1, 1] = one_hot_s
        t[0, :, 1, 1] = one_hot_t
    return s, t


def reference_fn(case, impl):
    p = case.params
    if impl == REF_CWD_TORCHDISTILLER:
        return lambda s, t: cwd_torchdistiller(s, t, p["tau"], p["loss_weight"])
    if impl == REF_CWD_MMRAZOR:
        return lambda s, t: cwd_mmrazor(s, t, p["tau"], p["loss_weight"])
    if impl == REF_PIXEL_KD:
        return lambda s, t: pixel_kd(s, t, p["tau"], p["loss_weight"], p["reduction"], p["scale_tau2"])
    if impl == REF_PIXEL_KD_TORCHDISTILLER:
        # The official module has no weight or tau^2 knob; only its configured setting qualifies.
        assert p["loss_weight"] == 1.0 and p["reduction"] == "mean" and not p["scale_tau2"]
        return lambda s, t: pixel_kd_torchdistiller_official(s, t, temperature=p["tau"])
    raise ValueError(impl)


def evaluate(fn, s_in, t_in, dtype, teacher_grad):
    """Loss and gradients by autograd on fresh leaves of `dtype` holding the given values."""
    s = s_in.detach().to(dtype).requires_grad_(True)
    t = t_in.detach().to(dtype).requires_grad_(teacher_grad)
    loss = fn(s, t)
    loss.backward()
    return loss.detach(), s.grad, (t.grad if teacher_grad else None)


def run_extra_checks(case, s32, t32, loss, metadata):
    p = case.params
    for check in case.checks:
        if check == "cwd_torchdistiller_nan":
            td = cwd_torchdistiller(s32, t32, p["tau"], p["loss_weight"])
            assert torch.isnan(td), f"{case.name}: expected TorchDistiller NaN, got {td.item()}"
            assert torch.isfinite(loss), f"{case.name}: reference loss must stay finite"
            metadata["torchdistiller_loss"] = repr(td.item())
        elif check == "student_prob_underflows":
            dim = -1 if case.loss == "cwd" else 1
            rows = s32.reshape(s32.shape[0] * s32.shape[1], -1) if case.loss == "cwd" else s32
            probs = torch.softmax(rows / p["tau"], dim=dim)
            assert bool((probs == 0).any()), f"{case.name}: no student probability underflowed"
            assert torch.isfinite(loss), f"{case.name}: reference loss must stay finite"
        elif check == "loss_and_grad_exactly_zero":
            pass  # asserted after the gradient is known, in record_case
        else:
            raise ValueError(check)


def record_case(case, out_dir):
    (s_stored, t_stored), (s32, t32) = stored_inputs(DTYPES[case.dtype], *make_inputs(case))

    fn = reference_fn(case, case.impl)
    loss, grad_s, grad_t = evaluate(fn, s32, t32, torch.float32, case.teacher_grad)
    metadata = fixture_metadata(case.loss, case.seed, case.description, tau=fmt_param(case.params["tau"]),
                                loss_weight=fmt_param(case.params["loss_weight"]), reference_impl=case.impl)
    if case.loss == "pixel_kd":
        metadata["reduction"] = case.params["reduction"]
        metadata["scale_tau2"] = "true" if case.params["scale_tau2"] else "false"

    assert all_finite(loss, grad_s, grad_t), f"{case.name}: recorded reference is not finite"
    notes = []

    # Float64 recomputation with the canonical (finite) form of the same loss.
    canonical = REF_CWD_MMRAZOR if case.loss == "cwd" else REF_PIXEL_KD
    loss64, grad_s64, grad_t64 = evaluate(reference_fn(case, canonical), s32, t32, torch.float64, case.teacher_grad)
    for label, a, b in (("loss", loss, loss64), ("grad.student", grad_s, grad_s64), ("grad.teacher", grad_t, grad_t64)):
        if a is not None:
            err = rel_err(a, b)
            assert err <= FP64_RTOL, f"{case.name}: {label} differs from float64 by {err:.2e}"
            notes.append(f"fp64 {label} {err:.1e}")

    if case.loss == "cwd":
        # The two official forms must agree wherever TorchDistiller's is finite (spec 1.5).
        other = REF_CWD_MMRAZOR if case.impl == REF_CWD_TORCHDISTILLER else REF_CWD_TORCHDISTILLER
        o_loss, o_grad, _ = evaluate(reference_fn(case, other), s32, t32, torch.float32, False)
        td_loss, td_grad = (loss, grad_s) if case.impl == REF_CWD_TORCHDISTILLER else (o_loss, o_grad)
        if all_finite(td_loss, td_grad):
            e_loss, e_grad = rel_err(o_loss, loss), rel_err(o_grad, grad_s)
            assert e_loss <= FORM_AGREEMENT_RTOL and e_grad <= FORM_AGREEMENT_RTOL, (
                f"{case.name}: TorchDistiller and mmrazor CWD disagree (loss {e_loss:.2e}, grad {e_grad:.2e})")
            notes.append(f"td~mmrazor loss {e_loss:.1e} grad {e_grad:.1e}")
        else:
            # Document the quirk in the file itself: what the official code would have returned.
            metadata["torchdistiller_loss"] = repr(td_loss.item())
            metadata["torchdistiller_grad_finite"] = "true" if all_finite(td_grad) else "false"
            notes.append(f"TorchDistiller form: loss {td_loss.item()!r}, grad finite {all_finite(td_grad)}")
        if case.teacher_grad:
            closed = cwd_teacher_grad_closed_form(s32.double(), t32.double(), case.params["tau"],
                                                  case.params["loss_weight"])
            err = rel_err(grad_t, closed)
            assert err <= FP64_RTOL, f"{case.name}: grad.teacher differs from spec 1.4 by {err:.2e}"
            notes.append(f"grad.teacher~closed form {err:.1e}")
    else:
        # The literal official CriterionKD must equal our `mean` reduction on these inputs.
        official = pixel_kd_torchdistiller_official(s32, t32, temperature=case.params["tau"])
        ours = pixel_kd(s32, t32, case.params["tau"], 1.0, "mean", False)
        assert torch.isfinite(official), f"{case.name}: CriterionKD not finite"
        err = abs(official.item() - ours.item()) / max(abs(ours.item()), 1e-30)
        assert err <= 1e-6, f"{case.name}: CriterionKD != pixel_kd(mean) ({err:.2e})"
        notes.append(f"CriterionKD~pixel_kd(mean) {err:.1e}")
        # PyTorch warns that KLDivLoss 'mean' "will be changed to behave the same as
        # 'batchmean'"; the official numbers divide by numel, so refuse to record if it did.
        per_numel = pixel_kd(s32, t32, case.params["tau"], 1.0, "sum", False) / s32.numel()
        assert abs(ours.item() - per_numel.item()) <= 1e-6 * max(abs(per_numel.item()), 1e-30), (
            f"{case.name}: KLDivLoss 'mean' no longer divides by numel in this torch version")

    run_extra_checks(case, s32, t32, loss, metadata)
    if "loss_and_grad_exactly_zero" in case.checks:
        assert loss.item() == 0.0 and bool((grad_s == 0).all()), f"{case.name}: expected exact zeros"

    tensors = {
        "student": s_stored,
        "teacher": t_stored,
        "loss": loss.float().reshape([]).contiguous(),
        "grad.student": grad_s.float().contiguous(),
    }
    if grad_t is not None:
        tensors["grad.teacher"] = grad_t.float().contiguous()
    path = out_dir / f"{case.name}.safetensors"
    write_fixture(path, tensors, metadata)

    max_grad = grad_s.abs().max().item()
    extra = f"  max|grad.teacher| {grad_t.abs().max().item():.6e}" if grad_t is not None else ""
    print(f"{path.name}: loss {loss.item():.9g}  max|grad.student| {max_grad:.6e}{extra}")
    print(f"    [{case.impl}; {'; '.join(notes)}]")
    return path


def main():
    args = recorder_args(__doc__)
    check_unique_names(CASES)
    written = {record_case(case, args.out).name for case in CASES}
    warn_stale(args.out, ("cwd_", "pixel_kd_"), written)
    total = sum(p.stat().st_size for p in args.out.glob("*.safetensors"))
    print(f"{len(written)} files written to {args.out} ({total / 1024:.1f} KiB of fixtures in the folder)")


if __name__ == "__main__":
    main()
