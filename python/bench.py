"""Side by side, in one process: kd_kernels against PyTorch eager and torch.compile, forward + backward
(`loss.backward()` into the student) on the bench shapes of benches/RESULTS.md, f32 and bf16 inputs.

    python python/bench.py                      # every loss, shape and dtype
    python python/bench.py --shapes 8x19x64x128 --dtypes bf16 --losses cwd

GPU only: without CUDA it says why and exits 0 (there is nothing to compare on the CPU, where kd_kernels runs
its f64 reference). Prints one JSON object per line and a markdown table; timings are medians of CUDA-event
timings after warm-up (torch.compile's compilation is excluded).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import kd_kernels

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))
from reference import cwd_official, pixel_kd_official  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python-reference"))
from icsd_reference import icsd_official_vectorized  # noqa: E402

SHAPES = ["8x19x64x128", "8x19x512x1024", "8x256x64x128"]
ICSD_SHAPES = ["2x21x65x65", "6x21x513x513", "8x19x512x1024"]
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def torch_cwd(s, t):
    return cwd_official(s.float(), t.float(), 4.0, 3.0)  # upcast: fp32 accumulation, as the kernels


def torch_pixel_kd(s, t):
    return pixel_kd_official(s.float(), t.float(), 1.0, 10.0, "mean", False)


def torch_icsd(s, t):
    return icsd_official_vectorized(s.float(), t.float(), 1.0, 9500.0)


LOSSES = {
    "icsd": (lambda s, t: kd_kernels.icsd_loss(s, t), torch_icsd),
    "cwd": (lambda s, t: kd_kernels.cwd_loss(s, t, 4.0, 3.0), torch_cwd),
    "pixel_kd": (lambda s, t: kd_kernels.pixel_kd_loss(s, t, 1.0, 10.0, "mean", False), torch_pixel_kd),
}


def time_ms(step, student, iters, warmup):
    for _ in range(warmup):
        student.grad = None
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        student.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=None,
                        help=f"default {' '.join(SHAPES)}; for icsd {' '.join(ICSD_SHAPES)}")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--losses", nargs="+", default=["cwd", "pixel_kd", "icsd"], choices=list(LOSSES))
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench.py: skipped: no CUDA GPU visible to torch (the comparison is of GPU kernels)")
        return 0
    if not kd_kernels.kernels_compiled():
        print("bench.py: skipped: kd_kernels was built without nvcc, so it has no GPU kernels; reinstall it "
              "where scripts/install-nvcc works")
        return 0
    device = torch.cuda.get_device_name()
    rows = []
    for loss_name in args.losses:
        ours, reference = LOSSES[loss_name]
        compiled = None if args.no_compile else torch.compile(reference)
        for shape_text in args.shapes or (ICSD_SHAPES if loss_name == "icsd" else SHAPES):
            shape = tuple(int(d) for d in shape_text.split("x"))
            for dtype_name in args.dtypes:
                dtype = DTYPES[dtype_name]
                g = torch.Generator(device="cuda").manual_seed(0)
                student = (torch.randn(shape, device="cuda", generator=g) * 3).to(dtype).requires_grad_(True)
                teacher = (torch.randn(shape, device="cuda", generator=g) * 3).to(dtype)
                row = {"device": device, "loss": loss_name, "shape": shape_text, "dtype": dtype_name}
                impls = [("kd_kernels", ours), ("eager", reference)] + ([("compile", compiled)] if compiled else [])
                for impl, fn in impls:
                    row[f"{impl}_ms"] = time_ms(lambda fn=fn: fn(student, teacher).backward(), student, args.iters,
                                                warmup=5 if impl != "compile" else 10)
                for impl in ("eager", "compile"):
                    if f"{impl}_ms" in row:
                        row[f"speedup_vs_{impl}"] = row[f"{impl}_ms"] / row["kd_kernels_ms"]
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(f"\n{device}, torch {torch.__version__}; forward + backward, median ms\n")
    print("| loss | shape | dtype | kd_kernels | eager | compile | vs eager | vs compile |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda k: f"{r[k]:.3f}" if k in r else "-"  # noqa: E731
        sp = lambda k: f"{r[k]:.1f}x" if k in r else "-"  # noqa: E731
        print(f"| {r['loss']} | {r['shape']} | {r['dtype']} | {fmt('kd_kernels_ms')} | {fmt('eager_ms')} | "
              f"{fmt('compile_ms')} | {sp('speedup_vs_eager')} | {sp('speedup_vs_compile')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
