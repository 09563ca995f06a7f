"""What every fixture recorder (`record_*.py`) shares, so that all fixtures are written, named and checked alike.

  * the fixture format of `docs/fixtures.md`: `FORMAT_VERSION`, the case dtypes (`DTYPES`), the metadata every
    file carries (`fixture_metadata`), the number formats of names and metadata (`fmt_short`, `fmt_param`), and
    `write_fixture` (safetensors with sorted metadata, so a rerun changes no bytes unless a value changes, then
    read back and compared) and `write_case` (that, and the case's line in the log);
  * the recorders' own checks: `rel_err` (the verifier's metric), `all_finite`, `FP64_RTOL`, `loss_and_grad`,
    `check_official_vs_closed`;
  * inputs: `stored_inputs` (rounded to the case's dtype, then upcast), `add_outliers` (a few large values of
    random sign, drawn from the case's generator);
  * the command line and the run: `recorder_args` (`--out`, default `tests/fixtures`; deterministic torch),
    `check_unique_names`, `finish_run` (flags files of the recorder's prefixes that this run did not write);
  * official code read at record time, for repositories whose license does not let it be copied here (CIRKD):
    `add_cirkd_source` and `load_cirkd_class` read a file from a pinned commit and refuse any other blob.
"""

import argparse
import hashlib
import json
import struct
import subprocess
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = "1"
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

# fp32 reference vs float64 recomputation (a recorder's own check, not the crate's verifier tolerance); the
# typical observed error is ~1e-7.
FP64_RTOL = 1e-4

REPO_ROOT = Path(__file__).resolve().parent.parent


def fmt_short(x):
    """Compact number for file names: 4.0 -> '4', 0.5 -> '0p5'."""
    return ("%g" % x).replace(".", "p")


def fmt_param(x):
    """Metadata parameter string: a decimal that Rust's `str::parse::<f32>` accepts."""
    return repr(float(x))


def all_finite(*tensors):
    return all(x is None or bool(torch.isfinite(x).all()) for x in tensors)


def rel_err(a, b):
    """Max abs difference relative to the reference's max magnitude (the verifier's metric)."""
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / max(scale, 1e-30)


def loss_and_grad(fn, s, *args):
    """`fn(s, *args)` and its gradient with respect to `s`, by autograd on a fresh leaf holding `s`'s values."""
    s = s.detach().clone().requires_grad_(True)
    loss = fn(s, *args)
    (grad,) = torch.autograd.grad(loss, s)
    return loss.detach(), grad


