//! The C ABI as a C user sees it: `include/kd_kernels.h` compiles under `gcc -Wall -Wextra -Werror
//! -pedantic`, a C program (`tests/c_program.c`) links against the built `libkd_kernels.so`, calls the CPU
//! entry points, and gets the losses and gradients of the Rust reference, and for bad inputs the status
//! codes and the crate's messages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kd::cirkd::{CirkdConfig, CirkdCpu, CirkdPool};
use kd::cpu::CpuOutput;
use kd::cwd::{CwdConfig, CwdCpu};
use kd::cwt::{CwtConfig, CwtCpu, CwtNormalize, MlpParams};
use kd::dist::{DistConfig, DistCpu};
use kd::half::{bf16, f16};
use kd::icsd::{IcsdConfig, IcsdCpu};
use kd::ifvd::{IfvdConfig, IfvdCpu};
use kd::ndarray::{Array1, Array2, Array3, Array4};
use kd::pixel_kd::{PixelKdConfig, PixelKdCpu};
use kd::pkd::{PkdConfig, PkdCpu};
use kd::skd::{SkdConfig, SkdCpu, SkdPool};
use kd::KdError;

const SHAPE: [usize; 4] = [2, 3, 4, 5];

fn inputs() -> (Array4<f32>, Array4<f32>) {
    let at = |f: &dyn Fn(usize) -> f32| {
        Array4::from_shape_vec(SHAPE, (0..SHAPE.iter().product()).map(f).collect()).expect("shape")
    };
    let student = at(&|i| (((i * 37) % 101) as f32 - 50.0) / 16.0);
    let teacher = at(&|i| (((i * 53) % 89) as f32 - 44.0) / 8.0);
    (student, teacher)
}

