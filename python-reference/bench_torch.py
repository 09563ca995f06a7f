"""Benchmark the PyTorch baselines the `kd-kernels` CUDA kernels are compared against.

Times forward + backward (`loss.backward()` with respect to the student) of
  * CWD, mmrazor form, tau 4, loss_weight 3 (the paper setting),
  * pixel KD, `mean` reduction, tau 1 (the official TorchDistiller / AICSD setting), and
  * ICSD (`--losses icsd`, not run by default), official variant, tau 1, loss_weight 9500:
    impl `official_loop` is the official AICSD `lo_loss` pair loop (eager), `eager` and
    `compile` are the closed form `icsd_official_vectorized`,
in PyTorch eager mode, eager replayed as a CUDA graph (`cuda_graph`, CUDA only), and under `torch.compile`
(`compile`: default mode; `max_autotune`: mode max-autotune, not run by default: its autotuning takes minutes
per shape), for f32 and bf16 inputs
(bf16 is upcast inside the loss with `.float()`, as the crate upcasts in its kernels).

Without `--shapes`, CWD and pixel KD run on 8x19x64x128, 8x19x512x1024 and 8x256x64x128, and
ICSD on 2x21x65x65, 6x21x513x513 (the official Pascal VOC setting) and 8x19x512x1024 (only
2x21x65x65 with `--device cpu --quick`). Without `--impls`, CWD and pixel KD run `eager`, `cuda_graph`
(on CUDA) and `compile`, ICSD also `official_loop`; `official_loop` exists only for ICSD.

On CUDA every record also has `peak_mib`: the most memory the step allocated beyond what was allocated before
it (inputs, outputs of earlier steps), from `torch.cuda.max_memory_allocated`.

In the same run it times a device-to-device copy of a buffer the size of student + teacher,
so every result can be read against the copy bandwidth actually reachable on that machine.

`gbps` counts minimal traffic only: student and teacher read once and the gradient written
once, in the input dtype (3 * numel * itemsize bytes). PyTorch moves more than that; the
number is an effective bandwidth, comparable with the crate's own benchmark.

Output: one JSON object per line on stdout (and in `--out FILE` if given).

    .venv-torch/bin/python python-reference/bench_torch.py                # CUDA if present
    .venv-torch/bin/python python-reference/bench_torch.py --device cpu --quick   # smoke test
"""

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

# No __pycache__ next to the sources: the repo .gitignore does not cover this folder.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from icsd_reference import icsd_official_loop, icsd_official_vectorized  # noqa: E402
from kd_reference import cwd_mmrazor, pixel_kd  # noqa: E402

# `KLDivLoss` 'mean' (divide by numel) is the official pixel-KD reduction being measured, so
# PyTorch's advice to switch to 'batchmean' is noise here (dynamo would repeat it per trace).
warnings.filterwarnings("ignore", message=".*reduction: 'mean' divides the total loss.*")

DEFAULT_SHAPES = ["8x19x64x128", "8x19x512x1024", "8x256x64x128"]
ICSD_DEFAULT_SHAPES = ["2x21x65x65", "6x21x513x513", "8x19x512x1024"]
ICSD_QUICK_CPU_SHAPES = ["2x21x65x65"]
DEFAULT_LOSSES = ["cwd", "pixel_kd"]
DEFAULT_IMPLS = ["eager", "cuda_graph", "compile"]
ICSD_DEFAULT_IMPLS = ["official_loop", "eager", "cuda_graph", "compile"]
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def cwd_bench_loss(s, t):
    # Upcast inside the loss so bf16 inputs are accumulated in fp32 (no-op for f32).
    return cwd_mmrazor(s.float(), t.float(), tau=4.0, loss_weight=3.0)


def pixel_kd_bench_loss(s, t):
    return pixel_kd(s.float(), t.float(), tau=1.0, loss_weight=1.0, reduction="mean", scale_tau2=False)


