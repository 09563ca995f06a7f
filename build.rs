//! Build script: compiles `kernels/*.cu` to fatbins with nvcc, and generates the Rust twins of the
//! kernels' parameter blocks (`kernels/params.h`) with bindgen.
//!
//! * nvcc is looked up in `NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH`, and the git-ignored `.tools/cuda-venv`
//!   that `scripts/install-nvcc` fills. Without one, the crate builds CPU-only (a cargo warning says so)
//!   and every GPU entry point returns `KdError::KernelsUnavailable`.
//! * Targets: SASS for sm_80, sm_86, sm_89, sm_90 and PTX for compute_90, overridable with
//!   `KD_KERNELS_CUDA_ARCHS` (a comma list such as `sm_90,compute_90`).
//! * bindgen needs libclang. Where none is found (`LIBCLANG_PATH`, the tools venv, the system), the committed
//!   snapshot `src/ffi/params_bindings.rs` is used as is; where it is found, the fresh bindings are used, and
//!   with `KD_KERNELS_CHECK_BINDINGS=1` (set by `scripts/test`, which always has the pinned libclang) they must
//!   equal the snapshot or the build fails. `KD_KERNELS_BLESS_BINDINGS=1` rewrites the snapshot.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_ARCHS: &str = "sm_80,sm_86,sm_89,sm_90,compute_90";
const BINDINGS_SNAPSHOT: &str = "src/ffi/params_bindings.rs";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo::rustc-check-cfg=cfg(kd_kernels_compiled)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-changed={BINDINGS_SNAPSHOT}");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "KD_KERNELS_CUDA_ARCHS",
        "KD_KERNELS_BLESS_BINDINGS",
        "KD_KERNELS_CHECK_BINDINGS",
        "LIBCLANG_PATH",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }

    let sources = kernel_sources(&manifest.join("kernels"));
    for src in &sources {
        println!("cargo::rerun-if-changed={}", src.display());
    }
    generate_param_bindings(&manifest, &out);

    #[cfg(feature = "emulator")]
    build_emulator(&manifest, &sources);

    match find_nvcc(&manifest) {
        Some(nvcc) => {
            compile_kernels(&nvcc, &manifest, &sources, &out);
            println!("cargo::rustc-cfg=kd_kernels_compiled");
        }
        None => println!(
            "cargo::warning=kd-kernels: nvcc not found (NVCC, CUDA_HOME, CUDA_PATH, PATH, .tools/cuda-venv); \
             building CPU-only, every GPU entry point returns KdError::KernelsUnavailable. \
             Run scripts/install-nvcc to get the pinned CUDA 13.0 compiler."
        ),
    }
}

fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = fs::read_dir(dir)
        .expect("kernels/ is missing")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh" | "h")))
        .collect();
    sources.sort();
    sources
}

/// Looks for nvcc where users and our scripts put it, in order of how explicit the choice is.
fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    if let Ok(p) = env::var("NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        println!("cargo::warning=kd-kernels: NVCC={} is not a file; looking elsewhere", p.display());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(root) = env::var(var) {
            let p = Path::new(&root).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    find_in_tools_venv(manifest, &["bin", "nvcc"])
}

