"""Benchmark the PyTorch baselines for SKD and CIRKD (the official modules, eager and torch.compile) and the
crate (`impl` `ours`: `kd_kernels.skd_loss` / `kd_kernels.cirkd_loss` of the installed package, the fused
kernels on CUDA).

Times forward + backward (into the student) and measures the peak memory of one step, with the JSON fields
of `bench_torch.py` (`loss`, `shape`, `dtype`, `impl`, `median_ms`, `iters`, `device`, `torch`, `date`) plus
`teacher_shape`, `pool`, `peak_mib` (CUDA only: the peak of `torch.cuda.max_memory_allocated` during one
step, above what was allocated before it) and `status` (`ok`; `oom` where the official code does not fit, then
there is no time; `compile_failed` with the `error`: on the CPU torch.compile traces the CIRKD module's
`torch.tensor(0.).cuda()` into its graph and fails without a GPU). The official modules are CIRKD's, read from a CIRKD git directory or checkout as
`record_skd_cirkd_fixtures.py` reads them (the repository has no license file: nothing of it is copied here):

  * SKD, `CriterionStructuralKD()` (its 2x2 max pool, `P x P` similarities per image), on
    8x512x64x128 (student and teacher), the issue's size;
  * CIRKD, `CriterionMiniBatchCrossImagePair(0.1)` (every ordered pair of the batch, `P x P` logits each),
    on 8x256x64x128 unpooled (the official rule pools only from 256x256 up: P = 8192, 64 pairs) and pooled
    (`nn.AvgPool2d(4, ceil_mode=True)` in front, the official pool: P = 512).

Dtypes: f32 and bf16 inputs; bf16 is upcast inside the step (`.float()`), as the crate upcasts (`ours` takes
the bf16 features as they are). `ours` runs the same pools as the official rows (`pool` 2 for SKD; `none` and
`4` for CIRKD). On the CPU `ours` is the crate's f64 reference, not a baseline: it runs only when `--impls`
names it. With `--device cpu --quick` it runs tiny shapes (a smoke test, a few seconds plus torch.compile's
first compile).

    .venv-torch/bin/python python-reference/bench_skd_cirkd.py --cirkd-git /tmp/CIRKD/.git [--out bench.jsonl]
    .venv-torch/bin/python python-reference/bench_skd_cirkd.py --cirkd-git /tmp/CIRKD/.git --device cpu --quick
    .venv-torch/bin/python python-reference/bench_skd_cirkd.py --cirkd-git /tmp/CIRKD/.git --impls ours
"""

import contextlib
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    DTYPES, JsonLines, bench_device, bench_parser, compile_error, fresh_compile, iteration_counts, median_ms,
    peak_mib)
from record_common import add_cirkd_source  # noqa: E402
from record_skd_cirkd_fixtures import load_official  # noqa: E402

CIRKD_TAU = 0.1

# name -> (loss, student shape, teacher channels, pool)
CASES = {
    "skd": ("skd", (8, 512, 64, 128), 512, "2"),
    "cirkd_unpooled": ("cirkd", (8, 256, 64, 128), 256, "none"),
    "cirkd_pooled": ("cirkd", (8, 256, 64, 128), 256, "4"),
}
QUICK_CASES = {
    "skd": ("skd", (2, 16, 16, 12), 16, "2"),
    "cirkd_unpooled": ("cirkd", (2, 8, 16, 12), 8, "none"),
    "cirkd_pooled": ("cirkd", (2, 8, 16, 12), 8, "4"),
}


@contextlib.contextmanager
def cuda_as_identity(device):
    """The CIRKD module's `torch.tensor(0.).cuda()` accumulator stays on the CPU when the bench does."""
    if device.type == "cuda":
        yield
        return
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


def inputs(case, dtype, device):
    loss, shape, ct, pool = case
    n, cs, h, w = shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    s = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    t = torch.randn((n, ct, h, w), generator=gen).to(device=device, dtype=dtype)
    return s, t


def official(classes, case, s, t):
    """The official module's step on `s`, `t` (upcast to f32), with the case's pool in front."""
    loss, _, _, pool = case
    if loss == "skd":
        module = classes["skd"]()

        def fn():
            return module(s.float(), t.float())
    else:
        module = classes["cirkd"](CIRKD_TAU)
        pre = nn.AvgPool2d(kernel_size=int(pool), stride=int(pool), ceil_mode=True) if pool != "none" else None

        def fn():
            fs, ft = s.float(), t.float()
            if pre is not None:
                fs, ft = pre(fs), pre(ft)
            return module(fs, ft)
    return fn


def ours(case, s, t):
    """The crate's step through the installed kd_kernels package, with the case's pool."""
    import kd_kernels  # only where `ours` is asked for: the baselines need no build of the crate

    loss, _, _, pool = case
    if loss == "skd":
        return lambda: kd_kernels.skd_loss(s, t, pool=int(pool))
    return lambda: kd_kernels.cirkd_loss(s, t, CIRKD_TAU, pool=pool if pool == "none" else int(pool))


def main():
    parser = bench_parser("PyTorch eager / torch.compile baselines for SKD and CIRKD, and the crate (ours).",
                          quick_help="tiny shapes and few iterations, for a smoke test",
                          impls=("eager", "compile", "ours"),
                          impls_help="default: all of them on CUDA; eager and compile on the CPU")
    parser.set_defaults(impls=None)
    add_cirkd_source(parser, "--cirkd-dir", "a winycg/CIRKD checkout at the pinned commit")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    args = parser.parse_args()

    device = bench_device(args)
    impls = args.impls or (["eager", "compile", "ours"] if device.type == "cuda" else ["eager", "compile"])
    warmup, iters = iteration_counts(args, device)
    classes = load_official(args)
    cases = QUICK_CASES if args.quick else CASES
    lines = JsonLines(device, args.out)

    with cuda_as_identity(device):
        for name in args.cases:
            case = cases[name]
            _, shape, ct, pool = case
            record = {"shape": list(shape), "teacher_shape": [shape[0], ct, *shape[2:]], "pool": pool}
            for dtype_name in args.dtypes:
                s, t = inputs(case, DTYPES[dtype_name], device)
                for impl in impls:
                    fn = ours(case, s, t) if impl == "ours" else official(classes, case, s, t)
                    step_fn = fresh_compile(fn) if impl == "compile" else fn

                    def step():
                        s.grad = None
                        step_fn().backward()

                    line = {"loss": case[0], **record, "dtype": dtype_name, "impl": impl, "case": name}
                    try:
                        step()  # compiles, and fails early where the official code does not fit
                        line["peak_mib"] = peak_mib(step, device)
                        line["median_ms"] = median_ms(step, device, warmup, iters)
                        line["iters"] = iters
                        line["status"] = "ok"
                    except torch.OutOfMemoryError:
                        line["status"] = "oom"
                    except Exception as exc:  # noqa: BLE001 - a compile failure is reported, not fatal
                        if impl != "compile":
                            raise
                        line["status"] = "compile_failed"
                        line["error"] = compile_error(exc)
                    finally:
                        s.grad = None
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    lines.emit(line)
                del s, t
    lines.close()


if __name__ == "__main__":
    main()
