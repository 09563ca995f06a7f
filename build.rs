//! Build script: compiles `kernels/*.cu` to fatbins with nvcc, and generates the Rust twins of the
//! kernels' parameter blocks (`kernels/params.h` and each family's `kernels/{family}.h`) with bindgen.
//!
//! * nvcc is looked up in `NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH`, and the git-ignored `.tools/cuda-venv`
//!   that `scripts/install-nvcc` fills. Without one, the crate builds CPU-only (a cargo warning says so)
//!   and every GPU entry point returns `KdError::KernelsUnavailable`.
//! * Targets: SASS for sm_80, sm_86, sm_89, sm_90 and PTX for compute_90, overridable with
//!   `KD_KERNELS_CUDA_ARCHS` (a comma list such as `sm_90,compute_90`).
//! * Every compiled entry point's resources per SASS architecture (registers and static shared memory from
//!   ptxas's `--resource-usage` report, the block size from its PTX's `.maxntid`) go into
//!   `OUT_DIR/kernel_resources.rs`, which `src/hw.rs` includes (an empty table without nvcc); the launch-limit
//!   tests check every planned launch against them.
//! * Compiled units are cached in `<target>/kd-kernels-nvcc-cache`, keyed by the sources, flags, architectures
//!   and nvcc, so the other profiles and feature sets of one target directory reuse them ([`KernelCache`];
//!   `KD_KERNELS_NVCC_CACHE=0` turns it off).
//! * bindgen runs once per header of `kernels/`, on that header's own declarations; the committed snapshot
//!   `src/ffi/params_bindings.rs` is all of them, `params.h` first. bindgen needs libclang. Where none is found
//!   (`LIBCLANG_PATH`, the tools venv, the system), the snapshot is used as is; where it is found, the fresh
//!   bindings are used, and with `KD_KERNELS_CHECK_BINDINGS=1` (set by `scripts/test`, which always has the
//!   pinned libclang) they must equal the snapshot or the build fails. `KD_KERNELS_BLESS_BINDINGS=1` rewrites
//!   the snapshot.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_ARCHS: &str = "sm_80,sm_86,sm_89,sm_90,compute_90";
/// The committed bindings of every header of kernels/ (one file: generated code, never edited).
const BINDINGS_SNAPSHOT: &str = "src/ffi/params_bindings.rs";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo::rustc-check-cfg=cfg(kd_kernels_compiled)");
    println!("cargo::rustc-check-cfg=cfg(kd_emulator_ubsan)");
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
        None => {
            write_resource_table(&out, &[]);
            println!(
                "cargo::warning=kd-kernels: nvcc not found (NVCC, CUDA_HOME, CUDA_PATH, PATH, .tools/cuda-venv); \
             building CPU-only, every GPU entry point returns KdError::KernelsUnavailable. \
             Run scripts/install-nvcc to get the pinned CUDA 13.0 compiler."
            );
        }
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

/// nvcc's flags besides the architectures and the files.
const NVCC_FLAGS: &[&str] = &[
    "-fatbin",
    "-O3",
    "-std=c++17",
    "-lineinfo",
    "--Werror",
    "all-warnings",
    "-Xptxas",
    "-warn-spills",
    "--resource-usage",
];

