//! CIRKD through the C ABI (student [2, 3, 4, 5], teacher [2, 2, 4, 5]: odd pooled edges, Cs != Ct): every pool
//! mode, every dtype for one of them (the same values, exact in each, so the f64 loss is the reference's in
//! all of them), and the crate's errors.

use kd::cirkd::{CirkdConfig, CirkdCpu, CirkdPool};
use kd::ndarray::Array4;
use kd::KdError;

use crate::support::{assert_relation_case, narrow_teacher, status, Lines};

pub fn check(lines: &Lines, student: &Array4<f32>) {
    let teacher = narrow_teacher();
    let cirkd = |tau, loss_weight, pool| {
        let config = CirkdConfig { tau, loss_weight, pool };
        CirkdCpu::new(config).unwrap().forward_backward(student.view(), teacher.view()).unwrap()
    };
    assert_relation_case(lines, "cirkd_auto", &cirkd(0.1, 1.0, CirkdPool::Auto), "f32");
    assert_relation_case(lines, "cirkd_none", &cirkd(0.5, 2.0, CirkdPool::None), "f32");
    let k3 = cirkd(0.5, 1.0, CirkdPool::Avg(3));
    assert_relation_case(lines, "cirkd_k3", &k3, "f32");
    for dtype in ["f32", "f16", "bf16", "f64"] {
        assert_relation_case(lines, &format!("cirkd_k2_{dtype}"), &cirkd(1.0, 1.0, CirkdPool::Avg(2)), dtype);
    }
    // The pool is seen: each mode gives another loss.
    assert_ne!(k3.loss, cirkd(0.5, 1.0, CirkdPool::None).loss);

    let (code, message) = status(lines, "bad_cirkd_pool");
    assert_eq!(code, 4);
    assert!(message.starts_with("parameter `pool` = -1 is invalid"), "{message}");
    let tau = KdError::InvalidParameter { name: "tau", value: "0".into(), requirement: "finite and > 0" };
    assert_eq!(status(lines, "bad_cirkd_tau"), (4, tau.to_string()));
    let rank = KdError::WrongRank { what: "teacher", expected: 4, got: 3 };
    assert_eq!(status(lines, "bad_cirkd_rank"), (2, rank.to_string()));
    assert_eq!(status(lines, "bad_cirkd_params").0, 1);
}
