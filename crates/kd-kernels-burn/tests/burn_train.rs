//! `examples/train_burn.rs` as a test: the distillation loss (CWD plus pixel KD; SemCKD) falls over a few
//! dozen Adam steps, and step 0's loss equals the same loss written in burn's own tensor operations.
#![allow(deprecated)] // burn 0.22's NdArray

#[allow(dead_code)] // the example's `main`
#[path = "../examples/train_burn.rs"]
mod train_burn;

use burn::tensor::Device;
use kd_kernels::tolerance::{tolerance, OutputKind};

/// A few dozen steps; small, as CI runs this test unoptimised (burn's debug convolutions are slow).
const STEPS: usize = 30;

fn assert_falls_from_burns_formula(report: &train_burn::TrainReport) {
    let losses = &report.losses;
    assert_eq!(losses.len(), STEPS);
    assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0), "{losses:?}");

    let step0 = losses[0];
    let rel = (step0 - report.step0_burn_formula).abs() / report.step0_burn_formula.abs();
    assert!(
        rel <= tolerance(kd_kernels::DType::F32, OutputKind::Loss),
        "step 0: ours {step0} vs burn's formula {} (rel {rel})",
        report.step0_burn_formula
    );

    // Falling: the last loss well under the first, and the tail under the head on average (Adam may
    // wobble step to step).
    let last = *losses.last().unwrap();
    assert!(last < 0.5 * step0, "the loss did not fall enough: {step0} -> {last}; {losses:?}");
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[STEPS - 5..].iter().sum::<f64>() / 5.0;
    assert!(tail < head, "head {head} tail {tail}");
}

/// The examples seed the device's generator; one run at a time keeps each run's draws its own.
static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_loss_falls_and_starts_at_burns_formula() {
    let _serial = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::ndarray().autodiff();
    let report = train_burn::train(STEPS, &device, false).expect("the example trains");
    assert_falls_from_burns_formula(&report);
}

#[test]
fn semckd_falls_and_starts_at_burns_formula() {
    let _serial = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::ndarray().autodiff();
    let report = train_burn::train_semckd(STEPS, &device, false).expect("the example trains");
    assert_falls_from_burns_formula(&report);
}
