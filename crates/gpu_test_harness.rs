//! The runner of the adapters' GPU test binaries (`harness = false`): candle's `tests/candle_cuda.rs` and
//! burn's `tests/burn_cuda/` include this file by path, so both report alike. Where no GPU run is
//! possible, every test is reported `skipped` with the reason and the binary exits 0 (a skip is never a
//! pass); otherwise every test runs, a panic counting as a failure, and the binary exits 1 if any failed.

/// Reports every test of `suite` as skipped, for `reason`.
pub fn skip_all<'a>(suite: &str, names: impl ExactSizeIterator<Item = &'a str>, reason: &str) {
    let count = names.len();
    for name in names {
        println!("test {suite}::{name} ... skipped: {reason}");
    }
    println!("{suite}: {count} skipped, 0 run ({reason})");
}

/// One named check of a device: `Err` says what differed.
pub type Test<D> = (&'static str, fn(&D) -> Result<(), String>);

/// Runs every test of `suite` on `device`; exits 1 if any failed.
#[allow(dead_code)] // burn's binary calls it only with its `cuda` feature
pub fn run_all<D>(suite: &str, tests: &[Test<D>], device: &D) {
    let mut failed = 0;
    for (name, test) in tests {
        // The device is only read by the checks; a panicking check cannot leave it half-updated.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(device))).unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or(p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default())
        });
        match outcome {
            Ok(()) => println!("test {suite}::{name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("test {suite}::{name} ... FAILED: {e}");
            }
        }
    }
    println!("{suite}: {} passed, {failed} failed", tests.len() - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
