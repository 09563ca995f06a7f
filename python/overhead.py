"""Host time of one loss call at a tiny CPU shape: the whole Python + dispatcher + C ABI path, which sets the
time of small calls on a GPU too (the CPU reference's arithmetic at this shape is a few hundred flops).

    python python/overhead.py            # a table of microseconds per call (median of repeats)
    python python/overhead.py --json

Times are the calling thread's CPU time (``time.thread_time_ns``, one intra-op thread), not wall time: on a
shared machine other processes then do not count, and the figure is the host work a call costs.

Rows: ``cwd_loss`` with no gradient asked for (inputs that do not require grad), with the student's
gradient asked for (the op computes it with the loss), forward + ``backward()``; the same under
``torch.compile(fullgraph=True)`` (inductor); PyTorch's own ``kl_div`` forward + backward at the same shape,
eager and compiled, for scale. ``--no-fullgraph`` compiles without ``fullgraph`` (for versions of the package
that break the graph).
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import kd_kernels

SHAPE = (1, 2, 2, 2)


def per_call_us(fn, calls, repeats):
    for _ in range(calls // 10 + 10):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.thread_time_ns()
        for _ in range(calls):
            fn()
        samples.append((time.thread_time_ns() - start) / calls / 1e3)
    return statistics.median(samples)


def cases(fullgraph):
    student = torch.randn(SHAPE).requires_grad_(True)
    teacher = torch.randn(SHAPE)
    plain = student.detach()

    def no_grad():
        kd_kernels.cwd_loss(plain, teacher)

    def forward():
        kd_kernels.cwd_loss(student, teacher)

    def forward_backward():
        kd_kernels.cwd_loss(student, teacher).backward()

    def kl_div(s, t):
        return F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")

    def kl_div_forward_backward():
        kl_div(student, teacher).backward()

    compiled_kl_div = torch.compile(kl_div, fullgraph=True, dynamic=False)

    def compiled_kl_div_forward_backward():
        compiled_kl_div(student, teacher).backward()

    compiled = torch.compile(lambda s, t: kd_kernels.cwd_loss(s, t), fullgraph=fullgraph, dynamic=False)

    def compiled_forward():
        compiled(student, teacher)

    def compiled_forward_backward():
        compiled(student, teacher).backward()

    def compiled_no_grad():
        compiled(plain, teacher)

    return {
        "cwd_loss, no gradient asked": no_grad,
        "cwd_loss, forward (gradient computed with the loss)": forward,
        "cwd_loss, forward + backward": forward_backward,
        "compiled cwd_loss, no gradient asked": compiled_no_grad,
        "compiled cwd_loss, forward": compiled_forward,
        "compiled cwd_loss, forward + backward": compiled_forward_backward,
        "torch kl_div (log_softmax, softmax), forward + backward": kl_div_forward_backward,
        "compiled torch kl_div, forward + backward": compiled_kl_div_forward_backward,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-fullgraph", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {name: per_call_us(fn, args.calls, args.repeats) for name, fn in cases(not args.no_fullgraph).items()}
    if args.json:
        print(json.dumps({"shape": SHAPE, "torch": torch.__version__, "us_per_call": results}))
        return
    print(f"torch {torch.__version__}, CPU, shape {'x'.join(map(str, SHAPE))}, f32; median of {args.repeats} x "
          f"{args.calls} calls\n")
    print("| call | us per call |\n|---|---|")
    for name, us in results.items():
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
