"""Benchmark the PyTorch baseline the `kd-kernels` DIST kernels are compared against (benches/dist.rs).

Times forward + backward (`loss.backward()` with respect to the student) of mmrazor's `DISTLoss`
(`official/mmrazor_dist_loss.py`, defaults: tau 1, both weights 1) on segmentation logits flattened to
[N*H*W, C] as DIST_KD's segmentation `DIST` does (every pixel a sample; the loss the crate computes), in
PyTorch eager mode and under `torch.compile` (default mode), for f32 and bf16 inputs (bf16 upcast inside
the loss with `.float()`, as the crate upcasts in its kernels).

Without `--shapes` it runs on 8x19x128x256 (DIST_KD's Cityscapes logits at 1/8 of a 1024x2048 crop) and
2x19x33x65. Like `bench_torch.py` (whose timing and output it shares) it also times a device-to-device copy
of student + teacher, and `gbps` counts minimal traffic (3 * numel * itemsize bytes).

    .venv-torch/bin/python python-reference/bench_dist.py                # CUDA if present
    .venv-torch/bin/python python-reference/bench_dist.py --device cpu --quick   # smoke test
"""

import argparse
import sys
from pathlib import Path

import torch

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "official"))
from bench_torch import DTYPES, JsonLines, iteration_counts, median_ms, parse_shape  # noqa: E402
from mmrazor_dist_loss import DISTLoss  # noqa: E402

DEFAULT_SHAPES = ["2x19x33x65", "8x19x128x256"]
_DIST = DISTLoss()


def dist_bench_loss(s, t):
    c = s.shape[1]
    flat = lambda x: x.float().permute(0, 2, 3, 1).reshape(-1, c)  # noqa: E731
    return _DIST(flat(s), flat(t))


def main():
    parser = argparse.ArgumentParser(description="PyTorch eager / torch.compile baselines for DIST.")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="few iterations, for a smoke test")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in DEFAULT_SHAPES])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--impls", nargs="+", choices=["eager", "compile"], default=["eager", "compile"])
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines to this file")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    warmup, iters = iteration_counts(args, device)
    lines = JsonLines(device, args.out)
    for shape in args.shapes:
        numel = shape[0] * shape[1] * shape[2] * shape[3]
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            itemsize = torch.empty((), dtype=dtype).element_size()
            gen = torch.Generator(device="cpu").manual_seed(0)
            student = (torch.randn(shape, generator=gen) * 3).to(device=device, dtype=dtype)
            teacher = (torch.randn(shape, generator=gen) * 3).to(device=device, dtype=dtype)
            src = torch.cat([student.reshape(-1), teacher.reshape(-1)])
            dst = torch.empty_like(src)
            copy_ms = median_ms(lambda: dst.copy_(src), device, warmup, iters)
            copy_gbps = 2 * src.numel() * itemsize / (copy_ms * 1e-3) / 1e9
            lines.emit({"loss": "copy", "shape": list(shape), "dtype": dtype_name, "impl": "copy",
                        "median_ms": copy_ms, "gbps": copy_gbps, "iters": iters})
            for impl in args.impls:
                fn = dist_bench_loss
                if impl == "compile":
                    torch._dynamo.reset()  # a static-shape compile per configuration
                    fn = torch.compile(fn)
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
