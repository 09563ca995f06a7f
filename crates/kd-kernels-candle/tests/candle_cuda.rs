//! The candle tests of `tests/candle_ops.rs` on candle's CUDA device (feature `cuda`), under a small
//! harness of its own (`harness = false`): where the crate was built without `cuda`, without
//! kernels, or where no GPU is present, every test is reported as `skipped` with the reason and the binary
//! exits 0; otherwise every test runs and the binary exits 1 if any failed.

use candle_core::Device;
use candle_support as support;

type Check = fn(&Device) -> support::TestResult;

/// The checks a module of `candle_support` lists, as its `TESTS` table.
macro_rules! candle_tests {
    ($($name:ident => $check:path,)*) => {
        pub const TESTS: &[(&str, crate::Check)] = &[$((stringify!($name), $check),)*];
    };
}

mod candle_support;
#[path = "../../gpu_test_harness.rs"]
mod gpu_test_harness;

macro_rules! every_test {
    ($($variant:ident => $module:ident :: $marker:ident, $name:literal, $fixtures:ident;)*) => {
        /// Every registered family's checks, the checks across families, and the training example.
        const TESTS: &[&[(&str, Check)]] = &[
            $(support::$module::TESTS,)*
            support::TESTS,
            &[("training_lowers_the_loss_and_starts_at_the_formula", support::check_training)],
        ];
    };
}
kd_kernels::for_each_family!(every_test);

/// The CUDA device, or why the tests cannot run.
fn device() -> Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err("built without the `cuda` feature".into());
    }
    if !kd_kernels::cuda::KERNELS_COMPILED {
        return Err("the crate was built without nvcc, so it has no kernels".into());
    }
    kd_kernels::cuda::probe().map_err(|e| e.to_string())?;
    Device::new_cuda(0).map_err(|e| format!("candle could not open CUDA device 0: {e}"))
}

fn main() {
    let tests: Vec<(&str, Check)> = TESTS.iter().flat_map(|t| t.iter().copied()).collect();
    match device() {
        Ok(device) => gpu_test_harness::run_all("candle_cuda", &tests, &device),
        Err(reason) => gpu_test_harness::skip_all("candle_cuda", tests.iter().map(|t| t.0), &reason),
    }
}
