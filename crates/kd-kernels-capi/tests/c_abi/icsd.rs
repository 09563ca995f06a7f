//! ICSD through the C ABI: the loss and the student's matrix of the Rust reference.

use kd::icsd::{IcsdConfig, IcsdCpu};
use kd::ndarray::Array4;

use crate::support::{numbers, status, Lines};

pub fn check(lines: &Lines, student: &Array4<f32>, teacher: &Array4<f32>) {
    assert_eq!(status(lines, "icsd_cpu"), (0, String::new()));
    let icsd = IcsdCpu::new(IcsdConfig::default()).unwrap().forward_backward(student.view(), teacher.view()).unwrap();
    assert!(icsd.loss > 0.0);
    assert_eq!(numbers(&lines["icsd_loss"])[0], icsd.loss);
    assert_eq!(numbers(&lines["icsd_sim_student"]), icsd.sim_student.iter().copied().collect::<Vec<_>>());
}
