//! PKD through the C ABI on two levels: the loss and the second level's gradient of the Rust reference; a
//! level whose teacher has another shape is the crate's error, which says to resize.

use kd::ndarray::Array4;
use kd::pkd::{PkdConfig, PkdCpu};
use kd::KdError;

use crate::support::{numbers, status, Lines};

pub fn check(lines: &Lines, student: &Array4<f32>, teacher: &Array4<f32>) {
    assert_eq!(status(lines, "pkd_cpu"), (0, String::new()));
    let small_s = Array4::from_shape_vec([2, 3, 2, 2], student.iter().take(24).copied().collect()).expect("shape");
    let small_t = Array4::from_shape_vec([2, 3, 2, 2], teacher.iter().take(24).copied().collect()).expect("shape");
    let pkd = PkdCpu::new(PkdConfig { loss_weight: 6.0 })
        .unwrap()
        .forward_backward(&[student.view(), small_s.view()], &[teacher.view(), small_t.view()])
        .unwrap();
    assert!(pkd.loss > 0.0);
    assert_eq!(numbers(&lines["pkd_loss"])[0], pkd.loss);
    let grad1: Vec<f32> = lines["pkd_grad1"].split_whitespace().map(|v| v.parse().expect("an f32")).collect();
    assert_eq!(grad1, pkd.grad_student[1].iter().map(|&g| g as f32).collect::<Vec<_>>());
    let mismatch = KdError::LevelShapeMismatch { level: 1, student: vec![2, 3, 2, 2], teacher: vec![2, 3, 1, 4] };
    assert_eq!(status(lines, "bad_pkd_level"), (2, mismatch.to_string()));
}
