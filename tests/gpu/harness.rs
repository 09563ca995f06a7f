//! The GPU tests' harness: the runner (every test reported as ok, FAILED or skipped with the reason), a
//! watchdog for hangs, and the helpers every family's tests use (transfers, NaN-filled outputs, checks).

use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kd_kernels::cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use kd_kernels::{KdError, KdFloat};

use crate::common::{self, SplitMix64};

pub(crate) type Stream = Arc<CudaStream>;

pub(crate) type TestResult = Result<(), String>;

pub(crate) type TestFn = fn(&Stream) -> TestResult;

/// A family's table of tests, each named after its function: `name` is the test `name`, and
/// `name::<f32, f16, bf16>` is one test per dtype, `name_f32`, `name_f16` and `name_bf16`. The name is never
/// written twice, so a table cannot run one function under another's name.
macro_rules! gpu_tests {
    (@entries [$($out:tt)*]) => { &[$($out)*] };
    (@entries [$($out:tt)*] $name:ident :: <$($t:ident),+> $(, $($rest:tt)*)?) => {
        $crate::harness::gpu_tests!(@entries
            [$($out)* $((concat!(stringify!($name), "_", stringify!($t)), $name::<$t> as $crate::harness::TestFn),)+]
            $($($rest)*)?)
    };
    (@entries [$($out:tt)*] $name:ident $(, $($rest:tt)*)?) => {
        $crate::harness::gpu_tests!(@entries [$($out)* (stringify!($name), $name as $crate::harness::TestFn),] $($($rest)*)?)
    };
    ($($entries:tt)*) => { $crate::harness::gpu_tests!(@entries [] $($entries)*) };
}
pub(crate) use gpu_tests;

/// A test that runs longer than this has hung (a kernel whose blocks wait for each other would hang, not
/// fail, if they were not all resident): the watchdog reports it and ends the run as a failure.
pub(crate) const TEST_TIME_LIMIT: Duration = Duration::from_secs(300);

pub(crate) fn watchdog(running: Arc<Mutex<(String, Instant)>>) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(5));
        let (name, since) = running.lock().map(|r| r.clone()).unwrap_or_else(|p| p.into_inner().clone());
        if since.elapsed() > TEST_TIME_LIMIT {
            println!("test {name} ... FAILED: still running after {} s (hung?)", TEST_TIME_LIMIT.as_secs());
            println!("gpu: the run was stopped by the watchdog");
            std::process::exit(1);
        }
    });
}

pub(crate) trait OrMsg<T> {
    fn or_msg(self, what: &str) -> Result<T, String>;
}

impl<T, E: Debug> OrMsg<T> for Result<T, E> {
    fn or_msg(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e:?}"))
    }
}

pub(crate) fn ensure(cond: bool, msg: impl FnOnce() -> String) -> TestResult {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// Joins collected failures into one error.
pub(crate) fn verdict(failures: Vec<String>) -> TestResult {
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} failure(s):\n    {}", failures.len(), failures.join("\n    ")))
    }
}

pub(crate) fn upload<T: KdFloat>(stream: &Stream, values: &[T]) -> Result<CudaSlice<T>, String> {
    stream.clone_htod(values).or_msg("clone_htod")
}

pub(crate) fn download<T: KdFloat, S: DevicePtr<T>>(stream: &Stream, buffer: &S) -> Result<Vec<T>, String> {
    stream.clone_dtoh(buffer).or_msg("clone_dtoh")
}

/// `numel` values ~ N(0, scale^2), quantized (see `common::quantize`) and rounded to `T`: exact in every dtype
/// up to the rounding, so the CPU reference reads what the kernels read.
pub(crate) fn random<T: KdFloat>(seed: u64, numel: usize, scale: f64) -> Vec<T> {
    common::to_dtype(&common::logits(&mut SplitMix64::new(seed), numel, scale, 0))
}

/// A device buffer filled with NaN, so that an element the kernel fails to write shows up.
pub(crate) fn nan_buffer<T: KdFloat>(stream: &Stream, len: usize) -> Result<CudaSlice<T>, String> {
    upload(stream, &vec![T::from_f32(f32::NAN); len])
}

pub(crate) fn bits<T: KdFloat>(values: &[T]) -> Vec<u64> {
    values.iter().map(|v| v.to_f64().to_bits()).collect()
}

/// Uploads `values` at element offset `offset` of a longer buffer (NaN around it).
pub(crate) fn upload_at<T: KdFloat>(stream: &Stream, values: &[T], offset: usize) -> Result<CudaSlice<T>, String> {
    let mut padded = vec![T::from_f32(f32::NAN); offset];
    padded.extend_from_slice(values);
    padded.extend(std::iter::repeat_n(T::from_f32(f32::NAN), 3));
    upload(stream, &padded)
}

pub(crate) fn expect_err(what: &str, got: Result<(), KdError>, want: impl Fn(&KdError) -> bool) -> TestResult {
    match got {
        Err(e) if want(&e) => ensure(!e.to_string().is_empty(), || format!("{what}: empty message")),
        other => Err(format!("{what}: unexpected {other:?}")),
    }
}

/// Runs `tests` on device 0; without a usable GPU reports each as skipped with the reason. Exits 1 if any
/// test failed.
pub(crate) fn run(tests: &[(&str, TestFn)]) {
    let total = tests.len();
    let stream = match kd_kernels::cuda::default_stream(0) {
        Ok(stream) => stream,
        Err(e) => {
            let reason = e.to_string().replace('\n', " ");
            for (name, _) in tests {
                println!("test {name} ... skipped: {reason}");
            }
            println!("gpu: 0 passed, 0 failed, {total} skipped");
            return;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    let running = Arc::new(Mutex::new((String::new(), Instant::now())));
    watchdog(running.clone());
    for (name, test) in tests {
        *running.lock().unwrap() = (name.to_string(), Instant::now());
        let outcome = match catch_unwind(AssertUnwindSafe(|| test(&stream))) {
            Ok(result) => result,
            Err(panic) => Err(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            )),
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Err(msg) => {
                failed += 1;
                println!("test {name} ... FAILED: {msg}");
            }
        }
    }
    println!("gpu: {passed} passed, {failed} failed, 0 skipped");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Records a failure when `got` is not within `tol` of `reference` under the tolerance table's measure
/// (`max_rel_err`), or when their lengths differ.
pub(crate) fn close(what: &str, got: &[f64], reference: &[f64], tol: f64, failures: &mut Vec<String>) {
    let c = kd_kernels::tolerance::Comparison::of(got.iter().copied(), reference.iter().copied());
    if got.len() != reference.len() || !c.passes(tol) {
        failures.push(format!("{what}: {c:?} > {tol:e} (lengths {} / {})", got.len(), reference.len()));
    }
}
