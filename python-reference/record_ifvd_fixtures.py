"""Record the IFVD reference fixtures `tests/fixtures/ifvd_*.safetensors` by running the official code.

IFVD (intra-class feature variation distillation, Wang et al., ECCV 2020) as winycg/CIRKD computes it:
`losses/ifvd.py`, class `CriterionIFV(classes)`, `forward(feat_S, feat_T, target)`, at commit
dab64dbb5e4172141166cf8434a80ce55d9d3aa7 (the file last changed in 60f44255). The CIRKD repository carries
no license file, so its source is not copied here: this script reads it at record time from a CIRKD git
directory (`--cirkd-git`, bare or not) or a copy of the file (`--cirkd-file`), checks that it is exactly
the pinned blob, and runs it. The official module has no loss weight (CIRKD's `train_kd.py` multiplies its
output by `--lambda-ifv`, 20 in the scripts) and takes the class count in its constructor; nothing else is
hard-coded in it.

Each case becomes one file in the crate's fixture format (`docs/fixtures.md`; `loss` = `ifvd`,
`format_version` = "1", parameters `num_classes` and `loss_weight`):
  * inputs `student` [N,Cs,H,W] and `teacher` [N,Ct,H,W] in the case's dtype, `labels` [N,Hl,Wl] as an
    integer tensor in the case's label dtype (I64, I32 or U8), stored as it is;
  * F32 outputs `loss` (shape []) = loss_weight * CriterionIFV(num_classes)(student, teacher, labels) and
    `grad.student` (autograd), both computed by PyTorch in fp32 from the upcast stored inputs.

Before writing a file the recorder checks, and refuses to write on failure:
  * that the official code's nearest-upsampled labels equal `labels[:, rows][:, :, cols]` with the crate's
    index rule (`floor(dst * f32(in / out))`, clamped; the identity and `dst / 2` special cases);
  * the official code against an independent vectorised form (`ifvd_closed_form`: scatter-add prototypes,
    one gather, `cosine_similarity`) in fp32 and in float64 (loss and gradient by autograd);
  * every recorded fp32 output against the official code in float64;
  * per-case assertions (exact zeros for identical inputs, the f32-rounded label index, a class present in
    one image only, an absent class, a zero feature vector).
Output is deterministic (fixed seeds, sorted metadata).

Usage (from the repository root):
    .venv-torch/bin/python python-reference/record_ifvd_fixtures.py --cirkd-git PATH/TO/CIRKD/.git \
        [--out tests/fixtures]
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ifvd_reference import cos_map, ifvd_closed_form, nearest_index, resized_labels  # noqa: E402,F401
from record_common import CIRKD_COMMIT, DTYPES, all_finite, fmt_param, fmt_short, rel_err  # noqa: E402
from record_common import add_cirkd_source, check_official_vs_closed, check_unique_names, finish_run  # noqa: E402
from record_common import fixture_metadata, load_cirkd_class, loss_and_grad, recorder_args, write_case  # noqa: E402

CIRKD_PATH = "losses/ifvd.py"
CIRKD_BLOB = "6efa31a32d4b09414207c8a728964c7eb6aad165"  # git blob id of CIRKD_PATH at CIRKD_COMMIT

LABEL_DTYPES = {"i64": torch.int64, "i32": torch.int32, "u8": torch.uint8}

# Tolerances of the recorder's own consistency checks (not the crate's verifier tolerances).
OFFICIAL_VS_CLOSED_RTOL_F32 = 1e-5
OFFICIAL_VS_CLOSED_RTOL_F64 = 1e-12


def load_official(args):
    """The official `CriterionIFV` class, from the pinned blob only."""
    return load_cirkd_class(args, CIRKD_PATH, CIRKD_BLOB, "CriterionIFV")


# --------------------------------------------------------------------------------------------
# The crate's reading, vectorised (an independent check of the official loop)
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    dtype: str  # key of DTYPES
    shape: tuple  # student (N, Cs, H, W)
    ct: int
    label_shape: tuple  # (Hl, Wl)
    label_dtype: str  # key of LABEL_DTYPES
    num_classes: int
    loss_weight: float
    ignore: int  # the ignore value drawn into the labels (255 or -1)
    seed: int
    description: str
    init: str = "normal"  # "normal", "relu" (ReLU features), "identical" (teacher = student)
    label_top: int = 0  # labels are drawn from [0, label_top); 0 means num_classes
    suffix: str = ""
    checks: list = field(default_factory=list)

    @property
    def name(self):
        shape = "x".join(str(d) for d in self.shape)
        parts = ["ifvd", self.dtype, shape, f"ct{self.ct}", "l" + "x".join(map(str, self.label_shape)),
                 self.label_dtype, f"k{self.num_classes}", f"w{fmt_short(self.loss_weight)}"]
        if self.suffix:
            parts.append(self.suffix)
        return "_".join(parts)


CASES = [
    Case("f32", (2, 8, 9, 11), 12, (19, 23), "i64", 5, 1.0, 255, 401,
         "Cs 8 != Ct 12; labels 19x23 resized to 9x11 (non-integer ratio); ignore 255; class 4 absent; "
         "class 3 in image 1 only.",
         checks=["absent_class_4", "class_3_in_image_1_only"]),
    Case("f32", (1, 16, 7, 9), 16, (7, 9), "u8", 19, 20.0, 255, 402,
         "Labels at the feature resolution (U8, 255 ignored), Cityscapes' 19 classes (most absent), "
         "CIRKD's lambda_ifv 20."),
    Case("f32", (2, 5, 8, 6), 7, (4, 3), "i32", 3, 1.0, -1, 403,
         "Labels 4x3 upsampled 2x (the dst/2 path), I32, ignore -1 (CIRKD's loaders' value)."),
    Case("f32", (2, 3, 4, 22), 5, (5, 26), "i32", 4, 0.5, -1, 404,
         "Label width 26 -> 22: f32 rounding of 26/22 maps column 11 to 12 where the exact floor is 13.",
         checks=["f32_index_26_22"]),
    Case("f32", (2, 6, 7, 10), 4, (3, 4), "i64", 6, 2.0, 255, 405,
         "Labels 3x4 upsampled to 7x10 (non-integer ratios), I64, ignore 255."),
    Case("f32", (2, 6, 5, 7), 6, (10, 14), "u8", 4, 1.0, 255, 406, init="identical", suffix="identical",
         checks=["loss_and_grad_exactly_zero"],
         description="Teacher equals student (Cs = Ct): the cosine maps are bitwise equal, loss and gradient 0."),
    Case("f32", (2, 6, 5, 7), 9, (5, 7), "i64", 4, 1.0, 255, 407, init="relu", suffix="relu_zero",
         checks=["zero_feature"],
         description="ReLU features with one all-zero student pixel of a class: cos is 0 there and PyTorch's "
                     "gradient is prototype / (1e-8 |prototype|) scaled; image 1 has only ignored pixels."),
    Case("f16", (2, 6, 9, 11), 10, (17, 21), "u8", 5, 20.0, 255, 408,
         "f16 inputs, U8 labels 17x21 -> 9x11; reference from the upcast stored values."),
    Case("bf16", (2, 6, 9, 11), 10, (17, 21), "i64", 5, 20.0, -1, 409,
         "bf16 inputs, I64 labels 17x21 -> 9x11 with ignore -1; reference from the upcast stored values."),
    Case("f16", (1, 12, 6, 5), 8, (12, 10), "i32", 3, 1.0, 255, 410, label_top=6,
         description="f16 inputs, labels 12x10 -> 6x5 (exact 2x down), I32, labels 3..5 outside num_classes 3."),
]


def make_inputs(case):
    """Student and teacher features in fp32 (before rounding to the case's dtype) and the labels."""
    g = torch.Generator().manual_seed(case.seed)
    n, cs, h, w = case.shape
    s = torch.randn((n, cs, h, w), generator=g)
    t = torch.randn((n, case.ct, h, w), generator=g)
    if case.init == "identical":
        t = s.clone()
    elif case.init == "relu":
        s, t = s.relu() + 0.0, t.relu() + 0.0
    hl, wl = case.label_shape
    labels = torch.randint(0, case.label_top or case.num_classes, (n, hl, wl), generator=g)
    ignore = torch.rand((n, hl, wl), generator=g) < 1 / 6
    labels[ignore] = case.ignore
    if "absent_class_4" in case.checks:
        labels[labels == 4] = 0
    if "class_3_in_image_1_only" in case.checks:
        labels[0][labels[0] == 3] = 1
    if case.init == "relu":
        labels[1] = case.ignore  # image 1: every pixel ignored
    return s, t, labels


def zero_feature_pixel(case, s, labels):
    """Zero one student pixel whose resized label is a class (`relu_zero`); returns (h, w)."""
    classes = resized_labels(labels, case.shape[2], case.shape[3])
    hits = ((classes[0] >= 0) & (classes[0] < case.num_classes)).nonzero()
    h, w = (int(v) for v in hits[len(hits) // 2])
    s[0, :, h, w] = 0.0
    return h, w


def official_outputs(criterion_cls, s, t, labels, case):
    return loss_and_grad(lambda x: case.loss_weight * criterion_cls(case.num_classes)(x, t, labels), s)


def closed_outputs(s, t, labels, case):
    return loss_and_grad(ifvd_closed_form, s, t, labels, case.num_classes, case.loss_weight)


STATS = {"official~closed fp32": 0.0, "official~closed f64": 0.0, "fp32~f64": 0.0}


def max_rel(a, b):
    return max(rel_err(x, y) for x, y in zip(a, b))


def check_labels(case, s32, labels):
    """The official upsampling against the crate's index rule."""
    n, c, h, w = s32.shape
    up = torch.nn.Upsample((h, w), mode="nearest")(labels.unsqueeze(1).float()).squeeze(1)
    ours = resized_labels(labels, h, w).float()
    assert torch.equal(up, ours), f"{case.name}: official nearest upsampling != the crate's index rule"
    return resized_labels(labels, h, w)


def run_checks(case, labels, classes, loss, grad, zero_pix):
    k = case.num_classes
    valid = (classes >= 0) & (classes < k)
    assert bool((~valid).any()), f"{case.name}: no ignored pixel after resizing"
    for check in case.checks:
        if check == "loss_and_grad_exactly_zero":
            assert loss.item() == 0.0 and bool((grad == 0).all()), f"{case.name}: expected exact zeros"
        elif check == "absent_class_4":
            assert not bool((classes == 4).any()), f"{case.name}: class 4 present"
        elif check == "class_3_in_image_1_only":
            assert not bool((classes[0] == 3).any()) and bool((classes[1] == 3).any()), case.name
        elif check == "f32_index_26_22":
            idx = nearest_index(26, 22)
            exact = torch.clamp(torch.arange(22) * 26 // 22, max=25)
            assert int(idx[11]) == 12 and int(exact[11]) == 13, f"{case.name}: index rule {idx.tolist()}"
        elif check == "zero_feature":
            h, w = zero_pix
            g = grad[0, :, h, w].abs().max().item()
            rest = grad.abs().max().item()
            assert g == rest and g > 0, f"{case.name}: the zero pixel should carry the largest gradient"
        else:
            raise ValueError(check)


def record_case(criterion_cls, case, out_dir):
    dtype = DTYPES[case.dtype]
    s_raw, t_raw, labels = make_inputs(case)
    s_stored = s_raw.to(dtype).contiguous()
    t_stored = t_raw.to(dtype).contiguous()
    zero_pix = zero_feature_pixel(case, s_stored, labels) if "zero_feature" in case.checks else None
    labels = labels.to(LABEL_DTYPES[case.label_dtype]).contiguous()
    s32, t32 = s_stored.float(), t_stored.float()
    s64, t64 = s32.double(), t32.double()
    classes = check_labels(case, s32, labels)

    outs32 = official_outputs(criterion_cls, s32, t32, labels, case)
    outs64 = official_outputs(criterion_cls, s64, t64, labels, case)
    closed32 = closed_outputs(s32, t32, labels, case)
    closed64 = closed_outputs(s64, t64, labels, case)
    assert all_finite(*outs32), f"{case.name}: the official output is not finite"
    errors = max_rel(closed32, outs32), max_rel(closed64, outs64), max_rel(outs32, outs64)
    note = check_official_vs_closed(case.name, errors, OFFICIAL_VS_CLOSED_RTOL_F32, OFFICIAL_VS_CLOSED_RTOL_F64, STATS)
    loss, grad = outs32
    run_checks(case, labels, classes, loss, grad, zero_pix)

    metadata = fixture_metadata("ifvd", case.seed, case.description, num_classes=str(case.num_classes),
                                loss_weight=fmt_param(case.loss_weight), reference_impl="cirkd.CriterionIFV",
                                official_source=f"winycg/CIRKD {CIRKD_PATH} @ {CIRKD_COMMIT}")
    tensors = {
        "student": s_stored,
        "teacher": t_stored,
        "labels": labels,
        "loss": loss.float().reshape([]).contiguous(),
        "grad.student": grad.float().contiguous(),
    }
    return write_case(out_dir, case.name, tensors, metadata, loss, grad, note)


def main():
    args = recorder_args(__doc__, lambda parser: add_cirkd_source(
        parser, "--cirkd-file", "a copy of CIRKD's losses/ifvd.py at the pinned commit"))
    criterion_cls = load_official(args)
    check_unique_names(CASES)
    paths = [record_case(criterion_cls, case, args.out) for case in CASES]
    finish_run(args.out, ("ifvd_",), paths, STATS)


if __name__ == "__main__":
    main()
