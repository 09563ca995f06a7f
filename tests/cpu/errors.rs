//! Every bad input gives its typed `KdError`, with a message that says what to fix, and nothing panics:
//! configuration checks, the CPU API, shape validation, parsing, and the GPU probe on a machine with or
//! without a GPU.

use std::path::Path;

use kd_kernels::cwd::{CwdConfig, CwdCpu};
use kd_kernels::pixel_kd::{PixelKdConfig, PixelKdCpu, Reduction};
use kd_kernels::{KdError, Nchw};
use ndarray::Array4;

const BAD_TAUS: [f64; 6] = [0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
const BAD_WEIGHTS: [f64; 3] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];

fn assert_invalid(what: &str, result: Result<(), KdError>, name: &str) {
    match result {
        Err(KdError::InvalidParameter { name: got, value, requirement }) => {
            assert_eq!(got, name, "{what}");
            assert!(!value.is_empty() && !requirement.is_empty(), "{what}");
            let e = KdError::InvalidParameter { name: got, value, requirement };
            let msg = e.to_string();
            assert!(msg.contains(name), "{what}: message {msg:?} does not name `{name}`");
        }
        other => panic!("{what}: expected InvalidParameter {{ name: {name:?} }}, got {other:?}"),
    }
}

#[test]
fn bad_tau_is_rejected_everywhere() {
    for tau in BAD_TAUS {
        let c = CwdConfig { tau, ..CwdConfig::default() };
        assert_invalid(&format!("CwdConfig::validate tau={tau}"), c.validate(), "tau");
        assert_invalid(&format!("CwdCpu::new tau={tau}"), CwdCpu::new(c).map(|_| ()), "tau");
        let p = PixelKdConfig { tau, ..PixelKdConfig::default() };
        assert_invalid(&format!("PixelKdConfig::validate tau={tau}"), p.validate(), "tau");
        assert_invalid(&format!("PixelKdCpu::new tau={tau}"), PixelKdCpu::new(p).map(|_| ()), "tau");
    }
    // The message says what tau must be.
    let msg = CwdCpu::new(CwdConfig { tau: -1.0, ..CwdConfig::default() }).unwrap_err().to_string();
    assert!(msg.contains("tau") && msg.contains("-1") && msg.contains("> 0"), "{msg}");
}

#[test]
fn bad_loss_weight_is_rejected_everywhere() {
    for lw in BAD_WEIGHTS {
        let c = CwdConfig { loss_weight: lw, ..CwdConfig::default() };
        assert_invalid(&format!("CwdConfig lw={lw}"), c.validate(), "loss_weight");
        assert_invalid(&format!("CwdCpu::new lw={lw}"), CwdCpu::new(c).map(|_| ()), "loss_weight");
        let p = PixelKdConfig { loss_weight: lw, ..PixelKdConfig::default() };
        assert_invalid(&format!("PixelKdConfig lw={lw}"), p.validate(), "loss_weight");
        assert_invalid(&format!("PixelKdCpu::new lw={lw}"), PixelKdCpu::new(p).map(|_| ()), "loss_weight");
    }
    let msg = PixelKdCpu::new(PixelKdConfig { loss_weight: f64::NAN, ..Default::default() }).unwrap_err().to_string();
    assert!(msg.contains("loss_weight") && msg.contains("finite"), "{msg}");
}

#[test]
fn valid_edge_configs_are_accepted() {
    // Zero and negative weights are allowed (schedules use them); tiny and huge finite tau are valid.
    for lw in [0.0, -3.0, 1e-30, 1e30] {
        CwdCpu::new(CwdConfig { loss_weight: lw, ..CwdConfig::default() }).unwrap();
        PixelKdCpu::new(PixelKdConfig { loss_weight: lw, ..PixelKdConfig::default() }).unwrap();
    }
    for tau in [f64::MIN_POSITIVE, 1e-3, 1e6] {
        CwdConfig { tau, ..CwdConfig::default() }.validate().unwrap();
        PixelKdConfig { tau, ..PixelKdConfig::default() }.validate().unwrap();
    }
    assert_eq!(CwdConfig::default(), CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: false });
    assert_eq!(
        PixelKdConfig::default(),
        PixelKdConfig { tau: 1.0, loss_weight: 10.0, reduction: Reduction::Mean, scale_tau2: false }
    );
}

fn arr(dims: [usize; 4]) -> Array4<f32> {
    Array4::from_shape_fn(dims, |(n, c, h, w)| (n + 2 * c + 3 * h + 5 * w) as f32 * 0.25)
}

