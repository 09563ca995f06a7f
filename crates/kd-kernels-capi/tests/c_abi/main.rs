//! The C ABI as a C user sees it: `include/kd_kernels.h` compiles under `gcc -Wall -Wextra -Werror
//! -pedantic`, a C program (`tests/c_program.c`) links against the built `libkd_kernels.so`, calls the CPU
//! entry points, and gets the losses and gradients of the Rust reference, and for bad inputs the status
//! codes and the crate's messages.
//!
//! One module per family the C program calls (`{module}.rs`: its cases' checks against the Rust reference and
//! its own errors), listed here rather than declared from the crate's registry because not every registered
//! family has cases in the C program yet; what they share (`support`); and here the errors any entry point
//! reports (shown through CWD's) and the GPU side. The program runs once and every family's lines are checked
//! in the one test.

mod support;

mod cirkd;
mod cwd;
mod cwt;
mod dist;
mod icsd;
mod ifvd;
mod pixel_kd;
mod pkd;
mod skd;

use kd::KdError;

use support::{inputs, numbers, run_c_program, status, Lines};

#[test]
fn c_program_gets_the_reference_results_and_the_crates_errors() {
    let lines = run_c_program();
    let (student, teacher) = inputs();

    cwd::check(&lines, &student, &teacher);
    pixel_kd::check(&lines, &student, &teacher);
    dist::check(&lines, &student, &teacher);
    cwt::check(&lines, &student);
    icsd::check(&lines, &student, &teacher);
    pkd::check(&lines, &student, &teacher);
    ifvd::check(&lines, &student, &teacher);
    skd::check(&lines, &student);
    cirkd::check(&lines, &student);

    bad_inputs(&lines);
    gpu_side(&lines);
}

/// Bad inputs: the code of the error's kind and the crate's own message.
fn bad_inputs(lines: &Lines) {
    let rank = KdError::WrongRank { what: "student", expected: 4, got: 3 };
    assert_eq!(status(lines, "bad_rank"), (2, rank.to_string()));
    let zero = KdError::EmptyInput { what: "student", shape: vec![2, 0, 4, 5] };
    assert_eq!(status(lines, "bad_zero"), (2, zero.to_string()));
    let (code, message) = status(lines, "bad_negative");
    assert_eq!(code, 2);
    assert!(message.contains("negative dimension"), "{message}");
    let tau = KdError::InvalidParameter { name: "tau", value: "0".into(), requirement: "finite and > 0" };
    assert_eq!(status(lines, "bad_tau"), (4, tau.to_string()));
    let (code, message) = status(lines, "bad_dtype");
    assert_eq!(code, 6);
    assert!(message.contains("unknown kd_dtype 7"), "{message}");
    let (code, message) = status(lines, "bad_null");
    assert_eq!(code, 1);
    assert!(message.starts_with("student: a null pointer"), "{message}");
    assert_eq!(status(lines, "bad_teacher_only").0, 5);
    assert_eq!(status(lines, "ok_again"), (0, String::new()), "a success clears the last message");
    assert_eq!(status(lines, "cuda_null_ctx").0, 1);
}

/// The GPU side as far as this machine allows: the context and the probe report what the crate's probe
/// reports (no kernels, no driver), or work.
fn gpu_side(lines: &Lines) {
    let compiled = numbers(&lines["compiled"])[0] as i32;
    assert_eq!(compiled, i32::from(kd::cuda::KERNELS_COMPILED));
    let (probe_code, probe_message) = status(lines, "probe");
    match kd::cuda::probe() {
        Ok(()) => {
            assert_eq!(probe_code, 0);
            assert_eq!(status(lines, "context_create").0, 0);
            let (code, message) = status(lines, "cuda_f64");
            assert_eq!(code, 6, "{message}");
            let (code, message) = status(lines, "cirkd_cuda_f64");
            assert_eq!(code, 6, "{message}");
        }
        Err(error) => {
            eprintln!("GPU part of the C ABI test skipped: {error}");
            let expected = match error {
                KdError::KernelsUnavailable => 10,
                _ => 11,
            };
            assert_eq!((probe_code, probe_message.as_str()), (expected, error.to_string().as_str()));
            assert_eq!(status(lines, "context_create"), (expected, error.to_string()));
        }
    }
}
