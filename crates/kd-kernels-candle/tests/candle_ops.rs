//! The candle ops on candle's CPU device (the crate's f64 reference behind them) against the same losses
//! written in candle's own ops and their autograd. The same checks run on a GPU in `tests/candle_cuda.rs`.

mod candle_support;

use candle_core::Device;
use candle_support as support;

fn run(check: fn(&Device) -> support::TestResult) {
    if let Err(e) = check(&Device::Cpu) {
        panic!("{e}");
    }
}

#[test]
fn cwd_matches_candle_autograd() {
    run(support::check_cwd);
}

#[test]
fn pixel_kd_matches_candle_autograd() {
    run(support::check_pixel_kd);
}

#[test]
fn icsd_matches_candle_autograd() {
    run(support::check_icsd);
}

#[test]
fn dist_matches_candle_autograd() {
    run(support::check_dist);
}

#[test]
fn aicsd_matches_candle_autograd() {
    run(support::check_aicsd);
}

#[test]
fn cwt_matches_candle_autograd_into_every_parameter() {
    run(support::check_cwt);
}

#[test]
fn semckd_matches_candle_autograd_into_every_input() {
    run(support::semckd::check_semckd);
}

#[test]
fn semckd_strided_and_offset_inputs_are_handled() {
    run(support::semckd::check_semckd_layouts);
}

#[test]
fn semckd_misuse_is_an_error_that_says_what_to_fix() {
    run(support::semckd::check_semckd_errors);
}

#[test]
fn pkd_matches_the_cpu_reference_over_every_level() {
    run(support::pkd_ifvd::check_pkd);
}

#[test]
fn ifvd_matches_the_cpu_reference_for_every_label_type() {
    run(support::pkd_ifvd::check_ifvd);
}

#[test]
fn pkd_and_ifvd_misuse_is_an_error_that_says_what_to_fix() {
    run(support::pkd_ifvd::check_pkd_ifvd_errors);
}

#[test]
fn skd_matches_the_cpu_reference() {
    run(support::skd_cirkd::check_skd);
}

#[test]
fn cirkd_matches_the_cpu_reference() {
    run(support::skd_cirkd::check_cirkd);
}

#[test]
fn skd_and_cirkd_misuse_is_an_error_that_says_what_to_fix() {
    run(support::skd_cirkd::check_skd_cirkd_errors);
}

#[test]
fn strided_and_offset_inputs_are_handled() {
    run(support::check_layouts);
}

#[test]
fn misuse_is_an_error_that_says_what_to_fix() {
    run(support::check_errors);
}
