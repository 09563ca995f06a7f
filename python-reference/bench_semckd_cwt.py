"""Benchmark the PyTorch baselines for SemCKD and CWT (eager and torch.compile).

Times forward + backward, in the same way and with the same JSON fields as `bench_torch.py`
(`loss`, `shape`, `dtype`, `impl`, `median_ms`, `iters`, `device`, `torch`, `date`, plus
`gbps` / `copy_gbps` where meaningful), for:

SemCKD (`semckd_reference.py`, the official DefangChen/SemCKD code), two scopes:
  * `loss`: what `kd-kernels` computes: the official `SelfA` without the regressors (batch Grams,
    query/key MLPs, attention, teacher pooling) + `SemCKDLoss`, with the regressor outputs given
    as inputs; backward into the student features, the regressor outputs and the MLP parameters.
  * `full`: the literal official `SelfA` with its `AAEmbed` regressors (train-mode BN) +
    `SemCKDLoss`; backward into the student features and every parameter. This is what a
    training step pays in total; the difference to `loss` is cuDNN/cuBLAS work the crate
    leaves to the caller.
  Layouts (`feat[1:-1]` of the official models):
  * `cifar`: resnet32x4 -> resnet8x4, B = 64 (the official CIFAR-100 batch). Both networks are
    `ResNet(depth, [32, 64, 128, 256], 'basicblock')` (models/resnet.py lines 233-242), so their
    three stage outputs are 64x32x32, 128x16x16, 256x8x8 on both sides (not 128/256/512:
    the "x4" widens the CIFAR ResNet's 16/32/64 by 4, giving 64/128/256 channels). beta 400.
  * `imagenet`: ResNet-34 -> ResNet-18 (torchvision layouts, models/resnetv2.py lines 230-251),
    B = 32 (the README's 256 over 8 GPUs: `opt.batch_size` is per GPU, train_student.py
    line 219): 64x56x56, 128x28x28, 256x14x14, 512x7x7 on both sides, 4x4 pairs. beta 50.
  `shape` is the list of student layer shapes; `teacher_shape`, `layout` and `scope` are added.

CWT (`cwt_reference.py`, `normalize='batch'`), student -> hidden -> teacher channels:
  * `seg`: 8x512x64x64 -> 2048 -> 8x2048x64x64 (PSPNet R101 -> R18 last stage, 512x512 crops),
  * `fpn`: 2x256x100x152 -> 256 -> 256 (one FPN level of an 800x1216 detection input),
  * `cls`: 64x512x7x7 -> 512 -> 512 (ResNet-34 -> ResNet-18 last stage);
  `shape` is the student shape; `teacher_shape` and `hidden` are added.

Dtypes: f32 and bf16 features (bf16 is upcast inside the loss with `.float()`, as the crate
upcasts); parameters stay f32, as the crate keeps them. `gbps` counts minimal traffic only
(inputs read once, the input gradients written once, in the input dtype).

    .venv-torch/bin/python python-reference/bench_semckd_cwt.py                # CUDA if present
    .venv-torch/bin/python python-reference/bench_semckd_cwt.py --device cpu --quick  # smoke test
"""

import sys
from pathlib import Path

import torch

# No __pycache__ next to the sources: the repo .gitignore does not cover this folder.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
# The same clocks, iteration counts and JSON lines as every bench: CUDA events per call on the GPU,
# perf_counter on the CPU.
from bench_common import (  # noqa: E402
    DTYPES, CompileGuard, JsonLines, bench_device, bench_parser, iteration_counts, time_copy, time_impls)
import cwt_reference as cwt_ref  # noqa: E402
import semckd_reference as sem_ref  # noqa: E402


