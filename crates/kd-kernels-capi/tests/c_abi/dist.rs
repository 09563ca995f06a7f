//! DIST through the C ABI, f32 in: the reference's loss unchanged and its gradient rounded once.

use kd::dist::{DistConfig, DistCpu};
use kd::ndarray::Array4;

use crate::support::{numbers, status, Lines};

pub fn check(lines: &Lines, student: &Array4<f32>, teacher: &Array4<f32>) {
    assert_eq!(status(lines, "dist_cpu"), (0, String::new()));
    let config = DistConfig { tau: 2.0, beta: 1.5, gamma: 0.5, loss_weight: 3.0 };
    let dist = DistCpu::new(config).unwrap().forward_backward(student.view(), teacher.view()).unwrap();
    assert_eq!(numbers(&lines["dist_loss"])[0], dist.loss);
    let grad: Vec<f32> = lines["dist_grad"].split_whitespace().map(|v| v.parse().expect("an f32")).collect();
    assert_eq!(grad.len(), dist.grad_student.len());
    for (got, want) in grad.iter().zip(dist.grad_student.iter()) {
        assert_eq!(*got, *want as f32);
    }
}
