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

import sys
import warnings
from pathlib import Path

import torch

# No __pycache__ next to the sources: the repo .gitignore does not cover this folder.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    DTYPES, CompileGuard, JsonLines, bench_device, bench_parser, fresh_compile, iteration_counts, median_ms,
    parse_shape, peak_mib, random_pair, time_copy)
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


def main():
    parser = bench_parser("PyTorch eager / torch.compile baselines for CWD, pixel KD and ICSD.", impls=ALL_IMPLS,
                          impls_help="default: eager cuda_graph compile (ICSD also official_loop); official_loop "
                                     "is ICSD only; cuda_graph needs CUDA")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None,
                        help="NxCxHxW for every loss (default: each loss's own shapes)")
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES), default=DEFAULT_LOSSES)
    parser.set_defaults(impls=None)  # each loss has its own default impls, see impls_for
    args = parser.parse_args()

    device = bench_device(args)

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
    guard = CompileGuard(device)
    for shape, shape_losses in plan.items():
        numel = shape[0] * shape[1] * shape[2] * shape[3]
        for dtype_name in args.dtypes:
            student, teacher = random_pair(shape, DTYPES[dtype_name], device)
            itemsize = student.element_size()
            copy_gbps = time_copy(lines, (student, teacher), list(shape), dtype_name, device, warmup, iters)
            minimal_bytes = 3 * numel * itemsize
            for loss_name in shape_losses:
                for impl in impls_for(loss_name):
                    fn = EXTRA_IMPLS.get(loss_name, {}).get(impl, LOSSES[loss_name])
                    if impl in COMPILE_MODES:
                        if guard.broken:
                            continue
                        fn = fresh_compile(fn, mode=COMPILE_MODES[impl])
                    s = student.detach().clone().requires_grad_(True)

                    def eager_step(fn=fn, s=s):
                        s.grad = None  # a fresh gradient each time: the kernel writes it once
                        fn(s, teacher).backward()

                    def measure(fn=fn, s=s, impl=impl):
                        step = cuda_graph_step(fn, s, teacher) if impl == "cuda_graph" else eager_step
                        return median_ms(step, device, warmup, iters), peak_mib(step, device)

                    timed = guard.measure(impl in COMPILE_MODES, measure)
                    if timed is None:
                        continue
                    ms, peak = timed
                    lines.emit({"loss": loss_name, "shape": list(shape), "dtype": dtype_name, "impl": impl,
                                "median_ms": ms, "gbps": minimal_bytes / (ms * 1e-3) / 1e9,
                                "copy_gbps": copy_gbps, "peak_mib": peak, "iters": iters})
            del student, teacher

    lines.close()


if __name__ == "__main__":
    main()
