"""Benchmark the PyTorch baselines of IFVD (docs/losses.md §11) that `benches/ifvd.rs` is compared against.

Times forward + backward (`loss.backward()` with respect to the student) of
  * `eager` and `compile`: the official algorithm, a Python loop over the classes building full-size masks
    (`ifvd_reference.ifvd_class_loop`), in eager mode and under `torch.compile` (default mode, one static
    compile per configuration);
  * `closed_form`: the vectorised scatter-add form (`ifvd_reference.ifvd_closed_form`), eager,
on 8x256x64x128 student and teacher features with labels at 512x1024 (the Cityscapes crop) and 19 classes,
and 150 classes (ADE20K) on the same features, for f32 and bf16 inputs. Labels are 16x32 patches of random
classes with one patch in ten 255, as `benches/ifvd.rs` draws them.

`gbps` counts minimal traffic only (student and teacher read once, the gradient written once), as the
crate's bench. Output: one JSON object per line on stdout (and in `--out FILE`), with the copy bandwidth of
a buffer as large as student + teacher measured in the same run.

    .venv-torch/bin/python python-reference/bench_ifvd.py                  # CUDA if present
    .venv-torch/bin/python python-reference/bench_ifvd.py --device cpu --quick --shapes 2x64x16x32 --impls eager closed_form
"""

import sys
from pathlib import Path

import torch

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    DTYPES, JsonLines, bench_device, bench_parser, fresh_compile, iteration_counts, median_ms, parse_shape,
    time_copy)
from ifvd_reference import ifvd_class_loop, ifvd_closed_form  # noqa: E402

DEFAULT_SHAPES = ["8x256x64x128"]
DEFAULT_CLASSES = [19, 150]
IMPLS = {"eager": ifvd_class_loop, "compile": ifvd_class_loop, "closed_form": ifvd_closed_form}


def patch_labels(n, h, w, classes, generator):
    rows, cols = -(-h // 16), -(-w // 32)
    patches = torch.randint(0, classes, (n, rows, cols), generator=generator)
    patches[torch.rand((n, rows, cols), generator=generator) < 0.1] = 255
    return patches.repeat_interleave(16, 1)[:, :h].repeat_interleave(32, 2)[:, :, :w]


def main():
    parser = bench_parser("PyTorch baselines of IFVD.", impls=list(IMPLS))
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in DEFAULT_SHAPES])
    parser.add_argument("--classes", nargs="+", type=int, default=DEFAULT_CLASSES)
    args = parser.parse_args()
    device = bench_device(args)
    warmup, iters = iteration_counts(args, device)
    lines = JsonLines(device, args.out)
    g = torch.Generator().manual_seed(19)
    for shape in args.shapes:
        n, c, h, w = shape
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            student = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
            teacher = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
            itemsize = student.element_size()
            copy_gbps = time_copy(lines, (student, teacher), list(shape), dtype_name, device, warmup, iters)
            for classes in args.classes:
                labels = patch_labels(n, 8 * h, 8 * w, classes, g).to(device)
                for impl in args.impls:
                    fn = fresh_compile(IMPLS[impl]) if impl == "compile" else IMPLS[impl]
                    s = student.detach().clone().requires_grad_(True)

                    def step():
                        s.grad = None
                        # bf16 features are upcast inside the loss, as the crate computes in fp32.
                        fn(s.float() if dtype != torch.float32 else s, teacher.float(), labels, classes).backward()

                    ms = median_ms(step, device, warmup, iters)
                    lines.emit({"loss": "ifvd", "shape": list(shape), "classes": classes, "dtype": dtype_name,
                                "impl": impl, "median_ms": ms, "gbps": 3 * student.numel() * itemsize / (ms * 1e-3) / 1e9,
                                "copy_gbps": copy_gbps, "iters": iters})
    lines.close()


if __name__ == "__main__":
    main()
