//! SKD through the C ABI (student [2, 3, 4, 5], teacher [2, 2, 4, 5]: odd pooled edges, Cs != Ct): both pool
//! modes, every dtype for the official one (the same values, exact in each, so the f64 loss is the
//! reference's in all of them), and the crate's errors.

use kd::ndarray::Array4;
use kd::skd::{SkdConfig, SkdCpu, SkdPool};
use kd::KdError;

use crate::support::{assert_relation_case, narrow_teacher, status, Lines};

pub fn check(lines: &Lines, student: &Array4<f32>) {
    let teacher = narrow_teacher();
    let skd = |loss_weight, pool| {
        SkdCpu::new(SkdConfig { loss_weight, pool }).unwrap().forward_backward(student.view(), teacher.view()).unwrap()
    };
    let unpooled = skd(1.0, SkdPool::None);
    assert_relation_case(lines, "skd_p1", &unpooled, "f32");
    for dtype in ["f32", "f16", "bf16", "f64"] {
        assert_relation_case(lines, &format!("skd_p2_{dtype}"), &skd(10.0, SkdPool::Max2x2), dtype);
    }
    // The pool is seen: each mode gives another loss.
    assert_ne!(unpooled.loss, skd(1.0, SkdPool::Max2x2).loss);

    let pool = KdError::InvalidParameter {
        name: "pool",
        value: "3".into(),
        requirement: "2 (the official 2x2 max pool) or 1 (no pooling)",
    };
    assert_eq!(status(lines, "bad_skd_pool"), (4, pool.to_string()));
    let teacher_shape = kd::skd::check_shapes(&[2, 3, 4, 5], &[2, 2, 3, 5]).unwrap_err();
    assert_eq!(status(lines, "bad_skd_teacher"), (2, teacher_shape.to_string()));
    let (code, message) = status(lines, "bad_skd_null");
    assert_eq!(code, 1);
    assert!(message.starts_with("teacher: a null pointer"), "{message}");
    assert_eq!(status(lines, "skd_cuda_null_ctx").0, 1);
}
