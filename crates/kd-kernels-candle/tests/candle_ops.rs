//! The candle ops on candle's CPU device (the crate's f64 reference behind them) against the same losses
//! written in candle's own ops and their autograd, or the crate's CPU reference: a `#[test]` per check that
//! `candle_support` and its family modules list. The same checks run on a GPU in `tests/candle_cuda.rs`.

use candle_core::Device;

fn run(check: fn(&Device) -> candle_support::TestResult) {
    if let Err(e) = check(&Device::Cpu) {
        panic!("{e}");
    }
}

/// One `#[test]` a check, each run on the CPU device.
macro_rules! candle_tests {
    ($($name:ident => $check:path,)*) => {
        $(
            #[test]
            fn $name() {
                crate::run($check);
            }
        )*
    };
}

mod candle_support;