def icsd_bench_loss(s, t):
    # The official variant in closed form (what the crate implements); tau 1, weight 9500.
    return icsd_official_vectorized(s.float(), t.float(), tau=1.0, loss_weight=9500.0)


def icsd_official_loop_bench_loss(s, t):
    # The official `lo_loss` pair loop, as AICSD runs it (eager only).
    return icsd_official_loop(s.float(), t.float(), tau=1.0, loss_weight=9500.0)


LOSSES = {"cwd": cwd_bench_loss, "pixel_kd": pixel_kd_bench_loss, "icsd": icsd_bench_loss}
# Implementations other than eager/compile of LOSSES[name], by loss.
EXTRA_IMPLS = {"icsd": {"official_loop": icsd_official_loop_bench_loss}}
# eager, the eager step replayed as a CUDA graph (CUDA only), torch.compile's default and max-autotune modes:
# the best PyTorch a user can get, side by side.
GENERIC_IMPLS = ["eager", "cuda_graph", "compile", "max_autotune"]
ALL_IMPLS = ["official_loop", *GENERIC_IMPLS]
COMPILE_MODES = {"compile": "default", "max_autotune": "max-autotune"}


def parse_shape(text):
    dims = tuple(int(d) for d in text.lower().split("x"))
    if len(dims) != 4:
        raise argparse.ArgumentTypeError(f"shape must be NxCxHxW, got {text!r}")
    return dims


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step, device, warmup, iters):
    """Median wall time of `step` in milliseconds.

    On CUDA each iteration is bracketed by its own pair of events (device time, not
    Python time); on CPU perf_counter is the only clock and the work is synchronous anyway.
    """
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in pairs:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in pairs]
    else:
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cuda_graph_step(fn, s, teacher):
    """The eager forward + backward captured once into a CUDA graph; the returned step replays it (the
    gradient lands in the same buffer every replay, as the graph allocated it at capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (lazy inits, cuBLAS workspaces)
        for _ in range(3):
            s.grad = None
            fn(s, teacher).backward()
    torch.cuda.current_stream().wait_stream(side)
    s.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(s, teacher).backward()
    return graph.replay


def peak_mib(step, device):
    """Memory one call of `step` allocates beyond what is allocated already, in MiB (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def iteration_counts(args, device):
    """(warmup, iters): 1 and 3 with --quick, 10 and 50 on CUDA, 2 and 10 on the CPU; --warmup and --iters
    override."""
    if args.quick:
        warmup, iters = 1, 3
    elif device.type == "cuda":
        warmup, iters = 10, 50
    else:
        warmup, iters = 2, 10
    return (args.warmup if args.warmup is not None else warmup, args.iters if args.iters is not None else iters)


class JsonLines:
    """Prints each record as one JSON line, with the run's device, torch version and date, and appends it to
    `path` when one is given."""

    def __init__(self, device, path):
        self.common = {
            "device": device_name(device),
            "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.file = path.open("w") if path else None

    def emit(self, record):
        line = json.dumps({**record, **self.common})
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


def main():
    parser = argparse.ArgumentParser(description="PyTorch eager / torch.compile baselines for CWD, pixel KD and ICSD.")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="few iterations, for a smoke test")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None,
                        help="NxCxHxW for every loss (default: each loss's own shapes)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES), default=DEFAULT_LOSSES)
    parser.add_argument("--impls", nargs="+", choices=ALL_IMPLS, default=None,
                        help="default: eager cuda_graph compile (ICSD also official_loop); official_loop is "
                             "ICSD only; cuda_graph needs CUDA")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines to this file")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def default_shapes(loss_name):
        if loss_name != "icsd":
            return DEFAULT_SHAPES
        return ICSD_QUICK_CPU_SHAPES if (args.quick and device.type == "cpu") else ICSD_DEFAULT_SHAPES

    # Which losses run on which shape, in first-seen shape order.
    plan = {}
    for loss_name in args.losses:
        shapes = args.shapes if args.shapes is not None else [parse_shape(s) for s in default_shapes(loss_name)]
        for shape in shapes:
            if loss_name not in plan.setdefault(shape, []):
                plan[shape].append(loss_name)

    def impls_for(loss_name):
        wanted = args.impls
        if wanted is None:
            wanted = ICSD_DEFAULT_IMPLS if loss_name == "icsd" else DEFAULT_IMPLS
        usable = [i for i in wanted if i in GENERIC_IMPLS or i in EXTRA_IMPLS.get(loss_name, {})]
        if device.type != "cuda":
            usable = [i for i in usable if i != "cuda_graph"]
        for i in wanted:
            if i not in usable and (loss_name, i) not in skipped_impls:
                skipped_impls.add((loss_name, i))
                why = ("it needs CUDA" if i == "cuda_graph" else
                       f"it exists only for {', '.join(k for k, v in EXTRA_IMPLS.items() if i in v)}")
                print(f"skipping impl {i} for {loss_name}: {why}", file=sys.stderr)
        return usable

    skipped_impls = set()
    warmup, iters = iteration_counts(args, device)

    lines = JsonLines(device, args.out)
    emit = lines.emit

    compile_broken = None  # first torch.compile failure; later attempts would fail the same way
    for shape, shape_losses in plan.items():
        numel = shape[0] * shape[1] * shape[2] * shape[3]
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            itemsize = torch.empty((), dtype=dtype).element_size()
            gen = torch.Generator(device="cpu").manual_seed(0)
            # Generate on the CPU with a fixed seed so every device times the same values.
            student = (torch.randn(shape, generator=gen) * 3).to(device=device, dtype=dtype)
            teacher = (torch.randn(shape, generator=gen) * 3).to(device=device, dtype=dtype)

            # Copy bandwidth: read + write of a buffer as large as student + teacher.
            src = torch.cat([student.reshape(-1), teacher.reshape(-1)])
            dst = torch.empty_like(src)
            copy_ms = median_ms(lambda: dst.copy_(src), device, warmup, iters)
            copy_gbps = 2 * src.numel() * itemsize / (copy_ms * 1e-3) / 1e9
            emit({"loss": "copy", "shape": list(shape), "dtype": dtype_name, "impl": "copy",
                  "median_ms": copy_ms, "gbps": copy_gbps, "iters": iters})
            del src, dst

            minimal_bytes = 3 * numel * itemsize
            for loss_name in shape_losses:
                for impl in impls_for(loss_name):
                    fn = EXTRA_IMPLS.get(loss_name, {}).get(impl, LOSSES[loss_name])
                    if impl in COMPILE_MODES:
                        if compile_broken:
                            continue
                        # Start from a clean cache so each configuration gets its own static-shape
                        # compile, instead of dynamo switching to dynamic shapes on the 2nd shape.
                        torch._dynamo.reset()
                        fn = torch.compile(fn, mode=COMPILE_MODES[impl])
                    s = student.detach().clone().requires_grad_(True)

                    def eager_step(fn=fn, s=s):
                        s.grad = None  # a fresh gradient each time: the kernel writes it once
                        fn(s, teacher).backward()

                    try:
                        step = cuda_graph_step(fn, s, teacher) if impl == "cuda_graph" else eager_step
                        ms = median_ms(step, device, warmup, iters)
                        peak = peak_mib(step, device)
                    except Exception as exc:  # noqa: BLE001 - any compile failure means "skip"
                        if impl not in COMPILE_MODES:
                            raise
                        compile_broken = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        print(f"skipping torch.compile on {device.type}: {compile_broken}", file=sys.stderr)
                        continue
                    emit({"loss": loss_name, "shape": list(shape), "dtype": dtype_name, "impl": impl,
                          "median_ms": ms, "gbps": minimal_bytes / (ms * 1e-3) / 1e9,
                          "copy_gbps": copy_gbps, "peak_mib": peak, "iters": iters})
            del student, teacher

    lines.close()


if __name__ == "__main__":
    main()
