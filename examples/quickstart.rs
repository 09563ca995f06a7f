//! Quickstart: every registered loss family on a case of the size its users run, on the CPU reference and,
//! where a GPU is present, on the kernels, checked against each other.
//!
//! ```text
//! cargo run --release --example quickstart            # every family
//! cargo run --release --example quickstart -- pkd cwd # some of them
//! ```
//!
//! The list of families and their cases come from the crate's registry (`kd_kernels::fixture::LossKind::ALL`,
//! `kd_kernels::fixture::example`): a family added to the crate is here without a line of its own. For each it
//! prints the loss, the L2 norm of d loss / d student, the time of one call and, where the GPU ran, the largest
//! relative error of any output against the f64 CPU reference with the tolerance it is held to (the table of
//! `kd_kernels::tolerance`, the one `verify` uses). The GPU time is one whole call through the fixture layer,
//! transfers and the loss object's construction included: the benches (`cargo bench`) time the kernels.
//! How to call the losses from Rust, candle, burn, C and PyTorch: `docs/usage.md`.
//!
//! Exit status: 0 when every GPU result is within its tolerance (or no GPU ran), 1 otherwise.

use std::process::ExitCode;
use std::time::Instant;

use kd_kernels::fixture::{example, Backend, Computed, LossKind};
use kd_kernels::{verify, DType};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Res<bool> {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let families: Vec<LossKind> = match wanted.as_slice() {
        [] => LossKind::ALL.to_vec(),
        names => names
            .iter()
            .map(|n| LossKind::parse(n).ok_or_else(|| format!("unknown loss `{n}`; expected one of {}", known())))
            .collect::<Result<_, _>>()?,
    };
    // `default_stream` checks for compiled kernels, a driver and a device, and says which is missing instead
    // of panicking; without them the CPU reference, which computes the same outputs, still runs.
    let gpu = match kd_kernels::cuda::default_stream(0) {
        Ok(stream) => {
            println!("GPU: {} (device 0); the f64 CPU reference checks every output", stream.context().name()?);
            Some(Backend::Cuda(stream))
        }
        Err(e) => {
            println!("no GPU ({e}): the CPU reference (f64) only");
            None
        }
    };
    println!();
    println!(
        "{:<9} {:<38} {:<24} {:<8} {:>13} {:>11} {:>9}  max rel err (tolerance)",
        "loss", "case", "student", "backend", "loss value", "|grad|_2", "ms/call"
    );
    let mut all_pass = true;
    for (seed, &kind) in families.iter().enumerate() {
        let case = example(kind, false, seed as u64);
        let student = case.fixture.tensors.get("student").or_else(|| case.fixture.tensors.get("student.0"));
        let shape = student.map_or("-".into(), |t| t.shape.iter().map(usize::to_string).collect::<Vec<_>>().join("x"));
        let row = |backend: &str, out: &Computed, secs: f64, errors: &str| {
            println!(
                "{:<9} {:<38} {:<24} {:<8} {:>13.6e} {:>11.4e} {:>9.1}  {errors}",
                kind.name(),
                case.label,
                shape,
                backend,
                out.get("loss").map_or(f64::NAN, |l| l.values[0]),
                grad_norm(out),
                secs * 1e3
            );
        };
        let start = Instant::now();
        let cpu = verify::compute(&case.fixture, &Backend::Cpu)?;
        row("cpu f64", &cpu, start.elapsed().as_secs_f64(), "reference");
        let Some(gpu) = &gpu else { continue };
        if !verify::has_kernels(kind) {
            println!("{:<9} skipped on the GPU: no CUDA kernels yet", kind.name());
            continue;
        }
        verify::compute(&case.fixture, gpu)?; // loads the module and warms the allocator
        let start = Instant::now();
        let out = verify::compute(&case.fixture, gpu)?;
        let secs = start.elapsed().as_secs_f64();
        let (worst, pass) = compare(&cpu, &out);
        all_pass &= pass;
        row("cuda f32", &out, secs, &worst);
    }
    Ok(all_pass)
}

/// The worst relative error of any output against the reference, with its tolerance, and whether every output
/// is within its tolerance.
fn compare(reference: &Computed, got: &Computed) -> (String, bool) {
    let checks = verify::compare(got, reference, DType::F32);
    let pass = checks.iter().all(|c| c.pass());
    let worst = checks.iter().max_by(|a, b| a.comparison.max_rel_err.total_cmp(&b.comparison.max_rel_err));
    let text =
        worst.map_or(String::new(), |c| format!("{:.1e} ({:.0e}) {}", c.comparison.max_rel_err, c.tolerance, c.output));
    (format!("{text}{}", if pass { "" } else { "  FAIL" }), pass)
}

/// The L2 norm of every `grad.student*` output together.
fn grad_norm(out: &Computed) -> f64 {
    let squares = out.iter().filter(|(name, _)| name.starts_with("grad.student")).flat_map(|(_, o)| &o.values);
    squares.map(|g| g * g).sum::<f64>().sqrt()
}

fn known() -> String {
    LossKind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}