#[test]
fn mismatched_shapes_are_shape_mismatch() {
    let cwd = CwdCpu::new(CwdConfig { teacher_grad: true, ..CwdConfig::default() }).unwrap();
    let pkd = PixelKdCpu::new(PixelKdConfig::default()).unwrap();
    let s = arr([2, 3, 4, 5]);
    for other in [[2, 3, 4, 6], [2, 3, 5, 4], [1, 3, 4, 5], [2, 4, 4, 5], [2, 3, 20, 1]] {
        let t = arr(other);
        let expect = KdError::ShapeMismatch { what: "teacher", expected: vec![2, 3, 4, 5], got: other.to_vec() };
        assert_eq!(cwd.forward(s.view(), t.view()).unwrap_err(), expect);
        assert_eq!(cwd.forward_backward(s.view(), t.view()).unwrap_err(), expect);
        assert_eq!(cwd.backward(s.view(), t.view(), 1.0).unwrap_err(), expect);
        assert_eq!(pkd.forward(s.view(), t.view()).unwrap_err(), expect);
        assert_eq!(pkd.forward_backward(s.view(), t.view()).unwrap_err(), expect);
        assert_eq!(pkd.backward(s.view(), t.view(), 1.0).unwrap_err(), expect);
        let msg = expect.to_string();
        assert!(msg.contains("teacher") && msg.contains(&format!("{other:?}")), "{msg}");
    }
}

#[test]
fn zero_size_dims_are_empty_input() {
    let cwd = CwdCpu::new(CwdConfig::default()).unwrap();
    let pkd = PixelKdCpu::new(PixelKdConfig::default()).unwrap();
    for dims in [[0, 3, 4, 5], [2, 0, 4, 5], [2, 3, 0, 5], [2, 3, 4, 0], [0, 0, 0, 0]] {
        let e = arr(dims);
        let expect = KdError::EmptyInput { what: "student", shape: dims.to_vec() };
        assert_eq!(cwd.forward(e.view(), e.view()).unwrap_err(), expect, "{dims:?}");
        assert_eq!(cwd.forward_backward(e.view(), e.view()).unwrap_err(), expect, "{dims:?}");
        assert_eq!(pkd.forward(e.view(), e.view()).unwrap_err(), expect, "{dims:?}");
        assert_eq!(pkd.backward(e.view(), e.view(), 2.0).unwrap_err(), expect, "{dims:?}");
        assert_eq!(Nchw::from_dims("student", &dims).unwrap_err(), expect);
        let msg = expect.to_string();
        assert!(msg.contains("at least 1"), "{msg}");
    }
    // An empty student is reported before a mismatched teacher.
    let e = arr([2, 0, 4, 5]);
    let t = arr([2, 3, 4, 5]);
    assert!(matches!(cwd.forward(e.view(), t.view()), Err(KdError::EmptyInput { what: "student", .. })));
    // A non-empty student with an empty teacher is a shape mismatch.
    assert!(matches!(cwd.forward(t.view(), e.view()), Err(KdError::ShapeMismatch { what: "teacher", .. })));
}

#[test]
fn nchw_validation() {
    for dims in [&[2usize, 3, 4][..], &[1, 2, 3, 4, 5], &[], &[7]] {
        let err = Nchw::from_dims("student", dims).unwrap_err();
        assert_eq!(err, KdError::WrongRank { what: "student", expected: 4, got: dims.len() });
        let msg = err.to_string();
        assert!(msg.contains("rank") && msg.contains("[N, C, H, W]"), "{msg}");
    }
    let ok = Nchw::from_dims("student", &[2, 3, 4, 5]).unwrap();
    assert_eq!(ok, Nchw { n: 2, c: 3, h: 4, w: 5 });
    assert_eq!((ok.numel(), ok.plane(), ok.dims(), ok.to_string()), (120, 20, [2, 3, 4, 5], "2x3x4x5".to_string()));
    assert!(ok.expect_same("teacher", &[2, 3, 4, 5]).is_ok());
    assert!(matches!(ok.expect_same("teacher", &[2, 3, 4]), Err(KdError::ShapeMismatch { what: "teacher", .. })));
    // Element counts that overflow usize or exceed i64 (the kernels' index type) are TooLarge, not a panic.
    for dims in [[usize::MAX, 2, 1, 1], [1 << 40, 1 << 40, 1, 1], [1 << 32, 1 << 31, 1, 1]] {
        match Nchw::from_dims("student", &dims) {
            Err(KdError::TooLarge { what: "student", detail }) => assert!(!detail.is_empty()),
            other => panic!("{dims:?}: expected TooLarge, got {other:?}"),
        }
    }
    // 2^63 - 1 elements is still representable.
    assert!(Nchw::from_dims("student", &[(1 << 31) - 1, 1 << 32, 1, 1]).is_ok());
}

