"""Builds the native part of the `kd_kernels` Python package: the cdylib (libkd_kernels.so) of the
`kd-kernels-capi` crate (crates/kd-kernels-capi), copied into the package, which loads it with ctypes. The
metadata is in pyproject.toml.

Why a few lines of setuptools rather than setuptools-rust or maturin: the library is a plain C ABI (no
Python extension module), so the only job is `cargo build` and a copy; doing it here adds no build
dependency and lets the build first install the pinned nvcc (scripts/install-nvcc) so that a GPU machine
gets the GPU kernels with nothing installed by hand. The wheel is tagged py3-none-<platform>: ctypes makes
it independent of the Python version.

Environment:
  KD_KERNELS_INSTALL_NVCC=0   do not run scripts/install-nvcc (build.rs still finds an nvcc in NVCC,
                              CUDA_HOME/CUDA_PATH, PATH or .tools/); without any nvcc the build is CPU-only
  KD_KERNELS_CUDA_ARCHS       passed through to build.rs (e.g. sm_90 for a faster build)
  CARGO                       the cargo to run (default: `cargo` on PATH, else ~/.cargo/bin/cargo)
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
LIBRARY = {"darwin": "libkd_kernels.dylib", "win32": "kd_kernels.dll"}.get(sys.platform, "libkd_kernels.so")


def log(message):
    print(f"kd_kernels build: {message}", file=sys.stderr, flush=True)


def nvcc_environment(env):
    """Installs the pinned nvcc into .tools/ (scripts/install-nvcc) unless told not to, and exports what it
    prints (NVCC, LIBCLANG_PATH) where the caller has not set them. A failure leaves a CPU-only build."""
    script = ROOT / "scripts" / "install-nvcc"
    if env.get("KD_KERNELS_INSTALL_NVCC", "1") == "0" or not script.is_file():
        return
    if subprocess.run(["bash", str(script)], cwd=ROOT).returncode != 0:
        log("scripts/install-nvcc failed: building without the GPU kernels (CPU reference only)")
        return
    printed = subprocess.run(["bash", str(script), "--print"], cwd=ROOT, capture_output=True, text=True)
    for line in printed.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export "):].split("=", 1)
            env.setdefault(name, value)


def cargo_command(env):
    cargo = env.get("CARGO") or shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if not Path(cargo).is_file() and not shutil.which(cargo):
        raise RuntimeError("kd_kernels needs a Rust toolchain to build (https://rustup.rs): cargo was not found")
    return cargo


def without_isolation_paths(path):
    """PATH without the bin folders pip's isolated build environment puts in front. build.rs reruns when
    PATH changes (it looks there for nvcc), so keeping the caller's PATH lets this build reuse what a plain
    `cargo build --release` already compiled (scripts/test does that first) instead of compiling every
    kernel again."""
    return os.pathsep.join(p for p in path.split(os.pathsep) if "pip-build-env-" not in p)


def build_library():
    env = dict(os.environ)
    env["PATH"] = without_isolation_paths(env.get("PATH", ""))
    nvcc_environment(env)
    cargo = cargo_command(env)
    command = [cargo, "build", "--release", "--locked", "-p", "kd-kernels-capi"]
    log(" ".join(command))
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    target = Path(env.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    built = target / "release" / LIBRARY
    if not built.is_file():
        raise RuntimeError(f"cargo finished but {built} is missing")
    return built


class BuildPyWithLibrary(build_py):
    def run(self):
        super().run()
        built = build_library()
        destination = Path(self.build_lib) / "kd_kernels" / LIBRARY
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, destination)
        log(f"{built} -> {destination}")


class PlatformWheel(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False  # a native library inside: a platform wheel

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel})
