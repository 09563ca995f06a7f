//! What burn's CUDA backend adds to every family: the order against cubecl's lazy queue, and the inputs the
//! kernels refuse there (CWD and pixel KD stand for every family).

use super::burn_support::{logits, tensor, values};
use super::compare::{check_close, limit, PairFn, TestResult};
use burn::tensor::{DType, Device};
use kd_kernels::cwd::CwdConfig;
use kd_kernels::pixel_kd::PixelKdConfig;
use kd_kernels::tolerance::OutputKind;
use kd_kernels_burn::{cwd_loss, pixel_kd_loss, reference};

/// A cubecl op writes the student right before the loss and the loss and its gradient are consumed by
/// cubecl ops right after, in a loop over buffers large enough that a missing wait would read stale or
/// half-written data: every step must equal the reference, and the untracked (no autodiff) path too.
pub fn check_ordering(device: &Device) -> TestResult {
    let shape = [8, 19, 64, 128];
    let config = CwdConfig::default();
    let base = tensor(logits(shape, 5, 3.0), shape, device, DType::F32);
    let teacher = tensor(logits(shape, 6, 3.0), shape, device, DType::F32);
    for step in 0..6 {
        let scale = 0.5 + step as f64 * 0.25;
        let run = |f: PairFn<'_>| -> (Vec<f64>, Vec<f64>) {
            let weight = base.clone().require_grad();
            // Written by cubecl just before the loss reads it (queued, not yet run).
            let student = (weight.clone() * scale).tanh() * 4.0 + step as f64;
            let loss = f(student, teacher.clone());
            // Consumed by cubecl right after.
            let total = loss * 3.0 + 1.0;
            let grads = total.backward();
            let g = weight.grad(&grads).expect("the parameter has a gradient");
            (values(total), values(g))
        };
        let (ours, ours_g) = run(&|s, t| cwd_loss(s, t, &config).expect("valid input"));
        let (theirs, theirs_g) = run(&|s, t| reference::cwd_loss(s, t, &config));
        check_close(&format!("ordering step {step} loss"), ours, theirs, limit(DType::F32, OutputKind::Loss))?;
        check_close(&format!("ordering step {step} grad"), ours_g, theirs_g, limit(DType::F32, OutputKind::Tensor))?;
    }
    let plain = device.clone().inner();
    let s = tensor(logits(shape, 7, 3.0), shape, &plain, DType::F32);
    let t = tensor(logits(shape, 8, 3.0), shape, &plain, DType::F32);
    let kd = PixelKdConfig::default();
    let ours = values(pixel_kd_loss((s.clone() * 2.0).exp().log(), t.clone(), &kd).expect("valid") * 2.0);
    let theirs = values(reference::pixel_kd_loss((s * 2.0).exp().log(), t, &kd) * 2.0);
    check_close("untracked pixel kd", ours, theirs, limit(DType::F32, OutputKind::Loss))
}

/// Inputs the kernels cannot take on CUDA are typed errors before anything runs.
pub fn check_errors(device: &Device) -> TestResult {
    let shape = [2, 3, 4, 4];
    let s = tensor(logits(shape, 1, 1.0), shape, device, DType::F32);
    let t = tensor(logits(shape, 2, 1.0), shape, device, DType::F32);
    if cwd_loss(s.clone(), t.clone().require_grad(), &CwdConfig::default()).is_ok() {
        return Err("a tracked teacher without teacher_grad was accepted".into());
    }
    if pixel_kd_loss(s, t.cast(DType::F16), &PixelKdConfig::default()).is_ok() {
        return Err("a teacher of another dtype was accepted".into());
    }
    Ok(())
}
