//! `examples/train_candle.rs` as a test: the loss falls over the run, and step 0's loss is what the same
//! losses written in candle's own ops give for the same student and teacher (`candle_support::check_training`;
//! on a GPU in `tests/candle_cuda.rs`).

/// The op checks that `candle_support` lists are `tests/candle_ops.rs`'s; this binary runs the example alone.
macro_rules! candle_tests {
    ($($name:ident => $check:path,)*) => {};
}

mod candle_support;

use candle_core::Device;

#[test]
fn training_on_the_cpu_lowers_the_loss_and_starts_at_the_formula() {
    if let Err(e) = candle_support::check_training(&Device::Cpu) {
        panic!("{e}");
    }
}
