//! The candle tests of `tests/candle_ops.rs` on candle's CUDA device (feature `cuda`), under a small
//! harness of its own (`harness = false`): where the crate was built without `cuda`, without
//! kernels, or where no GPU is present, every test is reported as `skipped` with the reason and the binary
//! exits 0; otherwise every test runs and the binary exits 1 if any failed.

mod candle_support;
#[path = "../../gpu_test_harness.rs"]
mod gpu_test_harness;

use candle_core::Device;
use candle_support as support;

type Check = fn(&Device) -> support::TestResult;

const TESTS: &[(&str, Check)] = &[
    ("cwd_matches_candle_autograd", support::check_cwd),
    ("pixel_kd_matches_candle_autograd", support::check_pixel_kd),
    ("icsd_matches_candle_autograd", support::check_icsd),
    ("dist_matches_candle_autograd", support::check_dist),
    ("aicsd_matches_candle_autograd", support::check_aicsd),
    ("cwt_matches_candle_autograd_into_every_parameter", support::check_cwt),
    ("semckd_matches_candle_autograd_into_every_input", support::semckd::check_semckd),
    ("semckd_strided_and_offset_inputs_are_handled", support::semckd::check_semckd_layouts),
    ("semckd_misuse_is_an_error_that_says_what_to_fix", support::semckd::check_semckd_errors),
    ("pkd_matches_the_cpu_reference_over_every_level", support::pkd_ifvd::check_pkd),
    ("ifvd_matches_the_cpu_reference_for_every_label_type", support::pkd_ifvd::check_ifvd),
    ("pkd_and_ifvd_misuse_is_an_error_that_says_what_to_fix", support::pkd_ifvd::check_pkd_ifvd_errors),
    ("skd_matches_the_cpu_reference", support::skd_cirkd::check_skd),
    ("cirkd_matches_the_cpu_reference", support::skd_cirkd::check_cirkd),
    ("skd_and_cirkd_misuse_is_an_error_that_says_what_to_fix", support::skd_cirkd::check_skd_cirkd_errors),
    ("strided_and_offset_inputs_are_handled", support::check_layouts),
    ("misuse_is_an_error_that_says_what_to_fix", support::check_errors),
    ("training_lowers_the_loss_and_starts_at_the_formula", support::check_training),
];

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
    match device() {
        Ok(device) => gpu_test_harness::run_all("candle_cuda", TESTS, &device),
        Err(reason) => gpu_test_harness::skip_all("candle_cuda", TESTS.iter().map(|t| t.0), &reason),
    }
}
