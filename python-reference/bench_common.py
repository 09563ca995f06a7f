"""What every PyTorch baseline bench (`bench_*.py`) shares, so that their numbers are measured and written alike.

  * the clocks: `median_ms` (CUDA events around each call on the GPU, `perf_counter` on the CPU),
    `iteration_counts` (the warm-up and timed iterations), `peak_mib` (CUDA memory of one step);
  * the copy bandwidth line (`time_copy`) every bench prints before its losses, so that a result can be read
    against the bandwidth reachable on that machine;
  * the output: `JsonLines`, one JSON object per line with the run's device, torch version and date;
  * the command line: `bench_parser` (`--device`, `--quick`, `--dtypes`, `--impls`, `--warmup`, `--iters`,
    `--out`; each bench adds its own shape options) and `bench_device`;
  * torch.compile: `fresh_compile` (one static-shape compile per configuration) and `CompileGuard` (the first
    compile failure skips the compiled impls that follow, with the reason on stderr).
"""

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def parse_shape(text):
    dims = tuple(int(d) for d in text.lower().split("x"))
    if len(dims) != 4:
        raise argparse.ArgumentTypeError(f"shape must be NxCxHxW, got {text!r}")
    return dims


def bench_parser(description, quick_help="few iterations, for a smoke test", impls=("eager", "compile"),
                 impls_help=None):
    """The options every bench takes; `--impls` defaults to all of `impls`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--impls", nargs="+", choices=list(impls), default=list(impls), help=impls_help)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines to this file")
    return parser


def bench_device(args):
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


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


def time_copy(lines, tensors, shape, dtype_name, device, warmup, iters):
    """Times a device-to-device copy of a buffer as large as `tensors` together (read + write), emits it as a
    `copy` record and returns its GB/s, the bandwidth the losses' records are read against."""
    src = torch.cat([x.detach().reshape(-1) for x in tensors])
    dst = torch.empty_like(src)
    copy_ms = median_ms(lambda: dst.copy_(src), device, warmup, iters)
    copy_gbps = 2 * src.numel() * src.element_size() / (copy_ms * 1e-3) / 1e9
    lines.emit({"loss": "copy", "shape": shape, "dtype": dtype_name, "impl": "copy", "median_ms": copy_ms,
                "gbps": copy_gbps, "iters": iters})
    return copy_gbps


def fresh_compile(fn, mode=None):
    # Start from a clean cache so each configuration gets its own static-shape compile, instead of dynamo
    # switching to dynamic shapes on the second shape.
    torch._dynamo.reset()
    return torch.compile(fn, mode=mode)


def compile_error(exc):
    """One line saying why a compiled step failed."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


class CompileGuard:
    """Remembers the first torch.compile failure: later compiles would fail the same way, so they are skipped."""

    def __init__(self, device):
        self.device = device
        self.broken = None

    def measure(self, compiled, fn):
        """`fn()`, or None when it raises for a compiled step (the reason goes to stderr once); an eager
        step's failure is a real error and propagates."""
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any compile failure means "skip"
            if not compiled:
                raise
            self.broken = compile_error(exc)
            print(f"skipping torch.compile on {self.device.type}: {self.broken}", file=sys.stderr)
            return None


def random_pair(shape, dtype, device, scale=3.0):
    """Student and teacher logits drawn on the CPU with a fixed seed, so every device times the same values."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    student = (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)
    teacher = (torch.randn(shape, generator=gen) * scale).to(device=device, dtype=dtype)
    return student, teacher


def time_impls(impls, fn, leaves, guard, device, warmup, iters):
    """Yields (impl, median ms) of forward + backward of the closure `fn` for each of `impls` (`eager`, or
    `compile`: skipped after a compile failure), every step starting with no gradient on `leaves`."""
    for impl in impls:
        compiled = impl == "compile"
        if compiled and guard.broken:
            continue
        step_fn = fresh_compile(fn) if compiled else fn

        def step():
            for x in leaves:
                x.grad = None  # a fresh gradient each time: the kernel writes it once
            step_fn().backward()

        ms = guard.measure(compiled, lambda: median_ms(step, device, warmup, iters))
        if ms is not None:
            yield impl, ms