def add_outliers(x, g, magnitude):
    """Sets about 1 % of `x` (at least 2 entries) to +-`magnitude`, in place: most rows stay ordinary and some
    are dominated by one value."""
    flat = x.view(-1)
    count = max(2, flat.numel() // 100)
    idx = torch.randperm(flat.numel(), generator=g)[:count]
    signs = torch.randint(0, 2, (count,), generator=g).float() * 2 - 1
    flat[idx] = magnitude * signs
    return x


def stored_inputs(dtype, *raw):
    """The inputs as the file stores them, rounded to the case's dtype first (the stored values are what the
    reference sees), and their f32 upcasts, on which the reference is computed."""
    stored = [x.to(dtype).contiguous() for x in raw]
    return stored, [x.float() for x in stored]


def check_official_vs_closed(name, errors, rtol_f32, rtol_f64, stats):
    """Asserts the errors (official vs closed form in fp32 and float64, fp32 vs float64) are within their
    tolerances, keeps the largest of each in `stats`, and returns them as a note for the run's log."""
    e32, e64, e_ref = errors
    assert e32 <= rtol_f32, f"{name}: official vs closed form fp32 {e32:.2e}"
    assert e64 <= rtol_f64, f"{name}: official vs closed form f64 {e64:.2e}"
    assert e_ref <= FP64_RTOL, f"{name}: fp32 vs float64 {e_ref:.2e}"
    for key, v in zip(stats, errors):
        stats[key] = max(stats[key], v)
    return f"official~closed fp32 {e32:.1e}, f64 {e64:.1e}; fp32~f64 {e_ref:.1e}"


def fixture_metadata(loss, seed, description, **fields):
    """The metadata of a fixture file: the format's keys, the case's own `fields`, and its provenance."""
    return {
        "loss": loss,
        "format_version": FORMAT_VERSION,
        **fields,
        "description": description,
        "seed": str(seed),
        "torch_version": torch.__version__.split("+")[0],
    }


def canonicalize_header(path):
    """Rewrite a safetensors header with its metadata keys sorted, in place.

    The safetensors writer keeps metadata in a hash map, so the key order (and the file's
    bytes) changes from run to run. Sorting makes re-recording byte-identical, so a rerun
    shows up in `git status` only when a value really changed. The header keeps its length,
    so the data offsets stay valid.
    """
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(text) <= header_len, "canonical header longer than the original"
    text += b" " * (header_len - len(text))  # the format allows trailing spaces in the header
    path.write_bytes(raw[:8] + text + raw[8 + header_len:])


def write_fixture(path, tensors, metadata):
    """Writes one fixture file with sorted metadata, reads it back and checks every tensor (name, dtype,
    values) came back as written; returns the file's size in bytes."""
    save_file(tensors, str(path), metadata=metadata)
    canonicalize_header(path)
    reloaded = load_file(str(path))
    assert sorted(reloaded) == sorted(tensors), f"{path.name}: reload names differ"
    assert all(reloaded[k].dtype == v.dtype and torch.equal(reloaded[k], v) for k, v in tensors.items()), (
        f"{path.name}: reload mismatch")
    return path.stat().st_size


def write_case(out_dir, name, tensors, metadata, loss, grad, note):
    """Writes case `name`'s file and logs its loss, largest student gradient, size and the checks' `note`."""
    path = out_dir / f"{name}.safetensors"
    size = write_fixture(path, tensors, metadata)
    print(f"{path.name}: loss {loss.item():.9g}  max|grad.student| {grad.abs().max().item():.6e}  ({size} bytes)")
    print(f"    [{note}]")
    return path


def recorder_args(doc, add_args=None):
    """Parses `--out` (made if missing) and whatever `add_args(parser)` adds, and makes torch deterministic."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "fixtures")
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    return args


def check_unique_names(cases):
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"


def warn_stale(out, prefixes, written):
    """Flags files of this recorder's prefixes that the run did not write: leftovers of renamed cases."""
    for stale in sorted(out.glob("*.safetensors")):
        if stale.name.startswith(tuple(prefixes)) and stale.name not in written:
            print(f"warning: {stale.name} was not produced by this run (stale?)", file=sys.stderr)


def finish_run(out, prefixes, paths, stats=None):
    """The end of a run: stale files flagged, the largest errors of the checks (`stats`), the total written."""
    warn_stale(out, prefixes, {p.name for p in paths})
    if stats is not None:
        print("largest errors over all cases: " + ", ".join(f"{k} {v:.1e}" for k, v in stats.items()))
    total = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} files written to {out} ({total / 1024:.1f} KiB)")


# ---- CIRKD: no license file, so its source is read at record time from a pinned commit, never copied ----

CIRKD_COMMIT = "dab64dbb5e4172141166cf8434a80ce55d9d3aa7"


def add_cirkd_source(parser, alternative, help):
    """`--cirkd-git` (a winycg/CIRKD git directory) or `alternative` (a checkout or a copy of one file)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cirkd-git", type=Path, help="a winycg/CIRKD git directory holding the pinned commit")
    source.add_argument(alternative, type=Path, help=help)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def load_cirkd_class(args, path, blob, class_name):
    """Class `class_name` of CIRKD's `path` at CIRKD_COMMIT, from `--cirkd-git`, `--cirkd-dir` or `--cirkd-file`
    (a copy of `path`); exits unless the source is exactly the git blob `blob`."""
    if getattr(args, "cirkd_file", None) is not None:
        source, origin = args.cirkd_file.read_bytes(), str(args.cirkd_file)
    elif getattr(args, "cirkd_dir", None) is not None:
        source, origin = (args.cirkd_dir / path).read_bytes(), str(args.cirkd_dir / path)
    else:
        source = subprocess.run(["git", "--git-dir", str(args.cirkd_git), "show", f"{CIRKD_COMMIT}:{path}"],
                                check=True, capture_output=True).stdout
        origin = f"{args.cirkd_git} @ {CIRKD_COMMIT}:{path}"
    got = git_blob_id(source)
    if got != blob:
        sys.exit(f"{origin}: blob {got} is not winycg/CIRKD {path} @ {CIRKD_COMMIT} ({blob})")
    module = types.ModuleType("cirkd_" + Path(path).stem)
    exec(compile(source, f"CIRKD/{path}", "exec"), module.__dict__)
    return getattr(module, class_name)
