//! The emulation's checks (docs/emulation.md), each proven by a deliberately broken kernel
//! (`kernels/emulator/selftest/broken.cu`) that must fail with the check's message, and a correct kernel
//! using every checked feature that must pass.

use kd_kernels::emulator::{selftest, Selftest, UNDEFINED_BEHAVIOR_SANITIZER};

const BASE: Selftest = Selftest { kernel: "selftest_correct", grid: 1, n: 1024, mode: 0, register_output: true };

/// Runs `t` and returns the launch's error message; panics when it passes.
fn error_of(t: Selftest) -> String {
    match selftest(t) {
        Ok(_) => panic!("{} (mode {}) passed the checks", t.kernel, t.mode),
        Err(e) => e.to_string(),
    }
}

fn assert_has(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "missing {part:?} in: {message}");
    }
}

/// Runs `t`, which must fail with a message holding every one of `parts`.
fn fails_with(t: Selftest, parts: &[&str]) {
    assert_has(&error_of(t), parts);
}

/// Runs `kernel` in mode 0 and in mode 1 (two ways of breaking one rule), each of which must fail with a
/// message holding its `parts`.
fn both_modes_fail_with(kernel: &'static str, parts: [&[&str]; 2]) {
    for (mode, parts) in (0..).zip(parts) {
        fails_with(Selftest { kernel, mode, ..BASE }, parts);
    }
}

#[test]
fn correct_kernel_passes_every_check() {
    for grid in [1u32, 3, 7] {
        let n = grid as usize * 1024;
        let out = selftest(Selftest { grid, n, ..BASE }).unwrap();
        let expected: f64 = (0..n).map(|i| i as f64).sum();
        assert_eq!(out[0] as f64, expected as f32 as f64, "grid {grid}");
    }
}

#[test]
fn memcheck_wmma_operands() {
    both_modes_fail_with(
        "selftest_wmma_operand",
        [
            &["misaligned wmma::load_matrix_sync", "shared variable 'tile'", "needs 32-byte alignment"],
            &["wmma::load_matrix_sync: leading dimension 12 is not a multiple of 16 bytes"],
        ],
    );
}

#[test]
fn racecheck_shared_read_and_write() {
    let m = error_of(Selftest { kernel: "selftest_shared_write_read", ..BASE });
    // Which of the two accesses comes first depends on the schedule (the seed).
    assert!(m.contains("racecheck: write-read hazard") || m.contains("racecheck: read-write hazard"), "{m}");
    assert_has(&m, &["of shared variable 'words'", "no __syncthreads between them"]);
}

#[test]
fn synccheck_divergent_syncthreads() {
    both_modes_fail_with(
        "selftest_divergent_syncthreads",
        [
            &["deadlock", "128 thread(s) from 0 __syncthreads (", "128 thread(s) from 128 exited"],
            &["reached different calls: __syncthreads at", "a __syncthreads not reached by every thread"],
        ],
    );
}

#[test]
fn synccheck_partial_warp() {
    both_modes_fail_with("selftest_partial_warp", [&["__shfl_xor_sync", "common.cuh"], &["wmma::store_matrix_sync"]]);
}

/// One `#[test]` per row: the kernel launched with the row's `Selftest` fields (the others [`BASE`]'s) must
/// fail with a message holding every one of the row's parts.
macro_rules! fail_with {
    ($($name:ident: { $($field:ident: $value:expr),* } => [$($part:expr),+ $(,)?];)*) => {
        $(
            #[test]
            fn $name() {
                fails_with(Selftest { $($field: $value,)* ..BASE }, &[$($part),+]);
            }
        )*
    };
}

fail_with! {
    memcheck_out_of_bounds_load: { kernel: "selftest_oob_load", n: 100 } => [
        "kernel selftest_oob_load_f32", "block 0, thread 0", "memcheck: out-of-bounds load of 4 bytes",
        "offset 400 of buffer 'input' (400 bytes), 0 bytes past its end",
    ];
    memcheck_out_of_bounds_store: { kernel: "selftest_oob_store", n: 100 } =>
        ["memcheck: out-of-bounds store of 4 bytes", "offset 408 of buffer 'output' (400 bytes)"];
    memcheck_store_to_input: { kernel: "selftest_store_input" } =>
        ["memcheck: store of 4 bytes to the input buffer 'input' at offset 4"];
    memcheck_misaligned_vector_access: { kernel: "selftest_misaligned_vector" } =>
        ["memcheck: misaligned 16-byte vector load (uint4) at offset 4 of buffer 'input'", "16-byte"];
    memcheck_unregistered_buffer: { kernel: "selftest_oob_store", register_output: false } =>
        ["argument word 1 holds an address in no registered buffer"];
    racecheck_shared_write_write: { kernel: "selftest_shared_write_write" } =>
        ["racecheck: write-write hazard on byte 0 of shared variable 'word' (4 bytes)"];
    initcheck_shared: { kernel: "selftest_shared_uninitialised" } => [
        "thread 1", "initcheck: load of 4 bytes at byte 0 of shared variable 'words'", "no thread of this block wrote",
    ];
    initcheck_workspace: { kernel: "selftest_workspace_uninitialised", n: 100 } => [
        "initcheck: load of 4 bytes at offset 396 of workspace buffer 'workspace'", "no kernel of this call wrote",
    ];
    static_shared_memory_limit: { kernel: "selftest_static_shared_too_large" } =>
        ["static shared memory exceeds the 48 KiB limit at variable 'big'"];
    every_message_names_the_schedule_seed: { kernel: "selftest_oob_load" } => ["schedule seed ", "KD_EMU_SEED="];
}

/// UndefinedBehaviorSanitizer aborts the process, so the overflowing kernel runs in a child: this test binary
/// again, running only this test, with `KD_EMU_UBSAN_CHILD` set.
#[test]
fn ubsan_signed_integer_overflow() {
    const CHILD: &str = "KD_EMU_UBSAN_CHILD";
    if std::env::var_os(CHILD).is_some() {
        // Returns (and the child exits cleanly) only where the sanitizer let the overflow pass.
        let _ = selftest(Selftest { kernel: "selftest_signed_overflow", n: 65536, ..BASE });
        return;
    }
    if !UNDEFINED_BEHAVIOR_SANITIZER {
        panic!(
            "this emulation was built with KD_EMU_SANITIZE=0, without UndefinedBehaviorSanitizer: rebuild without it"
        );
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let child = std::process::Command::new(exe)
        .args(["--exact", "checks::ubsan_signed_integer_overflow", "--test-threads", "1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("running the test binary again");
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(!child.status.success(), "the overflowing kernel ran to the end under UBSan; its stderr: {stderr}");
    assert_has(&stderr, &["broken.cu", "runtime error: signed integer overflow", "65536 * 65536"]);
}
