//! GPU tests, under a small harness of their own (`harness = false` in Cargo.toml): one file per loss family
//! (every family of the crate's registry has one), and one shared harness.
//!
//! Without a usable GPU every test is reported as `skipped` with the reason, and the binary exits 0; with
//! one, every test runs and the binary exits 1 if any failed. Command-line arguments (`--test-threads=1`
//! from the GPU runner, filters or `--nocapture` from `cargo test`) are ignored: the suite always runs whole.
//!
//! GPU results are compared with the f64 CPU reference under `kd_kernels::tolerance::tolerance(dtype, kind)`,
//! the same table the verifier uses, never loosened here.

#[path = "../common/mod.rs"]
mod common;
mod fixtures;
mod harness;
mod pair;
mod student_grad;

/// One module per registered family (`tests/gpu/{module}.rs`, its `TESTS`), from the crate's registry: a
/// family cannot be registered without its GPU tests, and every registered family's tests run.
macro_rules! family_tests {
    ($($variant:ident => $module:ident :: $marker:ident, $name:literal, $fixtures:ident;)*) => {
        $(mod $module;)*

        /// Every test, in order: the fixtures, the pair-loss surface, each family's, and `pair::LAST` last
        /// (see there).
        const TESTS: &[&[(&str, harness::TestFn)]] =
            &[fixtures::TESTS, pair::TESTS, $($module::TESTS,)* pair::LAST];
    };
}
kd_kernels::for_each_family!(family_tests);

fn main() {
    // Arguments are ignored on purpose (see the module docs).
    let tests: Vec<(&str, harness::TestFn)> = TESTS.iter().flat_map(|f| f.iter().copied()).collect();
    harness::run(&tests);
}
