//! Every recorded fixture on the GPU, and the verifier with both backends: generic over the families (a
//! family registered for fixtures is covered here without a line of its own).

use kd_kernels::fixture::{example, Backend, Fixture, LossKind};
use kd_kernels::verify;
use kd_kernels::DType;

use crate::common;
use crate::harness::{ensure, gpu_tests, verdict, OrMsg, Stream, TestFn, TestResult};

pub(crate) const TESTS: &[(&str, TestFn)] =
    gpu_tests![fixtures_pass_on_cuda, verify_runs_both_backends, examples_match_cpu];

pub(crate) fn fixtures_pass_on_cuda(stream: &Stream) -> TestResult {
    let backend = Backend::Cuda(stream.clone());
    let mut failures = Vec::new();
    for path in common::fixture_files() {
        let fixture = Fixture::load(&path).or_msg(&path.display().to_string())?;
        if !verify::has_kernels(fixture.loss) {
            continue; // verify reports these as skipped on the GPU (verify_runs_both_backends)
        }
        match verify::check(&fixture, &backend) {
            Ok(checks) if checks.is_empty() => failures.push(format!("{}: nothing checked", path.display())),
            Ok(checks) => {
                for c in checks.iter().filter(|c| !c.pass()) {
                    failures.push(format!("{} {}: {:?} > {}", path.display(), c.output, c.comparison, c.tolerance));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    verdict(failures)
}

pub(crate) fn verify_runs_both_backends(stream: &Stream) -> TestResult {
    let dir = common::fixture_dir().display().to_string();
    let mut out = Vec::new();
    let code = verify::run(&[dir], &[Backend::Cpu, Backend::Cuda(stream.clone())], &mut out);
    let text = String::from_utf8(out).or_msg("utf-8")?;
    let on = |backend: &str, l: &&str| l.contains(&format!("\"backend\": \"{backend}\"")) && !l.contains("\"skipped\"");
    let cuda_lines = text.lines().filter(|l| on("cuda", l)).count();
    let cpu_lines = text.lines().filter(|l| on("cpu", l) && kernels_for(l)).count();
    ensure(code == 0, || format!("verify exited {code}:\n{text}"))?;
    ensure(cuda_lines > 0 && cuda_lines == cpu_lines, || format!("{cpu_lines} cpu lines, {cuda_lines} cuda lines"))?;
    let (backends, skipped) = verify::available_backends();
    ensure(skipped.is_none() && backends.len() == 2, || format!("available_backends: skipped {skipped:?}"))
}

/// Whether a verify line's family has CUDA kernels (the lines of the others have no cuda twin).
fn kernels_for(line: &str) -> bool {
    kd_kernels::fixture::LossKind::ALL
        .iter()
        .find(|kind| line.contains(&format!("\"loss\": \"{}\"", kind.name())))
        .is_some_and(|&kind| verify::has_kernels(kind))
}

/// The quickstart's cases (every family with kernels, at the sizes its users run) against the CPU reference.
pub(crate) fn examples_match_cpu(stream: &Stream) -> TestResult {
    let backend = Backend::Cuda(stream.clone());
    let mut failures = Vec::new();
    for &kind in LossKind::ALL.iter().filter(|&&kind| verify::has_kernels(kind)) {
        let case = example(kind, false, 3);
        let reference = verify::compute(&case.fixture, &Backend::Cpu).or_msg(kind.name())?;
        let got = match verify::compute(&case.fixture, &backend) {
            Ok(got) => got,
            Err(e) => {
                failures.push(format!("{}: {e}", kind.name()));
                continue;
            }
        };
        for c in verify::compare(&got, &reference, DType::F32).iter().filter(|c| !c.pass()) {
            failures.push(format!("{} {}: {:?} > {}", kind.name(), c.output, c.comparison, c.tolerance));
        }
    }
    verdict(failures)
}
