//! CWD through the C ABI: f32 in, the paper's setting, and f64 in with an accumulated, scaled gradient.

use kd::cwd::{CwdConfig, CwdCpu};
use kd::ndarray::Array4;

use crate::support::{numbers, status, Lines};

pub fn check(lines: &Lines, student: &Array4<f32>, teacher: &Array4<f32>) {
    // CWD, f32 in, the paper's setting: the loss and the gradient of the Rust reference.
    let reference =
        CwdCpu::new(CwdConfig::default()).unwrap().forward_backward(student.view(), teacher.view()).unwrap();
    assert_eq!(status(lines, "cwd_cpu"), (0, String::new()));
    let loss = numbers(&lines["cwd_loss"])[0];
    assert!(reference.loss > 0.0);
    assert_eq!(loss, reference.loss, "the C ABI returns the reference's f64 loss unchanged");
    // Printed with 9 significant digits, which round-trip an f32 exactly.
    let grad: Vec<f32> = lines["cwd_grad"].split_whitespace().map(|v| v.parse().expect("an f32")).collect();
    assert_eq!(grad.len(), reference.grad_student.len());
    for (got, want) in grad.iter().zip(reference.grad_student.iter()) {
        assert_eq!(*got, *want as f32, "f32 gradient = the reference's, rounded once");
    }

    // f64 in: same loss to rounding of the inputs (they are exact in f32), gradient 0.5 + 0.5 accumulated.
    assert_eq!(status(lines, "cwd_cpu_f64_a").0, 0);
    assert_eq!(status(lines, "cwd_cpu_f64_b").0, 0);
    assert_eq!(numbers(&lines["cwd_loss_f64"])[0], reference.loss);
    for (got, want) in numbers(&lines["cwd_grad_f64"]).iter().zip(reference.grad_student.iter()) {
        assert!((got - want).abs() <= 1e-15 * want.abs().max(1e-300), "{got} vs {want}");
    }
}
