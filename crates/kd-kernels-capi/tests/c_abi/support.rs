//! What the families' C ABI checks share: the C program's inputs, building and running it against the
//! built library, and reading its `key value...` lines.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kd::cpu::CpuOutput;
use kd::half::{bf16, f16};
use kd::ndarray::Array4;

/// The C program's lines, keyed by their first word.
pub type Lines = HashMap<String, String>;

pub const SHAPE: [usize; 4] = [2, 3, 4, 5];

/// The student and teacher `[2, 3, 4, 5]` the C program builds (exact in f32).
pub fn inputs() -> (Array4<f32>, Array4<f32>) {
    let at = |f: &dyn Fn(usize) -> f32| {
        Array4::from_shape_vec(SHAPE, (0..SHAPE.iter().product()).map(f).collect()).expect("shape")
    };
    let student = at(&|i| (((i * 37) % 101) as f32 - 50.0) / 16.0);
    let teacher = at(&|i| (((i * 53) % 89) as f32 - 44.0) / 8.0);
    (student, teacher)
}

/// The teacher `[2, 2, 4, 5]` of the families whose teacher has other channels than the student: exact in
/// f32, f16 and bf16.
pub fn narrow_teacher() -> Array4<f32> {
    Array4::from_shape_vec([2, 2, 4, 5], (0..80).map(|i| ((i * 29) % 31) as f32 / 8.0 - 15.0 / 8.0).collect())
        .expect("shape")
}

/// `target/<profile>`, where cargo puts the cdylib; the test binary is in its `deps/`.
fn artifact_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// Compiles and runs the C program; returns its lines keyed by their first word.
pub fn run_c_program() -> Lines {
    // `KD_KERNELS_CAPI_DIR`: this crate's folder where the sources are not where they were built (the GPU
    // bundle of scripts/gpu-bundle runs this binary in another copy of the repository).
    let manifest = std::env::var_os("KD_KERNELS_CAPI_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let lib_dir = artifact_dir();
    // `cargo test` does not build a cdylib-only library for integration tests, and cargo holds its build lock
    // while tests run, so the library is built beforehand (scripts/test does) and checked for staleness here.
    let library = lib_dir.join("libkd_kernels.so");
    let built = std::fs::metadata(&library).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!(
            "{} not found: run `cargo build --release -p kd-kernels-capi` (or without --release for a debug \
             test run) before this test",
            library.display()
        )
    });
    // This crate's sources and the core's, from the workspace root.
    let newest_source = ["crates/kd-kernels-capi/src", "src", "kernels"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(manifest.join("../..").join(dir)).into_iter().flatten().flatten())
        .filter_map(|entry| entry.metadata().and_then(|m| m.modified()).ok())
        .max()
        .expect("source files");
    assert!(
        built >= newest_source,
        "{} is older than the sources: run `cargo build --release -p kd-kernels-capi` again",
        library.display()
    );
    let out_dir = std::env::temp_dir().join(format!("kd_kernels_c_abi_{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("temp dir");
    let program = out_dir.join("c_program");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "gcc".to_string());
    let status = Command::new(&compiler)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(manifest.join("../../include"))
        .arg(manifest.join("tests/c_program.c"))
        .arg("-L")
        .arg(&lib_dir)
        .arg("-lkd_kernels")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-o")
        .arg(&program)
        .status()
        .unwrap_or_else(|e| panic!("could not run the C compiler `{compiler}`: {e}"));
    assert!(status.success(), "the C program did not compile against include/kd_kernels.h");
    let output = Command::new(&program).output().expect("run the C program");
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(output.status.success(), "the C program failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .filter_map(|line| line.split_once(' ').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

pub fn numbers(line: &str) -> Vec<f64> {
    line.split_whitespace().map(|v| v.parse().expect("a number")).collect()
}

/// `(status, message)` of a `print_status` line.
pub fn status(lines: &Lines, key: &str) -> (i32, String) {
    let line = lines.get(key).unwrap_or_else(|| panic!("no `{key}` line"));
    let (code, message) = line.split_once(' ').unwrap_or((line, ""));
    (code.parse().expect("status code"), message.to_string())
}

/// `line`'s gradient against the reference's, rounded once to `dtype` (the 16-bit ones printed as their bits).
fn assert_gradient(key: &str, line: &str, reference: &CpuOutput, dtype: &str) {
    let got: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(got.len(), reference.grad_student.len(), "{key}");
    for (got, &want) in got.iter().zip(reference.grad_student.iter()) {
        let exact = match dtype {
            "f32" => got.parse::<f32>().expect("an f32") == want as f32,
            "f64" => got.parse::<f64>().expect("an f64") == want,
            "f16" => got.parse::<u16>().expect("bits") == f16::from_f64(want).to_bits(),
            _ => got.parse::<u16>().expect("bits") == bf16::from_f64(want).to_bits(),
        };
        assert!(exact, "{key}: gradient {got} vs the reference's {want} rounded once to {dtype}");
    }
}

/// One `relation_case` of the C program (the relation losses' calls, in every dtype): it succeeded, and its
/// loss is the reference's f64 loss and its gradient the reference's rounded once to `dtype`.
pub fn assert_relation_case(lines: &Lines, key: &str, reference: &CpuOutput, dtype: &str) {
    assert_eq!(status(lines, key), (0, String::new()), "{key}");
    assert!(reference.loss > 0.0, "{key}");
    assert_eq!(numbers(&lines[&format!("{key}_loss")])[0], reference.loss, "{key}: the reference's f64 loss");
    assert_gradient(key, &lines[&format!("{key}_grad")], reference, dtype);
}
