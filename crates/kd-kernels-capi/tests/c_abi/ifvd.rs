//! IFVD through the C ABI with uint8 labels: the loss of the Rust reference; an unknown label dtype is a dtype
//! error.

use kd::ifvd::{IfvdConfig, IfvdCpu};
use kd::ndarray::{Array3, Array4};

use crate::support::{numbers, status, Lines};

pub fn check(lines: &Lines, student: &Array4<f32>, teacher: &Array4<f32>) {
    assert_eq!(status(lines, "ifvd_cpu"), (0, String::new()));
    let labels = Array3::from_shape_fn((2, 4, 5), |(n, h, w)| {
        let i = (n * 4 + h) * 5 + w;
        if i % 7 == 0 {
            255
        } else {
            ((i / 3) % 3) as i64
        }
    });
    let config = IfvdConfig { num_classes: 3, loss_weight: 20.0 };
    let ifvd = IfvdCpu::new(config).unwrap().forward_backward(student.view(), teacher.view(), labels.view()).unwrap();
    assert!(ifvd.loss > 0.0);
    assert_eq!(numbers(&lines["ifvd_loss"])[0], ifvd.loss);
    let (code, message) = status(lines, "bad_label_dtype");
    assert_eq!(code, 6);
    assert!(message.contains("unknown kd_label_dtype 5"), "{message}");
}