#[test]
fn reduction_parsing() {
    for r in [Reduction::Mean, Reduction::BatchMean, Reduction::Sum, Reduction::PixelMean] {
        assert_eq!(r.name().parse::<Reduction>().unwrap(), r);
    }
    for bad in ["abc", "", "Mean", "SUM", " mean", "batch_mean", "none"] {
        match bad.parse::<Reduction>() {
            Err(KdError::InvalidParameter { name: "reduction", value, requirement }) => {
                assert!(value.contains(bad), "{value}");
                assert!(requirement.contains("pixelmean"), "{requirement}");
            }
            other => panic!("{bad:?}: expected InvalidParameter, got {other:?}"),
        }
    }
    let msg = "abc".parse::<Reduction>().unwrap_err().to_string();
    assert!(msg.contains("reduction") && msg.contains("abc") && msg.contains("batchmean"), "{msg}");
    let shape = Nchw { n: 2, c: 3, h: 4, w: 5 };
    assert_eq!(Reduction::Mean.divisor(&shape), 120.0);
    assert_eq!(Reduction::BatchMean.divisor(&shape), 2.0);
    assert_eq!(Reduction::Sum.divisor(&shape), 1.0);
    assert_eq!(Reduction::PixelMean.divisor(&shape), 40.0);
}

#[test]
fn every_error_message_is_non_empty_and_says_what_to_fix() {
    let cases: Vec<(KdError, &[&str])> = vec![
        (KdError::WrongRank { what: "student", expected: 4, got: 3 }, &["student", "rank 3", "reshape"]),
        (
            KdError::ShapeMismatch { what: "teacher", expected: vec![1, 2], got: vec![2, 1] },
            &["teacher", "[2, 1]", "[1, 2]"],
        ),
        (KdError::EmptyInput { what: "student", shape: vec![0, 1, 1, 1] }, &["student", "at least 1"]),
        (
            KdError::BufferTooSmall { what: "grad_student", needed: 10, len: 9 },
            &["grad_student", "allocate at least 10"],
        ),
        (KdError::TooLarge { what: "student", detail: "many blocks".into() }, &["student", "many blocks"]),
        (
            KdError::InvalidParameter { name: "tau", value: "0".into(), requirement: "finite and > 0" },
            &["tau", "finite and > 0"],
        ),
        (KdError::OutputMismatch { what: "grad_teacher", fix: "pass None" }, &["grad_teacher", "pass None"]),
        (
            KdError::DTypeMismatch { what: "teacher".into(), expected: "f32".into(), got: "f16".into() },
            &["teacher", "f32", "f16"],
        ),
        (KdError::ContextMismatch { what: "student" }, &["student", "context"]),
        (
            KdError::Unsupported { what: "CwdPath::SinglePass", detail: "rows too long; use Auto".into() },
            &["SinglePass", "does not apply", "use Auto"],
        ),
        (KdError::KernelsUnavailable, &["nvcc", "CPU reference"]),
        (KdError::CudaUnavailable { reason: "no driver".into() }, &["no driver"]),
        (KdError::Cuda { op: "launch", error: "boom".into() }, &["launch", "boom"]),
    ];
    for (e, needles) in cases {
        let msg = e.to_string();
        assert!(!msg.trim().is_empty(), "{e:?}: empty message");
        for n in needles {
            assert!(msg.contains(n), "{e:?}: {msg:?} does not contain {n:?}");
        }
        // It is a std error, usable with `?` into Box<dyn Error>.
        let boxed: Box<dyn std::error::Error> = Box::new(e.clone());
        assert_eq!(boxed.to_string(), msg);
    }
}

/// Whether this machine has an NVIDIA driver with a device node (decided without touching libcuda).
fn gpu_present() -> bool {
    Path::new("/proc/driver/nvidia").exists() || Path::new("/dev/nvidia0").exists()
}

#[test]
fn probe_and_default_stream_report_the_machine() {
    let probe = kd_kernels::cuda::probe();
    let stream = kd_kernels::cuda::default_stream(0);
    if !kd_kernels::cuda::KERNELS_COMPILED {
        assert_eq!(probe, Err(KdError::KernelsUnavailable));
        assert!(matches!(stream, Err(KdError::KernelsUnavailable)), "{stream:?}");
    } else if gpu_present() {
        assert_eq!(probe, Ok(()), "a GPU is present but probe() fails");
        assert!(stream.is_ok(), "a GPU is present but default_stream(0) fails: {:?}", stream.err());
        // An ordinal past the last device is an error, not a panic.
        match kd_kernels::cuda::default_stream(1 << 20) {
            Err(KdError::CudaUnavailable { reason }) => assert!(reason.contains("requested"), "{reason}"),
            other => panic!("default_stream(2^20): expected CudaUnavailable, got {:?}", other.err()),
        }
    } else {
        match &probe {
            Err(KdError::CudaUnavailable { reason }) => assert!(!reason.is_empty()),
            other => panic!("no GPU here: expected CudaUnavailable, got {other:?}"),
        }
        match &stream {
            Err(KdError::CudaUnavailable { reason }) => assert!(!reason.is_empty()),
            other => panic!("no GPU here: expected CudaUnavailable, got {:?}", other.as_ref().err()),
        }
        // Asking twice is just as safe.
        assert!(kd_kernels::cuda::probe().is_err());
        assert!(kd_kernels::cuda::default_stream(3).is_err());
    }
}