/// `target/<profile>`, where cargo puts the cdylib; the test binary is in its `deps/`.
fn artifact_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// Compiles and runs the C program; returns its lines keyed by their first word.
fn run_c_program() -> HashMap<String, String> {
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

fn numbers(line: &str) -> Vec<f64> {
    line.split_whitespace().map(|v| v.parse().expect("a number")).collect()
}

/// `(status, message)` of a `print_status` line.
fn status(lines: &HashMap<String, String>, key: &str) -> (i32, String) {
    let line = lines.get(key).unwrap_or_else(|| panic!("no `{key}` line"));
    let (code, message) = line.split_once(' ').unwrap_or((line, ""));
    (code.parse().expect("status code"), message.to_string())
}

#[test]
fn c_program_gets_the_reference_results_and_the_crates_errors() {
    let lines = run_c_program();
    let (student, teacher) = inputs();

    // CWD, f32 in, the paper's setting: the loss and the gradient of the Rust reference.
    let reference =
        CwdCpu::new(CwdConfig::default()).unwrap().forward_backward(student.view(), teacher.view()).unwrap();
    assert_eq!(status(&lines, "cwd_cpu"), (0, String::new()));
    let loss = numbers(&lines["cwd_loss"])[0];
    assert!(reference.loss > 0.0);
    assert_eq!(loss, reference.loss, "the C ABI returns the reference's f64 loss unchanged");
    // Printed with 9 significant digits, which round-trip an f32 exactly.
    let grad: Vec<f32> = lines["cwd_grad"].split_whitespace().map(|v| v.parse().expect("an f32")).collect();
    assert_eq!(grad.len(), reference.grad_student.len());
    for (got, want) in grad.iter().zip(reference.grad_student.iter()) {
        assert_eq!(*got, *want as f32, "f32 gradient = the reference's, rounded once");
    }

    // f64 in: same loss to rounding of the inputs (they are exact in f32), gradient 0.5 + 0.5 accumulated.
    assert_eq!(status(&lines, "cwd_cpu_f64_a").0, 0);
    assert_eq!(status(&lines, "cwd_cpu_f64_b").0, 0);
    assert_eq!(numbers(&lines["cwd_loss_f64"])[0], reference.loss);
    for (got, want) in numbers(&lines["cwd_grad_f64"]).iter().zip(reference.grad_student.iter()) {
        assert!((got - want).abs() <= 1e-15 * want.abs().max(1e-300), "{got} vs {want}");
    }

    // Pixel KD, official defaults, checked against the formula written out here.
    assert_eq!(status(&lines, "pixel_kd_cpu").0, 0);
    let pixel = PixelKdCpu::new(PixelKdConfig::default()).unwrap().forward(student.view(), teacher.view()).unwrap();
    let mut kl = 0.0;
    for n in 0..SHAPE[0] {
        for h in 0..SHAPE[2] {
            for w in 0..SHAPE[3] {
                let logp = |x: &Array4<f32>| {
                    let z: Vec<f64> = (0..SHAPE[1]).map(|c| f64::from(x[[n, c, h, w]])).collect();
                    let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
                    z.into_iter().map(move |v| v - lse).collect::<Vec<_>>()
                };
                let (ls, lt) = (logp(&student), logp(&teacher));
                kl += lt.iter().zip(&ls).map(|(t, s)| t.exp() * (t - s)).sum::<f64>();
            }
        }
    }
    let formula = 10.0 * kl / SHAPE.iter().product::<usize>() as f64;
    let got = numbers(&lines["pixel_kd_loss"])[0];
    assert_eq!(got, pixel);
    assert!((got - formula).abs() <= 1e-12 * formula, "{got} vs the formula's {formula}");

    // DIST, f32 in: the reference's loss unchanged and its gradient rounded once.
    assert_eq!(status(&lines, "dist_cpu"), (0, String::new()));
    let config = DistConfig { tau: 2.0, beta: 1.5, gamma: 0.5, loss_weight: 3.0 };
    let dist = DistCpu::new(config).unwrap().forward_backward(student.view(), teacher.view()).unwrap();
    assert_eq!(numbers(&lines["dist_loss"])[0], dist.loss);
    let grad: Vec<f32> = lines["dist_grad"].split_whitespace().map(|v| v.parse().expect("an f32")).collect();
    assert_eq!(grad.len(), dist.grad_student.len());
    for (got, want) in grad.iter().zip(dist.grad_student.iter()) {
        assert_eq!(*got, *want as f32);
    }

    // CWT, checked against the Rust reference on the same values.
    assert_eq!(status(&lines, "cwt_cpu"), (0, String::new()));
    let cwt_teacher =
        Array4::from_shape_vec([2, 2, 4, 5], (0..80).map(|i| ((i * 29) % 31) as f32 / 8.0 - 15.0 / 8.0).collect())
            .expect("shape");
    let w1 = Array2::from_shape_vec((4, 3), (0..12).map(|i| ((i * 7) % 13) as f32 / 4.0 - 1.5).collect()).expect("w1");
    let b1 = Array1::from_iter((0..4).map(|i| (i as f32 - 1.0) / 2.0));
    let w2 = Array2::from_shape_vec((2, 4), (0..8).map(|i| ((i * 5) % 11) as f32 / 4.0 - 1.25).collect()).expect("w2");
    let b2 = Array1::from_iter((0..2).map(|i| i as f32 / 4.0));
    let mlp = MlpParams { w1: w1.view(), b1: b1.view(), w2: w2.view(), b2: b2.view() };
    let cwt = CwtCpu::new(CwtConfig { loss_weight: 0.5, normalize: CwtNormalize::Batch })
        .unwrap()
        .forward_backward(student.view(), cwt_teacher.view(), &mlp)
        .unwrap();
    assert!(cwt.loss > 0.0);
    assert_eq!(numbers(&lines["cwt_loss"])[0], cwt.loss);
    assert_eq!(numbers(&lines["cwt_grad_w1"]), cwt.grad_w1.iter().copied().collect::<Vec<_>>());
    let teacher_mismatch =
        KdError::ShapeMismatch { what: "teacher", expected: vec![2, 2, 4, 5], got: vec![2, 2, 4, 6] };
    assert_eq!(status(&lines, "bad_cwt_teacher"), (2, teacher_mismatch.to_string()));

    // ICSD: the loss and the student's matrix of the Rust reference.
    assert_eq!(status(&lines, "icsd_cpu"), (0, String::new()));
    let icsd = IcsdCpu::new(IcsdConfig::default()).unwrap().forward_backward(student.view(), teacher.view()).unwrap();
    assert!(icsd.loss > 0.0);
    assert_eq!(numbers(&lines["icsd_loss"])[0], icsd.loss);
    assert_eq!(numbers(&lines["icsd_sim_student"]), icsd.sim_student.iter().copied().collect::<Vec<_>>());

    // PKD on two levels: the loss and the second level's gradient of the Rust reference; a level whose
    // teacher has another shape is the crate's error, which says to resize.
    assert_eq!(status(&lines, "pkd_cpu"), (0, String::new()));
    let small_s = Array4::from_shape_vec([2, 3, 2, 2], student.iter().take(24).copied().collect()).expect("shape");
    let small_t = Array4::from_shape_vec([2, 3, 2, 2], teacher.iter().take(24).copied().collect()).expect("shape");
    let pkd = PkdCpu::new(PkdConfig { loss_weight: 6.0 })
        .unwrap()
        .forward_backward(&[student.view(), small_s.view()], &[teacher.view(), small_t.view()])
        .unwrap();
    assert!(pkd.loss > 0.0);
    assert_eq!(numbers(&lines["pkd_loss"])[0], pkd.loss);
    let grad1: Vec<f32> = lines["pkd_grad1"].split_whitespace().map(|v| v.parse().expect("an f32")).collect();
    assert_eq!(grad1, pkd.grad_student[1].iter().map(|&g| g as f32).collect::<Vec<_>>());
    let mismatch = KdError::LevelShapeMismatch { level: 1, student: vec![2, 3, 2, 2], teacher: vec![2, 3, 1, 4] };
    assert_eq!(status(&lines, "bad_pkd_level"), (2, mismatch.to_string()));
    // IFVD with uint8 labels: the loss of the Rust reference; an unknown label dtype is a dtype error.
    assert_eq!(status(&lines, "ifvd_cpu"), (0, String::new()));
    let labels = Array3::from_shape_fn((2, 4, 5), |(n, h, w)| {
        let i = (n * 4 + h) * 5 + w;
        if i % 7 == 0 {
            255
        } else {
            ((i / 3) % 3) as i64
        }
    });
    let config = IfvdConfig { num_classes: 3, loss_weight: 20.0 };
    let ifvd = IfvdCpu::new(config).unwrap().forward_backward(student.view(), teacher.view(), labels.view()).unwrap();
    assert!(ifvd.loss > 0.0);
    assert_eq!(numbers(&lines["ifvd_loss"])[0], ifvd.loss);
    let (code, message) = status(&lines, "bad_label_dtype");
    assert_eq!(code, 6);
    assert!(message.contains("unknown kd_label_dtype 5"), "{message}");

    relation_cases(&lines, &student);

    // Bad inputs: the code of the error's kind and the crate's own message.
    let rank = KdError::WrongRank { what: "student", expected: 4, got: 3 };
    assert_eq!(status(&lines, "bad_rank"), (2, rank.to_string()));
    let zero = KdError::EmptyInput { what: "student", shape: vec![2, 0, 4, 5] };
    assert_eq!(status(&lines, "bad_zero"), (2, zero.to_string()));
    let (code, message) = status(&lines, "bad_negative");
    assert_eq!(code, 2);
    assert!(message.contains("negative dimension"), "{message}");
    let tau = KdError::InvalidParameter { name: "tau", value: "0".into(), requirement: "finite and > 0" };
    assert_eq!(status(&lines, "bad_tau"), (4, tau.to_string()));
    let (code, message) = status(&lines, "bad_dtype");
    assert_eq!(code, 6);
    assert!(message.contains("unknown kd_dtype 7"), "{message}");
    let (code, message) = status(&lines, "bad_null");
    assert_eq!(code, 1);
    assert!(message.starts_with("student: a null pointer"), "{message}");
    assert_eq!(status(&lines, "bad_teacher_only").0, 5);
    assert_eq!(status(&lines, "ok_again"), (0, String::new()), "a success clears the last message");
    assert_eq!(status(&lines, "cuda_null_ctx").0, 1);

    // The GPU side as far as this machine allows: the context and the probe report what the crate's probe
    // reports (no kernels, no driver), or work.
    let compiled = numbers(&lines["compiled"])[0] as i32;
    assert_eq!(compiled, i32::from(kd::cuda::KERNELS_COMPILED));
    let (probe_code, probe_message) = status(&lines, "probe");
    match kd::cuda::probe() {
        Ok(()) => {
            assert_eq!(probe_code, 0);
            assert_eq!(status(&lines, "context_create").0, 0);
            let (code, message) = status(&lines, "cuda_f64");
            assert_eq!(code, 6, "{message}");
            let (code, message) = status(&lines, "cirkd_cuda_f64");
            assert_eq!(code, 6, "{message}");
        }
        Err(error) => {
            eprintln!("GPU part of the C ABI test skipped: {error}");
            let expected = match error {
                KdError::KernelsUnavailable => 10,
                _ => 11,
            };
            assert_eq!((probe_code, probe_message.as_str()), (expected, error.to_string().as_str()));
            assert_eq!(status(&lines, "context_create"), (expected, error.to_string()));
        }
    }
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

/// SKD and CIRKD through the C ABI (student [2, 3, 4, 5], teacher [2, 2, 4, 5]: odd pooled edges, Cs != Ct):
/// every pool mode, every dtype (the same values, exact in each, so the f64 loss is the reference's in all of
/// them), and the crate's errors.
fn relation_cases(lines: &HashMap<String, String>, student: &Array4<f32>) {
    let teacher =
        Array4::from_shape_vec([2, 2, 4, 5], (0..80).map(|i| ((i * 29) % 31) as f32 / 8.0 - 15.0 / 8.0).collect())
            .expect("shape");
    let skd = |loss_weight, pool| {
        SkdCpu::new(SkdConfig { loss_weight, pool }).unwrap().forward_backward(student.view(), teacher.view()).unwrap()
    };
    let cirkd = |tau, loss_weight, pool| {
        let config = CirkdConfig { tau, loss_weight, pool };
        CirkdCpu::new(config).unwrap().forward_backward(student.view(), teacher.view()).unwrap()
    };
    let mut cases = vec![
        ("skd_p1".to_string(), skd(1.0, SkdPool::None), "f32"),
        ("cirkd_auto".to_string(), cirkd(0.1, 1.0, CirkdPool::Auto), "f32"),
        ("cirkd_none".to_string(), cirkd(0.5, 2.0, CirkdPool::None), "f32"),
        ("cirkd_k3".to_string(), cirkd(0.5, 1.0, CirkdPool::Avg(3)), "f32"),
    ];
    for dtype in ["f32", "f16", "bf16", "f64"] {
        cases.push((format!("skd_p2_{dtype}"), skd(10.0, SkdPool::Max2x2), dtype));
        cases.push((format!("cirkd_k2_{dtype}"), cirkd(1.0, 1.0, CirkdPool::Avg(2)), dtype));
    }
    for (key, reference, dtype) in &cases {
        assert_eq!(status(lines, key), (0, String::new()), "{key}");
        assert!(reference.loss > 0.0, "{key}");
        assert_eq!(numbers(&lines[&format!("{key}_loss")])[0], reference.loss, "{key}: the reference's f64 loss");
        assert_gradient(key, &lines[&format!("{key}_grad")], reference, dtype);
    }
    // The pools are seen: each mode gives another loss.
    assert_ne!(cases[0].1.loss, skd(1.0, SkdPool::Max2x2).loss);
    assert_ne!(cases[3].1.loss, cirkd(0.5, 1.0, CirkdPool::None).loss);

    let pool = KdError::InvalidParameter {
        name: "pool",
        value: "3".into(),
        requirement: "2 (the official 2x2 max pool) or 1 (no pooling)",
    };
    assert_eq!(status(lines, "bad_skd_pool"), (4, pool.to_string()));
    let (code, message) = status(lines, "bad_cirkd_pool");
    assert_eq!(code, 4);
    assert!(message.starts_with("parameter `pool` = -1 is invalid"), "{message}");
    let tau = KdError::InvalidParameter { name: "tau", value: "0".into(), requirement: "finite and > 0" };
    assert_eq!(status(lines, "bad_cirkd_tau"), (4, tau.to_string()));
    let teacher_shape = kd::skd::check_shapes(&[2, 3, 4, 5], &[2, 2, 3, 5]).unwrap_err();
    assert_eq!(status(lines, "bad_skd_teacher"), (2, teacher_shape.to_string()));
    let rank = KdError::WrongRank { what: "teacher", expected: 4, got: 3 };
    assert_eq!(status(lines, "bad_cirkd_rank"), (2, rank.to_string()));
    let (code, message) = status(lines, "bad_skd_null");
    assert_eq!(code, 1);
    assert!(message.starts_with("teacher: a null pointer"), "{message}");
    assert_eq!(status(lines, "bad_cirkd_params").0, 1);
    assert_eq!(status(lines, "skd_cuda_null_ctx").0, 1);
}
