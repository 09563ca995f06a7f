"""Benchmark the PyTorch baseline for PKD (eager and torch.compile): mmrazor's own `PKDLoss`
(`official/mmrazor_pkd_loss.py`) on every level of a RetinaNet / RTMDet feature pyramid, as mmrazor's PKD
detection configs and mmyolo's RTMDet `pkdv2` apply it: 8 images of 800 x 1216, 256 channels, strides 8 to
128 (100x152, 50x76, 25x38, 13x19, 7x10), loss_weight 6, the tuple of levels in one call. Per level that is a
`permute`, a `reshape` copy, two reductions and an MSE, for the student and for the teacher.

Times forward + backward (`loss.backward()` with respect to the student levels), with the same clocks, JSON
fields and copy-bandwidth line as `bench_torch.py` (all from `bench_common.py`); `benches/pkd.rs` times the
crate on the same shapes.
f32 and bf16 features (bf16 upcast inside the loss with `.float()`, as the crate upcasts in its kernels).
`gbps` counts minimal traffic only: student and teacher read once, the gradient written once.

    .venv-torch/bin/python python-reference/bench_pkd.py                # CUDA if present
    .venv-torch/bin/python python-reference/bench_pkd.py --device cpu --quick   # smoke test
"""

import sys
from pathlib import Path

import torch

# No __pycache__ next to the sources: the repo .gitignore does not cover this folder.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "official"))
from bench_common import (  # noqa: E402
    DTYPES, CompileGuard, JsonLines, bench_device, bench_parser, iteration_counts, time_copy, time_impls)
from mmrazor_pkd_loss import PKDLoss  # noqa: E402

PLANES = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]
PYRAMIDS = {"fpn": (8, 256), "tiny": (2, 8)}  # (images, channels)


def problem(name, dtype, device):
    images, channels = PYRAMIDS[name]
    gen = torch.Generator(device="cpu").manual_seed(0)
    teacher, student = [], []
    for h, w in PLANES:
        t = torch.randn((images, channels, h, w), generator=gen) + torch.randn((1, channels, 1, 1), generator=gen)
        s = 0.8 * t + 0.6 * torch.randn(t.shape, generator=gen)
        teacher.append(t.to(device=device, dtype=dtype))
        student.append(s.to(device=device, dtype=dtype).requires_grad_(True))
    loss = PKDLoss(loss_weight=6.0)

    def fn():
        return loss(tuple(x.float() for x in student), tuple(x.float() for x in teacher))

    numel = sum(x.numel() for x in student)
    return fn, student, teacher, numel


def main():
    parser = bench_parser("PyTorch eager / torch.compile baseline for PKD.",
                          quick_help="a tiny pyramid and few iterations, for a smoke test")
    args = parser.parse_args()

    device = bench_device(args)
    warmup, iters = iteration_counts(args, device)
    name = "tiny" if args.quick else "fpn"
    images, channels = PYRAMIDS[name]
    shape = [[images, channels, h, w] for h, w in PLANES]
    lines = JsonLines(device, args.out)
    guard = CompileGuard(device)
    for dtype_name in args.dtypes:
        fn, student, teacher, numel = problem(name, DTYPES[dtype_name], device)
        itemsize = student[0].element_size()
        copy_gbps = time_copy(lines, student + teacher, shape, dtype_name, device, warmup, iters)
        for impl, ms in time_impls(args.impls, fn, student, guard, device, warmup, iters):
            minimal = 3 * numel * itemsize
            lines.emit({"loss": "pkd", "shape": shape, "dtype": dtype_name, "impl": impl, "median_ms": ms,
                        "gbps": minimal / (ms * 1e-3) / 1e9, "copy_gbps": copy_gbps, "iters": iters,
                        "layout": name})
        del fn, student, teacher
        if device.type == "cuda":
            torch.cuda.empty_cache()
    lines.close()


if __name__ == "__main__":
    main()