CIFAR_STAGES = [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
IMAGENET_STAGES = [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
SEMCKD_LAYOUTS = {
    "cifar": {"batch": 64, "student": CIFAR_STAGES, "teacher": CIFAR_STAGES, "loss_weight": 400.0},
    "imagenet": {"batch": 32, "student": IMAGENET_STAGES, "teacher": IMAGENET_STAGES, "loss_weight": 50.0},
    # --quick: student-larger and student-smaller pairs, a few milliseconds on a CPU.
    "tiny": {"batch": 8, "student": [(8, 8, 8)], "teacher": [(16, 8, 8), (32, 4, 4)],
             "loss_weight": 1.0},
}
CWT_SHAPES = {
    # student shape, hidden, teacher channels, alpha (MGD's value for that task)
    "seg": ((8, 512, 64, 64), 2048, 2048, 2e-5),
    "fpn": ((2, 256, 100, 152), 256, 256, 2e-5),
    "cls": ((64, 512, 7, 7), 512, 512, 7e-5),
    "tiny": ((2, 16, 8, 8), 32, 16, 1.0),
}
QUICK_SEMCKD, QUICK_CWT = ["tiny"], ["tiny"]
DEFAULT_SEMCKD = ["cifar", "imagenet"]
DEFAULT_CWT = ["seg", "fpn", "cls"]


def semckd_problem(layout, dtype, device, scope):
    """Inputs (leaves needing grad listed) and the loss closure for one SemCKD configuration."""
    B, S, T = layout["batch"], len(layout["student"]), len(layout["teacher"])
    gen = torch.Generator(device="cpu").manual_seed(0)

    def feat(chw):  # post-ReLU-like stage outputs, generated on the CPU so every device sees the same
        return torch.randn((B, *chw), generator=gen).clamp_min(0).to(device=device, dtype=dtype)

    fs = [feat(s).requires_grad_(True) for s in layout["student"]]
    ft = [feat(t) for t in layout["teacher"]]
    crit_weight = layout["loss_weight"]
    torch.manual_seed(0)
    if scope == "loss":
        module = sem_ref.SelfA(S, T, B).to(device)
        pj = [[torch.randn((B, t[0], min(s[1], t[1]), min(s[1], t[1])), generator=gen)
               .to(device=device, dtype=dtype).requires_grad_(True) for t in layout["teacher"]]
              for s in layout["student"]]
        crit = sem_ref.SemCKDLoss(crit_weight)

        def fn():
            s_value, f_target, attention = module([x.float() for x in fs], [x.float() for x in ft],
                                                  [[x.float() for x in row] for row in pj])
            return crit(s_value, f_target, attention)

        leaves = fs + [x for row in pj for x in row] + list(module.parameters())
        itemsize = fs[0].element_size()
        minimal = itemsize * (2 * sum(x.numel() for x in fs) + sum(x.numel() for x in ft)
                              + 2 * sum(x.numel() for row in pj for x in row))
    else:
        module = sem_ref.SelfAOfficial(S, T, B, [s[0] for s in layout["student"]],
                                       [t[0] for t in layout["teacher"]]).to(device).train()
        crit = sem_ref.SemCKDLossOfficial()

        def fn():
            s_value, f_target, weight = module([x.float() for x in fs], [x.float() for x in ft])
            return crit_weight * crit(s_value, f_target, weight)

        leaves = fs + list(module.parameters())
        minimal = None
    record = {"shape": [[B, *s] for s in layout["student"]], "teacher_shape": [[B, *t] for t in layout["teacher"]],
              "scope": scope}
    return fn, leaves, minimal, record, fs + ft


def cwt_problem(spec, dtype, device):
    shape, hidden, ct, alpha = spec
    n, cs, h, w = shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    s = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    t = torch.randn((n, ct, h, w), generator=gen).to(device=device, dtype=dtype)
    params = {k: v.to(device).requires_grad_(True) for k, v in cwt_ref.init_params(cs, hidden, ct, gen).items()}
    ordered = [params[k] for k in cwt_ref.PARAM_NAMES]

    def fn():
        return cwt_ref.cwt(s.float(), t.float(), *ordered, alpha, "batch")

    minimal = s.element_size() * (2 * s.numel() + t.numel())
    record = {"shape": list(shape), "teacher_shape": [n, ct, h, w], "hidden": hidden}
    return fn, [s] + ordered, minimal, record, [s, t]


def main():
    parser = bench_parser("PyTorch eager / torch.compile baselines for SemCKD and CWT.",
                          quick_help="tiny shapes and few iterations, for a smoke test")
    parser.add_argument("--losses", nargs="+", choices=["semckd", "cwt"], default=["semckd", "cwt"])
    parser.add_argument("--semckd-layouts", nargs="+", choices=list(SEMCKD_LAYOUTS), default=None)
    parser.add_argument("--semckd-scopes", nargs="+", choices=["loss", "full"], default=None,
                        help="default: loss and full (--quick: loss only)")
    parser.add_argument("--cwt-shapes", nargs="+", choices=list(CWT_SHAPES), default=None)
    args = parser.parse_args()

    device = bench_device(args)
    warmup, iters = iteration_counts(args, device)
    layouts = args.semckd_layouts or (QUICK_SEMCKD if args.quick else DEFAULT_SEMCKD)
    cwt_shapes = args.cwt_shapes or (QUICK_CWT if args.quick else DEFAULT_CWT)
    scopes = args.semckd_scopes or (["loss"] if args.quick else ["loss", "full"])

    lines = JsonLines(device, args.out)
    configs = []
    if "semckd" in args.losses:
        for name in layouts:
            for scope in scopes:
                configs.append(("semckd", name, lambda dt, n=name, sc=scope: semckd_problem(
                    SEMCKD_LAYOUTS[n], dt, device, sc)))
    if "cwt" in args.losses:
        for name in cwt_shapes:
            configs.append(("cwt", name, lambda dt, n=name: cwt_problem(CWT_SHAPES[n], dt, device)))

    guard = CompileGuard(device)
    for loss_name, config_name, build in configs:
        for dtype_name in args.dtypes:
            fn, leaves, minimal, record, inputs = build(DTYPES[dtype_name])
            copy_gbps = time_copy(lines, inputs, record["shape"], dtype_name, device, warmup, iters)
            for impl, ms in time_impls(args.impls, fn, leaves, guard, device, warmup, iters):
                line = {"loss": loss_name, **record, "dtype": dtype_name, "impl": impl, "median_ms": ms,
                        "iters": iters, "layout": config_name}
                if minimal is not None:
                    line["gbps"] = minimal / (ms * 1e-3) / 1e9
                    line["copy_gbps"] = copy_gbps
                lines.emit(line)
            del fn, leaves, inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()

    lines.close()


if __name__ == "__main__":
    main()