/// `.tools/cuda-venv/lib/python3.X/site-packages/nvidia/cu13/bin/nvcc` and the like: the Python minor
/// version and the wheel's folder names are not fixed, so search two levels of wildcards.
fn find_in_tools_venv(manifest: &Path, tail: &[&str]) -> Option<PathBuf> {
    let lib = manifest.join(".tools/cuda-venv/lib");
    for py in fs::read_dir(lib).ok()?.flatten() {
        let site = py.path().join("site-packages");
        let mut stack = vec![(site, 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let candidate = tail.iter().fold(dir.clone(), |p, part| p.join(part));
            if candidate.exists() {
                return Some(candidate);
            }
            if depth < 3 {
                if let Ok(entries) = fs::read_dir(&dir) {
                    stack.extend(entries.flatten().filter(|e| e.path().is_dir()).map(|e| (e.path(), depth + 1)));
                }
            }
        }
    }
    None
}

fn compile_kernels(nvcc: &Path, manifest: &Path, sources: &[PathBuf], out: &Path) {
    let archs = env::var("KD_KERNELS_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.to_string());
    let gencode = gencode_flags(&archs);
    let kernels_dir = manifest.join("kernels");
    let units: Vec<&PathBuf> = sources.iter().filter(|p| p.extension().is_some_and(|e| e == "cu")).collect();
    // One nvcc per translation unit, in parallel: each is a few seconds per architecture.
    std::thread::scope(|scope| {
        let handles: Vec<_> = units
            .iter()
            .map(|src| {
                let gencode = &gencode;
                let kernels_dir = &kernels_dir;
                scope.spawn(move || {
                    let stem = src.file_stem().unwrap().to_str().unwrap().to_string();
                    let fatbin = out.join(format!("{stem}.fatbin"));
                    let output = Command::new(nvcc)
                        .arg("-fatbin")
                        .args(["-O3", "-std=c++17", "-lineinfo", "--Werror", "all-warnings"])
                        .args(["-Xptxas", "-warn-spills"])
                        .arg("-I")
                        .arg(kernels_dir)
                        .args(gencode)
                        .arg(src)
                        .arg("-o")
                        .arg(&fatbin)
                        .output()
                        .unwrap_or_else(|e| panic!("kd-kernels: cannot run {}: {e}", nvcc.display()));
                    if !output.status.success() {
                        panic!(
                            "kd-kernels: nvcc failed on {}:\n{}{}",
                            src.display(),
                            String::from_utf8_lossy(&output.stdout),
                            String::from_utf8_lossy(&output.stderr)
                        );
                    }
                    stem
                })
            })
            .collect();
        let stems: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut rs = String::from(
            "// Generated by build.rs: the fatbin of every kernels/*.cu, by file stem.\n\
             pub(crate) fn fatbin(stem: &str) -> Option<&'static [u8]> {\n    match stem {\n",
        );
        for stem in stems {
            rs.push_str(&format!(
                "        \"{stem}\" => Some(include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.fatbin\"))),\n"
            ));
        }
        rs.push_str("        _ => None,\n    }\n}\n");
        fs::write(out.join("fatbins.rs"), rs).unwrap();
    });
}

fn gencode_flags(archs: &str) -> Vec<String> {
    let mut flags = Vec::new();
    for arch in archs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let (kind, number) = arch
            .split_once('_')
            .unwrap_or_else(|| panic!("KD_KERNELS_CUDA_ARCHS: `{arch}` is not of the form sm_NN or compute_NN"));
        match kind {
            "sm" => flags.push(format!("-gencode=arch=compute_{number},code=sm_{number}")),
            "compute" => flags.push(format!("-gencode=arch=compute_{number},code=compute_{number}")),
            _ => panic!("KD_KERNELS_CUDA_ARCHS: `{arch}` is not of the form sm_NN or compute_NN"),
        }
    }
    assert!(!flags.is_empty(), "KD_KERNELS_CUDA_ARCHS names no architecture");
    flags
}

/// Runs bindgen on kernels/params.h when libclang can be loaded, checks the result against the committed
/// snapshot, and puts the bindings in OUT_DIR either way.
fn generate_param_bindings(manifest: &Path, out: &Path) {
    let header = manifest.join("kernels/params.h");
    let snapshot_path = manifest.join(BINDINGS_SNAPSHOT);
    let snapshot = fs::read_to_string(&snapshot_path).unwrap_or_default();
    if env::var_os("LIBCLANG_PATH").is_none() {
        if let Some(lib) = find_in_tools_venv(manifest, &["clang", "native", "libclang.so"]) {
            // SAFETY: build scripts are single-threaded at this point; clang-sys reads the variable next.
            env::set_var("LIBCLANG_PATH", lib.parent().unwrap());
        }
    }
    let fresh = match run_bindgen(&header) {
        Some(fresh) => fresh,
        None => {
            assert!(
                !snapshot.is_empty(),
                "kd-kernels: libclang not found and {BINDINGS_SNAPSHOT} is missing; run scripts/install-nvcc"
            );
            println!(
                "cargo::warning=kd-kernels: libclang not found; using the committed {BINDINGS_SNAPSHOT} \
                 (scripts/install-nvcc provides libclang so the build can check it against kernels/params.h)"
            );
            fs::write(out.join("params.rs"), &snapshot).unwrap();
            return;
        }
    };
    if fresh != snapshot {
        if env::var_os("KD_KERNELS_BLESS_BINDINGS").is_some() {
            fs::write(&snapshot_path, &fresh).unwrap();
        } else if env::var_os("KD_KERNELS_CHECK_BINDINGS").is_some() {
            panic!(
                "kd-kernels: kernels/params.h and {BINDINGS_SNAPSHOT} disagree. \
                 Rebuild with KD_KERNELS_BLESS_BINDINGS=1 to regenerate it, review the diff, and commit it."
            );
        } else {
            // Another libclang may format the same declarations differently: the fresh bindings are right
            // for this header either way; scripts/test checks the snapshot with the pinned libclang.
            println!("cargo::warning=kd-kernels: {BINDINGS_SNAPSHOT} differs from bindgen's output; using the fresh bindings");
        }
    }
    fs::write(out.join("params.rs"), &fresh).unwrap();
}

fn run_bindgen(header: &Path) -> Option<String> {
    // bindgen panics when libclang cannot be loaded; treat that as "not available" rather than a failure.
    let header = header.to_path_buf();
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(move || {
        bindgen::Builder::default()
            .header(header.to_str().unwrap())
            .allowlist_type("Kd.*")
            .allowlist_var("KD_.*")
            .derive_default(true)
            .derive_debug(true)
            .derive_copy(true)
            .layout_tests(true)
            .use_core()
            .formatter(bindgen::Formatter::Prettyplease) // independent of the rustfmt installed
            .raw_line("// Generated by bindgen from kernels/params.h; do not edit (see build.rs).")
            .generate()
            .ok()
            .map(|b| b.to_string())
    });
    std::panic::set_hook(previous_hook);
    result.ok().flatten()
}

/// Compiles every kernel file for the host with the CUDA emulation of kernels/emulator (tests only): each
/// `kernels/*.cu` as C++ with `KD_EMULATE`, where its entry points register themselves by name, and the
/// emulator's own sources. Linked whole, so that the registrations (static initialisers nothing else refers
/// to) are kept.
#[cfg(feature = "emulator")]
fn build_emulator(manifest: &Path, sources: &[PathBuf]) {
    println!("cargo::rerun-if-env-changed=KD_EMU_SANITIZE");
    // KD_EMU_SANITIZE=1 (scripts/test-sanitizers): UndefinedBehaviorSanitizer over everything emulated, and
    // AddressSanitizer over the emulator's runtime (the kernels' own accesses go through the checks' hooks).
    let sanitize = env::var("KD_EMU_SANITIZE").is_ok_and(|v| v == "1");
    let dir = manifest.join("kernels/emulator");
    let base = || {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .std("c++20")
            .opt_level(2)
            .warnings_into_errors(true)
            .flag_if_supported("-Wno-unknown-pragmas")
            // CUDA code reinterprets 128-bit loads as arrays of elements; nvcc allows it, g++ -O2 needs this.
            .flag("-fno-strict-aliasing")
            .define("KD_EMULATE", "1")
            .include(manifest.join("kernels"));
        if sanitize {
            build.flag("-fsanitize=undefined").flag("-fno-sanitize-recover=undefined").flag("-fno-omit-frame-pointer");
        }
        build
    };
    // The runtime (launcher, fibers, the checks' hooks): not instrumented, or the hooks would call themselves.
    let mut runtime = base();
    for entry in fs::read_dir(&dir).expect("kernels/emulator is missing").flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "cpp") {
            println!("cargo::rerun-if-changed={}", path.display());
            runtime.file(path);
        }
    }
    runtime.link_lib_modifier("+whole-archive").compile("kd_kernels_emulator_runtime");
    // The kernels: every load and store calls the checks' hooks (kernels/emulator/checks.h).
    let mut kernels = base();
    kernels
        .flag("-fsanitize=kernel-address")
        .flag("--param=asan-instrumentation-with-call-threshold=0")
        .flag("--param=asan-stack=0")
        .flag("--param=asan-globals=0")
        .flag("--param=asan-use-after-return=0")
        .link_lib_modifier("+whole-archive");
    // g++ does not know the .cu extension: `-x c++` names the language of the files that follow.
    kernels.flag("-x").flag("c++");
    for src in sources.iter().filter(|p| p.extension().is_some_and(|e| e == "cu")) {
        kernels.file(src);
    }
    // The checks' deliberately broken kernels (tests/emulator_checks.rs): in the emulation only.
    for src in kernel_sources(&dir.join("selftest")) {
        println!("cargo::rerun-if-changed={}", src.display());
        if src.extension().is_some_and(|e| e == "cu") {
            kernels.file(src);
        }
    }
    kernels.compile("kd_kernels_emulator");
    println!("cargo::rustc-link-lib=pthread");
    if sanitize {
        println!("cargo::rustc-link-lib=ubsan");
    }
}
