"""Side by side, in one process: kd_kernels against the same loss in PyTorch ops, forward + backward (the
student's gradient, ``torch.autograd.grad``), on the bench shapes of benches/RESULTS.md, f32 and bf16 inputs.

    python python/bench.py                      # every loss, shape and dtype
    python python/bench.py --shapes 8x19x64x128 --dtypes bf16 --losses cwd

Variants (each a row): kd_kernels eager, kd_kernels under torch.compile(fullgraph=True), kd_kernels' eager
step captured in a CUDA graph and replayed; PyTorch eager, torch.compile (default mode), torch.compile
(max-autotune-no-cudagraphs), PyTorch's eager step captured in a CUDA graph. For each: p20/p50/p80 of the
CUDA-event time of one step (after warm-up; compilation excluded) and the peak memory one step allocates
above what was allocated before it (``torch.cuda.max_memory_allocated``). Prints one JSON object per line
and a markdown table.

GPU only: without CUDA (or with a build that has no kernels) it says so on stderr and exits with status 2,
before doing anything else.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python-reference"))

SHAPES = ["8x19x64x128", "8x19x512x1024", "8x256x64x128"]
ICSD_SHAPES = ["2x21x65x65", "6x21x513x513", "8x19x512x1024"]
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
VARIANTS = ["kd_kernels", "kd_kernels_compile", "kd_kernels_graph", "torch_eager", "torch_compile",
            "torch_max_autotune", "torch_graph"]


def losses():
    import kd_kernels
    from icsd_reference import icsd_official_vectorized
    from reference import cwd_official, pixel_kd_official

    # The PyTorch formulas upcast to f32, accumulating in f32 as the kernels do.
    return {
        "icsd": (lambda s, t: kd_kernels.icsd_loss(s, t),
                 lambda s, t: icsd_official_vectorized(s.float(), t.float(), 1.0, 9500.0)),
        "cwd": (lambda s, t: kd_kernels.cwd_loss(s, t, 4.0, 3.0),
                lambda s, t: cwd_official(s.float(), t.float(), 4.0, 3.0)),
        "pixel_kd": (lambda s, t: kd_kernels.pixel_kd_loss(s, t, 1.0, 10.0, "mean", False),
                     lambda s, t: pixel_kd_official(s.float(), t.float(), 1.0, 10.0, "mean", False)),
    }


def step_of(loss_fn, student, teacher):
    def step():
        loss = loss_fn(student, teacher)
        (grad,) = torch.autograd.grad(loss, student)
        return loss, grad
    return step


def graph_replay(step, warmup=3):
    """``step`` captured in a CUDA graph (after warm-up on a side stream, which also sizes kd_kernels'
    workspace): returns the replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def percentiles(values, qs=(0.2, 0.5, 0.8)):
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] for q in qs]


def measure(run, iters, warmup):
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return percentiles(times), peak


def variants(ours, reference, student, teacher, no_compile):
    out = {"kd_kernels": step_of(ours, student, teacher), "torch_eager": step_of(reference, student, teacher)}
    if not no_compile:
        out["kd_kernels_compile"] = step_of(torch.compile(ours, fullgraph=True), student, teacher)
        out["torch_compile"] = step_of(torch.compile(reference), student, teacher)
        out["torch_max_autotune"] = step_of(torch.compile(reference, mode="max-autotune-no-cudagraphs"), student,
                                            teacher)
    out["kd_kernels_graph"] = graph_replay(out["kd_kernels"])
    out["torch_graph"] = graph_replay(out["torch_eager"])
    return out


def table(rows):
    lines = ["| loss | shape | dtype | variant | p20 ms | p50 ms | p80 ms | peak MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for v in VARIANTS:
            if v in r["ms"]:
                p20, p50, p80 = r["ms"][v]
                lines.append(f"| {r['loss']} | {r['shape']} | {r['dtype']} | {v} | {p20:.3f} | {p50:.3f} | {p80:.3f} "
                             f"| {r['peak_bytes'][v] / 2**20:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=None,
                        help=f"default {' '.join(SHAPES)}; for icsd {' '.join(ICSD_SHAPES)}")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--losses", nargs="+", default=["cwd", "pixel_kd", "icsd"], choices=["cwd", "pixel_kd", "icsd"])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench.py: needs a CUDA GPU visible to torch (it compares GPU kernels); none here", file=sys.stderr)
        return 2
    import kd_kernels
    if not kd_kernels.kernels_compiled():
        print("bench.py: kd_kernels was built without nvcc, so it has no GPU kernels; reinstall it where "
              "scripts/install-nvcc works", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name()
    rows = []
    for loss_name in args.losses:
        ours, reference = losses()[loss_name]
        for shape_text in args.shapes or (ICSD_SHAPES if loss_name == "icsd" else SHAPES):
            shape = tuple(int(d) for d in shape_text.split("x"))
            for dtype_name in args.dtypes:
                g = torch.Generator(device="cuda").manual_seed(0)
                student = (torch.randn(shape, device="cuda", generator=g) * 3).to(DTYPES[dtype_name])
                student.requires_grad_(True)
                teacher = (torch.randn(shape, device="cuda", generator=g) * 3).to(DTYPES[dtype_name])
                row = {"device": device, "torch": torch.__version__, "loss": loss_name, "shape": shape_text,
                       "dtype": dtype_name, "ms": {}, "peak_bytes": {}}
                for name, run in variants(ours, reference, student, teacher, args.no_compile).items():
                    row["ms"][name], row["peak_bytes"][name] = measure(run, args.iters, warmup=10)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(f"\n{device}, torch {torch.__version__}; forward + backward (student gradient), CUDA-event ms\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
