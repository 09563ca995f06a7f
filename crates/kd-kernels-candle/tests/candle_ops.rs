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

/// One `#[test]` a check, each run on the CPU device.
macro_rules! cpu_tests {
    ($($name:ident => $check:path,)*) => {
        $(
            #[test]
            fn $name() {
                run($check);
            }
        )*
    };
}

cpu_tests! {
    cwd_matches_candle_autograd => support::check_cwd,
    pixel_kd_matches_candle_autograd => support::check_pixel_kd,
    icsd_matches_candle_autograd => support::check_icsd,
    dist_matches_candle_autograd => support::check_dist,
    aicsd_matches_candle_autograd => support::check_aicsd,
    cwt_matches_candle_autograd_into_every_parameter => support::check_cwt,
    semckd_matches_candle_autograd_into_every_input => support::semckd::check_semckd,
    semckd_strided_and_offset_inputs_are_handled => support::semckd::check_semckd_layouts,
    semckd_misuse_is_an_error_that_says_what_to_fix => support::semckd::check_semckd_errors,
    pkd_matches_the_cpu_reference_over_every_level => support::pkd_ifvd::check_pkd,
    ifvd_matches_the_cpu_reference_for_every_label_type => support::pkd_ifvd::check_ifvd,
    pkd_and_ifvd_misuse_is_an_error_that_says_what_to_fix => support::pkd_ifvd::check_pkd_ifvd_errors,
    skd_matches_the_cpu_reference => support::skd_cirkd::check_skd,
    cirkd_matches_the_cpu_reference => support::skd_cirkd::check_cirkd,
    skd_and_cirkd_misuse_is_an_error_that_says_what_to_fix => support::skd_cirkd::check_skd_cirkd_errors,
    strided_and_offset_inputs_are_handled => support::check_layouts,
    misuse_is_an_error_that_says_what_to_fix => support::check_errors,
}
