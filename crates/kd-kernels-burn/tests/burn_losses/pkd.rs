//! PKD: a list of levels, against burn's autograd and the CPU reference.

use super::*;
use kd_kernels::pkd::{PkdConfig, PkdCpu};
use kd_kernels_burn::pkd_loss;

/// Three FPN-like levels of odd sizes (different C, H, W), one batch.
const PKD_LEVELS: [[usize; 4]; 3] = [[2, 3, 5, 7], [2, 5, 3, 3], [2, 1, 1, 2]];

fn pkd_inputs(shapes: &[[usize; 4]], device: &Device, dtype: DType, seed: u64) -> (Vec<Tensor<4>>, Vec<Tensor<4>>) {
    let side = |offset: u64| -> Vec<Tensor<4>> {
        shapes.iter().enumerate().map(|(l, &s)| features(s, seed + offset + l as u64 * 10, device, dtype)).collect()
    };
    (side(0), side(5))
}

/// The student levels marked `require_grad` (on an autodiff device).
fn tracked(levels: Vec<Tensor<4>>) -> Vec<Tensor<4>> {
    levels.into_iter().map(Tensor::require_grad).collect()
}

/// The CPU reference's loss and per-level gradients on the tensors' values (rounded to their dtype).
fn pkd_cpu(config: &PkdConfig, student: &[Tensor<4>], teacher: &[Tensor<4>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let owned = |side: &[Tensor<4>]| -> Vec<(Vec<f64>, [usize; 4])> {
        side.iter().map(|t| (values(t.clone().detach()), t.dims())).collect()
    };
    let (s, t) = (owned(student), owned(teacher));
    fn views(side: &[(Vec<f64>, [usize; 4])]) -> Vec<ArrayView4<'_, f64>> {
        side.iter().map(|(v, dims)| ArrayView4::from_shape(*dims, v).expect("shape")).collect()
    }
    let out = PkdCpu::new(*config).unwrap().forward_backward(&views(&s), &views(&t)).unwrap();
    (vec![out.loss], out.grad_student.iter().map(|g| g.iter().copied().collect()).collect())
}

#[test]
fn pkd_matches_burn_autograd_and_the_cpu_reference() {
    let device = Device::ndarray().autodiff();
    for (dtype, config) in DTYPES.into_iter().zip([PkdConfig::default(), PkdConfig { loss_weight: 6.0 }]) {
        let (student, teacher) = pkd_inputs(&PKD_LEVELS, &device, dtype, 1);
        let student = tracked(student);
        let ours = loss_and_grads(pkd_loss(&student, &teacher, &config).unwrap(), &student, dtype);
        let oracle = loss_and_grads(reference::pkd_loss(&student, &teacher, &config), &student, dtype);
        compare("pkd vs burn autograd", dtype, ours.clone(), oracle);
        compare("pkd vs PkdCpu", dtype, ours, pkd_cpu(&config, &student, &teacher));
    }
}

/// One level alone, and composed with burn ops: the upstream gradient scales the fused gradient.
#[test]
fn pkd_single_level_composes_with_burn_ops() {
    let device = Device::ndarray().autodiff();
    let config = PkdConfig::default();
    for dtype in DTYPES {
        let (student, teacher) = pkd_inputs(&[[3, 4, 2, 3]], &device, dtype, 7);
        let student = tracked(student);
        let total = |loss: Tensor<1>| loss * 2.5 + (student[0].clone() * student[0].clone()).sum();
        let ours = loss_and_grads(total(pkd_loss(&student, &teacher, &config).unwrap()), &student, dtype);
        let oracle = loss_and_grads(total(reference::pkd_loss(&student, &teacher, &config)), &student, dtype);
        compare("2.5 pkd + sum(s^2)", dtype, ours, oracle);
    }
}

/// A constant student channel has `std = 0`: the crate keeps a finite gradient (the term through
/// `x - mean`), which burn's autograd of `sqrt` cannot, so this is held to the CPU reference alone.
#[test]
fn pkd_constant_channel_matches_the_cpu_reference() {
    let device = Device::ndarray().autodiff();
    let config = PkdConfig { loss_weight: 2.0 };
    for dtype in DTYPES {
        let shape = [2, 3, 2, 3];
        let mut values = logits(shape, 3, 2.0);
        values[6..12].fill(0.75);
        values[24..30].fill(0.75);
        let student = vec![Tensor::from_data(TensorData::new(values, shape), (&device, dtype)).require_grad()];
        let teacher = vec![features(shape, 4, &device, dtype)];
        let ours = loss_and_grads(pkd_loss(&student, &teacher, &config).unwrap(), &student, dtype);
        assert!(ours.1[0].iter().all(|g| g.is_finite()), "finite gradient on a constant channel");
        compare("pkd constant channel vs PkdCpu", dtype, ours, pkd_cpu(&config, &student, &teacher));
    }
}

#[test]
fn pkd_untracked_forward_matches() {
    let config = PkdConfig::default();
    for device in [Device::ndarray(), Device::ndarray().autodiff()] {
        for dtype in DTYPES {
            let (student, teacher) = pkd_inputs(&PKD_LEVELS, &device, dtype, 11);
            let ours = values(pkd_loss(&student, &teacher, &config).unwrap());
            let oracle = values(reference::pkd_loss(&student, &teacher, &config));
            assert_close("pkd forward", ours, oracle, limit(dtype, OutputKind::Loss));
        }
    }
}

#[test]
fn pkd_bad_inputs_are_typed_errors() {
    let device = Device::ndarray().autodiff();
    let config = PkdConfig::default();
    let f = |shape: [usize; 4], seed| features(shape, seed, &device, DType::F32);
    let (a, b) = (f([2, 3, 4, 5], 1), f([2, 3, 4, 5], 2));

    let err = pkd_loss(from_ref(&a), &[f([2, 3, 5, 4], 2)], &config).unwrap_err();
    assert!(matches!(err, KdError::LevelShapeMismatch { level: 0, .. }), "{err}");
    assert!(err.to_string().contains("resize"), "{err}");
    assert!(matches!(pkd_loss(&[], &[], &config), Err(KdError::EmptyInput { .. })));
    assert!(matches!(pkd_loss(from_ref(&a), &[], &config), Err(KdError::ShapeMismatch { .. })));
    let one = f([1, 2, 1, 1], 3);
    assert!(matches!(pkd_loss(from_ref(&one), from_ref(&one), &config), Err(KdError::TooFewValues { needed: 2, .. })));
    let wide = b.clone().cast(DType::F64);
    assert!(matches!(pkd_loss(from_ref(&a), from_ref(&wide), &config), Err(KdError::DTypeMismatch { .. })));
    let mixed = pkd_loss(&[a.clone(), wide.clone()], &[b.clone(), wide], &config);
    assert!(matches!(mixed, Err(KdError::DTypeMismatch { .. })), "levels of two dtypes");
    let bad = PkdConfig { loss_weight: f64::INFINITY };
    assert!(matches!(pkd_loss(from_ref(&a), from_ref(&b), &bad), Err(KdError::InvalidParameter { .. })));
    let tracked = b.require_grad() * 2.0;
    let err = pkd_loss(from_ref(&a), from_ref(&tracked), &config).unwrap_err();
    assert!(matches!(err, KdError::Unsupported { .. }) && err.to_string().contains("detach"), "{err}");
    assert!(pkd_loss(&[a], &[tracked.detach()], &config).is_ok());
}
