//! GPU tests, under a small harness of their own (`harness = false` in Cargo.toml): one file per loss family,
//! registered in [`FAMILIES`] below, and one shared harness.
//!
//! Without a usable GPU every test is reported as `skipped` with the reason, and the binary exits 0; with
//! one, every test runs and the binary exits 1 if any failed. Command-line arguments (`--test-threads=1`
//! from the GPU runner, filters or `--nocapture` from `cargo test`) are ignored: the suite always runs whole.
//!
//! GPU results are compared with the f64 CPU reference under `kd_kernels::tolerance::tolerance(dtype, kind)`,
//! the same table the verifier uses, never loosened here.

#[path = "../common/mod.rs"]
mod common;
mod cwd;
mod cwt;
mod dist;
mod fixtures;
mod harness;
mod icsd;
mod ifvd;
mod pair;
mod pixel_kd;
mod pkd;
mod semckd;
mod skd;

/// Every family's tests, in order; `pair::LAST` goes last (see there).
const FAMILIES: &[&[(&str, harness::TestFn)]] = &[
    fixtures::TESTS,
    cwd::TESTS,
    pixel_kd::TESTS,
    pair::TESTS,
    icsd::TESTS,
    semckd::TESTS,
    cwt::TESTS,
    pkd::TESTS,
    ifvd::TESTS,
    dist::TESTS,
    skd::TESTS,
    pair::LAST,
];

fn main() {
    // Arguments are ignored on purpose (see the module docs).
    let tests: Vec<(&str, harness::TestFn)> = FAMILIES.iter().flat_map(|f| f.iter().copied()).collect();
    harness::run(&tests);
}
