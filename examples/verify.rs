//! The fixture verifier of `docs/fixtures.md`.
//!
//! ```text
//! cargo run --release --example verify -- FILE_OR_DIR...
//! ```
//!
//! Runs every case on the CPU reference and, where a CUDA driver and the compiled kernels are present, on
//! the GPU. Prints one JSON object per (file, backend, output), one line per skipped backend, and one
//! `{"file", "error"}` line per unusable file. Exit status: 0 every check passes, 1 a check failed, 2 a file
//! could not be used. Tolerances: the table in `kd_kernels::tolerance` (and the README).

use std::process::ExitCode;

use kd_kernels::verify;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: cargo run --release --example verify -- FILE_OR_DIR...");
        return ExitCode::from(2);
    }
    let (backends, cuda_skipped) = verify::available_backends();
    if let Some(reason) = cuda_skipped {
        println!("{}", verify::skip_line("cuda", &reason));
    }
    let mut stdout = std::io::stdout().lock();
    ExitCode::from(verify::run(&args, &backends, &mut stdout))
}