fn compile_kernels(nvcc: &Path, manifest: &Path, sources: &[PathBuf], out: &Path) {
    let archs = env::var("KD_KERNELS_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.to_string());
    let gencode = gencode_flags(&archs);
    let kernels_dir = manifest.join("kernels");
    let units: Vec<&PathBuf> = sources.iter().filter(|p| p.extension().is_some_and(|e| e == "cu")).collect();
    let cache = KernelCache::new(nvcc, sources, &gencode, out);
    // One nvcc per translation unit, in parallel: each is a few seconds per architecture.
    std::thread::scope(|scope| {
        let handles: Vec<_> = units
            .iter()
            .map(|src| {
                let gencode = &gencode;
                let kernels_dir = &kernels_dir;
                let cache = &cache;
                scope.spawn(move || {
                    let stem = src.file_stem().unwrap().to_str().unwrap().to_string();
                    let fatbin = out.join(format!("{stem}.fatbin"));
                    if let Some(resources) = cache.fetch(&stem, &fatbin) {
                        return (stem, resources);
                    }
                    // nvcc keeps each architecture's PTX here, which has the entry points' `.maxntid`.
                    let keep = out.join(format!("keep-{stem}"));
                    let _ = fs::remove_dir_all(&keep);
                    fs::create_dir_all(&keep).unwrap();
                    let output = Command::new(nvcc)
                        .args(NVCC_FLAGS)
                        .arg("-keep")
                        .arg("-keep-dir")
                        .arg(&keep)
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
                    let report = format!(
                        "{}{}",
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    );
                    // The check-only stub (scripts/nvcc-check-stub) writes empty outputs and reports nothing:
                    // there is nothing to measure or keep, and its build never runs a kernel.
                    let stubbed = !fs::metadata(&fatbin).is_ok_and(|m| m.len() > 0);
                    let resources = if stubbed { Vec::new() } else { kernel_resources(&stem, &report, &keep) };
                    if !stubbed {
                        cache.store(&stem, &fatbin, &resources);
                    }
                    let _ = fs::remove_dir_all(&keep);
                    (stem, resources)
                })
            })
            .collect();
        let compiled: Vec<(String, Vec<Resources>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut rs = String::from(
            "// Generated by build.rs: the fatbin of every kernels/*.cu, by file stem.\n\
             pub(crate) fn fatbin(stem: &str) -> Option<&'static [u8]> {\n    match stem {\n",
        );
        for (stem, _) in &compiled {
            rs.push_str(&format!(
                "        \"{stem}\" => Some(include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{stem}.fatbin\"))),\n"
            ));
        }
        rs.push_str("        _ => None,\n    }\n}\n");
        let resources: Vec<Resources> = compiled.into_iter().flat_map(|(_, r)| r).collect();
        write_resource_table(out, &resources);
        fs::write(out.join("fatbins.rs"), rs).unwrap();
    });
}

/// Compiled fatbins and their resource reports, shared by every build of the crate in one target directory.
///
/// Cargo runs this script once per profile and feature set (the clippy, release, test and adapter builds of
/// `scripts/test` are four), and each run used to compile every kernel for every architecture again: minutes
/// of nvcc on two cores for identical outputs. The cache key is everything nvcc's output depends on: the
/// kernel sources (every file of `kernels/` the units include), the flags and architectures, and the nvcc
/// binary itself (its path, size and modification time). Entries are written whole and renamed into place,
/// so builds running side by side never read a partial one. `KD_KERNELS_NVCC_CACHE=0` turns it off.
struct KernelCache {
    dir: Option<PathBuf>,
}

impl KernelCache {
    fn new(nvcc: &Path, sources: &[PathBuf], gencode: &[String], out: &Path) -> Self {
        println!("cargo::rerun-if-env-changed=KD_KERNELS_NVCC_CACHE");
        if env::var("KD_KERNELS_NVCC_CACHE").is_ok_and(|v| v == "0") {
            return KernelCache { dir: None };
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for src in sources {
            src.file_name().hash(&mut h);
            fs::read(src).unwrap_or_default().hash(&mut h);
        }
        NVCC_FLAGS.hash(&mut h);
        gencode.hash(&mut h);
        nvcc.hash(&mut h);
        if let Ok(meta) = fs::metadata(nvcc) {
            meta.len().hash(&mut h);
            meta.modified().ok().hash(&mut h);
        }
        // OUT_DIR is <target>/[<triple>/]<profile>/build/<package>-<hash>/out: the cache sits beside the profiles.
        let root = out.ancestors().nth(4).map(|t| t.join("kd-kernels-nvcc-cache"));
        KernelCache { dir: root.map(|r| r.join(format!("{:016x}", h.finish()))) }
    }

    /// Copies a cached unit's fatbin to `fatbin` and returns its resources, if the cache has it.
    fn fetch(&self, stem: &str, fatbin: &Path) -> Option<Vec<Resources>> {
        let dir = self.dir.as_ref()?.join(stem);
        let table = fs::read_to_string(dir.join("resources.txt")).ok()?;
        let resources: Option<Vec<Resources>> = table.lines().map(Resources::parse).collect();
        fs::copy(dir.join("unit.fatbin"), fatbin).ok()?;
        resources
    }

    fn store(&self, stem: &str, fatbin: &Path, resources: &[Resources]) {
        let Some(dir) = &self.dir else { return };
        let staging = dir.join(format!(".{stem}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        let written = fs::create_dir_all(&staging)
            .and_then(|_| fs::copy(fatbin, staging.join("unit.fatbin")))
            .and_then(|_| {
                let table: String = resources.iter().map(|r| r.line() + "\n").collect();
                fs::write(staging.join("resources.txt"), table)
            })
            .and_then(|_| fs::rename(&staging, dir.join(stem)));
        if written.is_err() {
            // Another build stored the same unit first, or the disk refused: the cache is only a shortcut.
            let _ = fs::remove_dir_all(&staging);
        }
    }
}

/// One entry point's resources on one SASS architecture.
#[derive(Debug, Clone, PartialEq)]
struct Resources {
    kernel: String,
    arch: u32,
    registers: u32,
    static_smem: u32,
    max_threads: u32,
    spill_bytes: u32,
}

impl Resources {
    /// One line of the kernel cache's table.
    fn line(&self) -> String {
        let Resources { kernel, arch, registers, static_smem, max_threads, spill_bytes } = self;
        format!("{kernel} {arch} {registers} {static_smem} {max_threads} {spill_bytes}")
    }

    fn parse(line: &str) -> Option<Self> {
        let mut f = line.split(' ');
        let kernel = f.next()?.to_string();
        let mut n = || f.next()?.parse::<u32>().ok();
        let r =
            Resources { kernel, arch: n()?, registers: n()?, static_smem: n()?, max_threads: n()?, spill_bytes: n()? };
        Some(r)
    }
}

/// Joins ptxas's report (registers, static shared memory, spills per entry point and `sm_NN`) with the
/// `.maxntid` of each entry point in the kept PTX of the same architecture. Panics when the two disagree or a
/// number is missing: a report format this parser does not know must stop the build, not empty the table.
fn kernel_resources(stem: &str, report: &str, keep: &Path) -> Vec<Resources> {
    let mut found: Vec<Resources> = Vec::new();
    let mut current: Option<usize> = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let (kernel, rest) = rest.split_once('\'').expect("ptxas report: entry function name");
            let arch = rest.split("'sm_").nth(1).and_then(|a| a.trim_end_matches('\'').parse().ok());
            let arch = arch.unwrap_or_else(|| panic!("kd-kernels: ptxas report line without sm_NN: {line}"));
            found.push(Resources {
                kernel: kernel.to_string(),
                arch,
                registers: u32::MAX,
                static_smem: 0,
                max_threads: 0,
                spill_bytes: 0,
            });
            current = Some(found.len() - 1);
        } else if let Some(name) = line.split("Function properties for ").nth(1) {
            // A device function ptxas kept out of line reports its own stack and spills: not the entry's.
            current = current.filter(|&i| found[i].kernel == name.trim());
        } else if let Some(i) = current {
            let number_before = |unit: &str| -> Option<u32> {
                let at = line.find(unit)?;
                line[..at].trim_end().rsplit([' ', ',']).next()?.parse().ok()
            };
            if line.contains("Used ") && line.contains(" registers") {
                found[i].registers = number_before(" registers").expect("ptxas report: registers");
                // ptxas leaves out the shared memory when a function has none.
                found[i].static_smem = number_before(" bytes smem").unwrap_or(0);
            } else if line.contains("spill stores") {
                let stores = number_before(" bytes spill stores").unwrap_or(0);
                let loads = number_before(" bytes spill loads").unwrap_or(0);
                found[i].spill_bytes = stores + loads;
            }
        }
    }
    let archs: Vec<u32> = {
        let mut a: Vec<u32> = found.iter().map(|r| r.arch).collect();
        a.sort();
        a.dedup();
        a
    };
    for arch in archs {
        // nvcc names the kept PTX `{stem}.compute_NN.ptx` when it compiles for several virtual architectures,
        // and `{stem}.ptx` when for one.
        let named = keep.join(format!("{stem}.compute_{arch}.ptx"));
        let ptx_path = if named.exists() { named } else { keep.join(format!("{stem}.ptx")) };
        let ptx = fs::read_to_string(&ptx_path)
            .unwrap_or_else(|e| panic!("kd-kernels: cannot read the kept PTX {}: {e}", ptx_path.display()));
        let mut entry: Option<String> = None;
        for line in ptx.lines() {
            if let Some(rest) = line.split(".entry ").nth(1) {
                entry = Some(rest.trim_end_matches('(').trim().to_string());
            } else if let (Some(name), Some(rest)) = (&entry, line.trim().strip_prefix(".maxntid")) {
                let threads: u32 = rest.split(',').map(|d| d.trim().parse::<u32>().expect("PTX .maxntid")).product();
                for r in found.iter_mut().filter(|r| r.arch == arch && &r.kernel == name) {
                    r.max_threads = threads;
                }
                entry = None;
            }
        }
    }
    for r in &found {
        assert!(
            r.registers != u32::MAX && r.max_threads != 0,
            "kd-kernels: incomplete resources for {} on sm_{} (ptxas report or PTX .maxntid missing): {r:?}",
            r.kernel,
            r.arch
        );
    }
    assert!(!found.is_empty(), "kd-kernels: ptxas reported no entry point of {stem}.cu:\n{report}");
    found
}

/// `OUT_DIR/kernel_resources.rs`: the table `src/hw.rs` includes.
fn write_resource_table(out: &Path, resources: &[Resources]) {
    let mut rs = String::from(
        "// Generated by build.rs from ptxas's --resource-usage report and the PTX's .maxntid: every compiled\n\
         // entry point on every SASS architecture. Empty when the build had no nvcc.\n\
         pub(crate) const KERNEL_RESOURCES: &[KernelResources] = &[\n",
    );
    let mut sorted = resources.to_vec();
    sorted.sort_by(|a, b| (a.arch, &a.kernel).cmp(&(b.arch, &b.kernel)));
    for r in sorted {
        rs.push_str(&format!(
            "    KernelResources {{ kernel: \"{}\", arch: {}, registers: {}, static_smem: {}, max_threads: {}, \
             spill_bytes: {} }},\n",
            r.kernel, r.arch, r.registers, r.static_smem, r.max_threads, r.spill_bytes
        ));
    }
    rs.push_str("];\n");
    fs::write(out.join("kernel_resources.rs"), rs).unwrap();
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

/// Runs bindgen on each header of kernels/ when libclang can be loaded, checks the result (every header's
/// bindings, `params.h` first) against the committed snapshot, and puts the bindings in OUT_DIR either way.
fn generate_param_bindings(manifest: &Path, out: &Path) {
    if env::var_os("LIBCLANG_PATH").is_none() {
        if let Some(lib) = find_in_tools_venv(manifest, &["clang", "native", "libclang.so"]) {
            // SAFETY: build scripts are single-threaded at this point; clang-sys reads the variable next.
            env::set_var("LIBCLANG_PATH", lib.parent().unwrap());
        }
    }
    let kernels = manifest.join("kernels");
    let mut headers: Vec<PathBuf> = fs::read_dir(&kernels)
        .expect("kernels/ is missing")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "h"))
        .collect();
    headers.sort_by_key(|p| (p.file_name() != Some("params.h".as_ref()), p.clone()));
    let snapshot_path = manifest.join(BINDINGS_SNAPSHOT);
    let snapshot = fs::read_to_string(&snapshot_path).unwrap_or_default();
    let fresh: Option<String> = headers.iter().map(|h| run_bindgen(h)).collect();
    let Some(fresh) = fresh else {
        assert!(
            !snapshot.is_empty(),
            "kd-kernels: libclang not found and {BINDINGS_SNAPSHOT} is missing; run scripts/install-nvcc"
        );
        println!(
            "cargo::warning=kd-kernels: libclang not found; using the committed {BINDINGS_SNAPSHOT} \
             (scripts/install-nvcc provides libclang so the build can check it against kernels/*.h)"
        );
        fs::write(out.join("params.rs"), &snapshot).unwrap();
        return;
    };
    if fresh != snapshot {
        if env::var_os("KD_KERNELS_BLESS_BINDINGS").is_some() {
            fs::write(&snapshot_path, &fresh).unwrap();
        } else if env::var_os("KD_KERNELS_CHECK_BINDINGS").is_some() {
            panic!(
                "kd-kernels: kernels/*.h and {BINDINGS_SNAPSHOT} disagree. \
                 Rebuild with KD_KERNELS_BLESS_BINDINGS=1 to regenerate it, review the diff, and commit it."
            );
        } else {
            // Another libclang may format the same declarations differently: the fresh bindings are right
            // for these headers either way; scripts/test checks the snapshot with the pinned libclang.
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
        let name = header.file_name().unwrap().to_str().unwrap().to_owned();
        // Only the header's own declarations (not recursively those it includes): every header's bindings
        // land in one module, where the shared ones are already declared once.
        bindgen::Builder::default()
            .header(header.to_str().unwrap())
            .allowlist_file(format!(".*/kernels/{}", regex_escape(&name)))
            .allowlist_recursively(false)
            .derive_default(true)
            .derive_debug(true)
            .derive_copy(true)
            .layout_tests(true)
            .use_core()
            .formatter(bindgen::Formatter::Prettyplease) // independent of the rustfmt installed
            .raw_line(format!("// Generated by bindgen from kernels/{name}; do not edit (see build.rs)."))
            .generate()
            .ok()
            .map(|b| b.to_string())
    });
    std::panic::set_hook(previous_hook);
    result.ok().flatten()
}

fn regex_escape(literal: &str) -> String {
    literal.chars().flat_map(|c| if c.is_ascii_alphanumeric() || c == '_' { vec![c] } else { vec!['\\', c] }).collect()
}

/// Compiles every kernel file for the host with the CUDA emulation of kernels/emulator (tests only): each
/// `kernels/*.cu` as C++ with `KD_EMULATE`, where its entry points register themselves by name, and the
/// emulator's own sources. Linked whole, so that the registrations (static initialisers nothing else refers
/// to) are kept.
#[cfg(feature = "emulator")]
fn build_emulator(manifest: &Path, sources: &[PathBuf]) {
    println!("cargo::rerun-if-env-changed=KD_EMU_SANITIZE");
    // UndefinedBehaviorSanitizer over everything emulated, in every emulated build: it costs about a tenth of
    // the emulator tests' time and nothing to build. KD_EMU_SANITIZE=0 turns it off (a toolchain without
    // libubsan); the selftest that proves it then fails and says so.
    let sanitize = env::var("KD_EMU_SANITIZE").map_or(true, |v| v != "0");
    if sanitize {
        println!("cargo::rustc-cfg=kd_emulator_ubsan");
    }
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
    // The checks' deliberately broken kernels (tests/emulator/checks.rs): in the emulation only.
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
