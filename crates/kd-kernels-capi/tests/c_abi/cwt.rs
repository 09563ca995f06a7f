//! CWT through the C ABI (student [2, 3, 4, 5] -> hidden 4 -> teacher [2, 2, 4, 5]), checked against the Rust
//! reference on the same values; a teacher of another shape is the crate's error.

use kd::cwt::{CwtConfig, CwtCpu, CwtNormalize, MlpParams};
use kd::ndarray::{Array1, Array2, Array4};
use kd::KdError;

use crate::support::{narrow_teacher, numbers, status, Lines};

pub fn check(lines: &Lines, student: &Array4<f32>) {
    assert_eq!(status(lines, "cwt_cpu"), (0, String::new()));
    let cwt_teacher = narrow_teacher();
    let w1 = Array2::from_shape_vec((4, 3), (0..12).map(|i| ((i * 7) % 13) as f32 / 4.0 - 1.5).collect()).expect("w1");
    let b1 = Array1::from_iter((0..4).map(|i| (i as f32 - 1.0) / 2.0));
    let w2 = Array2::from_shape_vec((2, 4), (0..8).map(|i| ((i * 5) % 11) as f32 / 4.0 - 1.25).collect()).expect("w2");
    let b2 = Array1::from_iter((0..2).map(|i| i as f32 / 4.0));
    let mlp = MlpParams { w1: w1.view(), b1: b1.view(), w2: w2.view(), b2: b2.view() };
    let cwt = CwtCpu::new(CwtConfig { loss_weight: 0.5, normalize: CwtNormalize::Batch })
        .unwrap()
        .forward_backward(student.view(), cwt_teacher.view(), &mlp)
        .unwrap();
    assert!(cwt.loss > 0.0);
    assert_eq!(numbers(&lines["cwt_loss"])[0], cwt.loss);
    assert_eq!(numbers(&lines["cwt_grad_w1"]), cwt.grad_w1.iter().copied().collect::<Vec<_>>());
    let teacher_mismatch =
        KdError::ShapeMismatch { what: "teacher", expected: vec![2, 2, 4, 5], got: vec![2, 2, 4, 6] };
    assert_eq!(status(lines, "bad_cwt_teacher"), (2, teacher_mismatch.to_string()));
}
