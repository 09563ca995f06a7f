"""Benchmark the PyTorch baseline the `kd-kernels` DIST kernels are compared against (benches/dist.rs).

Times forward + backward (`loss.backward()` with respect to the student) of mmrazor's `DISTLoss`
(`official/mmrazor_dist_loss.py`, defaults: tau 1, both weights 1) on segmentation logits flattened to
[N*H*W, C] as DIST_KD's segmentation `DIST` does (every pixel a sample; the loss the crate computes), in
PyTorch eager mode and under `torch.compile` (default mode), for f32 and bf16 inputs (bf16 upcast inside
the loss with `.float()`, as the crate upcasts in its kernels).

Without `--shapes` it runs on 8x19x128x256 (DIST_KD's Cityscapes logits at 1/8 of a 1024x2048 crop) and
2x19x33x65. Like `bench_torch.py` (the timing and output are `bench_common.py`'s) it also times a
device-to-device copy of student + teacher, and `gbps` counts minimal traffic (3 * numel * itemsize bytes).

    .venv-torch/bin/python python-reference/bench_dist.py                # CUDA if present
    .venv-torch/bin/python python-reference/bench_dist.py --device cpu --quick   # smoke test
"""

import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "official"))
from bench_common import (  # noqa: E402
    DTYPES, JsonLines, bench_device, bench_parser, fresh_compile, iteration_counts, median_ms, parse_shape,
    random_pair, time_copy)
from mmrazor_dist_loss import DISTLoss  # noqa: E402

DEFAULT_SHAPES = ["2x19x33x65", "8x19x128x256"]
_DIST = DISTLoss()


def dist_bench_loss(s, t):
    c = s.shape[1]
    flat = lambda x: x.float().permute(0, 2, 3, 1).reshape(-1, c)  # noqa: E731
    return _DIST(flat(s), flat(t))


def main():
    parser = bench_parser("PyTorch eager / torch.compile baselines for DIST.")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in DEFAULT_SHAPES])
    args = parser.parse_args()

    device = bench_device(args)
    warmup, iters = iteration_counts(args, device)
    lines = JsonLines(device, args.out)
    for shape in args.shapes:
        numel = shape[0] * shape[1] * shape[2] * shape[3]
        for dtype_name in args.dtypes:
            student, teacher = random_pair(shape, DTYPES[dtype_name], device)
            itemsize = student.element_size()
            copy_gbps = time_copy(lines, (student, teacher), list(shape), dtype_name, device, warmup, iters)
            for impl in args.impls:
                fn = fresh_compile(dist_bench_loss) if impl == "compile" else dist_bench_loss
                s = student.detach().clone().requires_grad_(True)

                def step():
                    s.grad = None
                    fn(s, teacher).backward()

                ms = median_ms(step, device, warmup, iters)
                lines.emit({"loss": "dist", "shape": list(shape), "dtype": dtype_name, "impl": impl,
                            "median_ms": ms, "gbps": 3 * numel * itemsize / (ms * 1e-3) / 1e9,
                            "copy_gbps": copy_gbps, "iters": iters})
    lines.close()


if __name__ == "__main__":
    main()
