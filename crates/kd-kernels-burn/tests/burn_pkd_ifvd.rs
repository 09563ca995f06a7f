//! The feature losses whose student and teacher differ in shape, as burn ops: PKD (a list of levels), IFVD
//! (features and integer labels), SKD and CIRKD (other teacher channels), on burn's NdArray backend in f32 and
//! f64: loss and gradients against burn's own autograd of the same losses (`kd_kernels_burn::reference`, SKD's
//! and CIRKD's with the `P x P` matrices formed) and against the crate's f64 CPU references ([`PkdCpu`],
//! [`IfvdCpu`], [`SkdCpu`], [`CirkdCpu`]); bad inputs are typed errors.
// burn 0.22 deprecates its NdArray backend in favour of Flex; NdArray is the CPU backend this crate covers.
#![allow(deprecated)]

use std::slice::from_ref;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use kd_kernels::cirkd::{CirkdConfig, CirkdCpu, CirkdPool};
use kd_kernels::cpu::PairReference;
use kd_kernels::ifvd::{IfvdConfig, IfvdCpu};
use kd_kernels::pkd::{PkdConfig, PkdCpu};
use kd_kernels::skd::{SkdConfig, SkdCpu, SkdPool};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::KdError;
use kd_kernels_burn::{cirkd_loss, ifvd_loss, pkd_loss, reference, skd_loss};
use ndarray::{ArrayView3, ArrayView4};

const DTYPES: [DType; 2] = [DType::F32, DType::F64];

/// The burn op and the oracles differ in summation order only: f64 agrees to this, f32 to the crate's
/// f32 tolerance.
fn limit(dtype: DType, kind: OutputKind) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        _ => tolerance(kd_kernels::DType::F32, kind),
    }
}

/// Deterministic values in ±`spread` from a fixed LCG (reproducible, no RNG crate).
fn values_for(len: usize, seed: u64, spread: f64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * spread
        })
        .collect()
}

fn features(shape: [usize; 4], seed: u64, device: &Device, dtype: DType) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values_for(shape.iter().product(), seed, 3.0), shape), (device, dtype))
}

fn data<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().convert::<f64>().try_to_vec::<f64>().expect("f64 data")
}

fn assert_close(what: &str, got: Vec<f64>, want: Vec<f64>, limit: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let cmp = Comparison::of(got, want);
    assert!(cmp.max_rel_err <= limit, "{what}: max_rel_err {} > {limit} ({cmp:?})", cmp.max_rel_err);
}

/// The loss and the gradient of every student tensor, through `loss.backward()`.
fn loss_and_grads(loss: Tensor<1>, student: &[Tensor<4>], dtype: DType) -> (Vec<f64>, Vec<Vec<f64>>) {
    assert_eq!(loss.dtype(), dtype, "the loss keeps the input dtype");
    let grads = loss.backward();
    let per_input = student
        .iter()
        .map(|s| {
            let g = s.grad(&grads).expect("every student input has a gradient");
            assert_eq!(g.dtype(), dtype, "the gradient keeps the input dtype");
            data(g)
        })
        .collect();
    (data(loss), per_input)
}

/// The ours / oracle comparison of one loss and its student gradients.
fn compare(what: &str, dtype: DType, ours: (Vec<f64>, Vec<Vec<f64>>), oracle: (Vec<f64>, Vec<Vec<f64>>)) {
    assert_close(&format!("{what} {dtype:?} loss"), ours.0, oracle.0, limit(dtype, OutputKind::Loss));
    for (l, (g, want)) in ours.1.into_iter().zip(oracle.1).enumerate() {
        assert_close(&format!("{what} {dtype:?} d/d student[{l}]"), g, want, limit(dtype, OutputKind::Tensor));
    }
}

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
        side.iter().map(|t| (data(t.clone().detach()), t.dims())).collect()
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
        let mut values = values_for(36, 3, 2.0);
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
            let ours = data(pkd_loss(&student, &teacher, &config).unwrap());
            let oracle = data(reference::pkd_loss(&student, &teacher, &config));
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

/// Labels `[N, Hl, Wl]` at another resolution than the features: classes 0..3 of 5 (3 and 4 absent),
/// 255 (ignored) and -1 (ignored) among them.
fn ifvd_label_values(dims: [usize; 3]) -> Vec<i64> {
    values_for(dims.iter().product(), 9, 1.0)
        .into_iter()
        .map(|v| match ((v + 1.0) * 4.0) as i64 {
            0 => 255,
            1 => -1,
            k => (k - 2) % 3,
        })
        .collect()
}

fn int_labels<E: burn::tensor::Element>(values: Vec<E>, dims: [usize; 3], device: &Device) -> Tensor<3, Int> {
    Tensor::from_data(TensorData::new(values, dims), device)
}

/// The CPU reference's loss and gradient on the tensors' values.
fn ifvd_cpu(
    config: &IfvdConfig,
    student: &Tensor<4>,
    teacher: &Tensor<4>,
    labels: &[i64],
    dims: [usize; 3],
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let (s, t) = (data(student.clone().detach()), data(teacher.clone()));
    let s = ArrayView4::from_shape(student.dims(), &s).unwrap();
    let t = ArrayView4::from_shape(teacher.dims(), &t).unwrap();
    let y = ArrayView3::from_shape(dims, labels).unwrap();
    let out = IfvdCpu::new(*config).unwrap().forward_backward(s, t, y).unwrap();
    (vec![out.loss], vec![out.grad_student.iter().copied().collect()])
}

#[test]
fn ifvd_matches_burn_autograd_and_the_cpu_reference() {
    let device = Device::ndarray().autodiff();
    let label_dims = [2, 9, 13];
    let labels = ifvd_label_values(label_dims);
    for (dtype, config) in
        DTYPES.into_iter().zip([IfvdConfig::new(5), IfvdConfig { num_classes: 3, loss_weight: 20.0 }])
    {
        let student = features([2, 4, 5, 7], 1, &device, dtype).require_grad();
        let teacher = features([2, 3, 5, 7], 2, &device, dtype);
        let y = int_labels(labels.clone(), label_dims, &device);
        let ours = ifvd_loss(student.clone(), teacher.clone(), y.clone(), &config).unwrap();
        let ours = loss_and_grads(ours, std::slice::from_ref(&student), dtype);
        let oracle = reference::ifvd_loss(student.clone(), teacher.clone(), y, &config);
        let oracle = loss_and_grads(oracle, std::slice::from_ref(&student), dtype);
        compare("ifvd vs burn autograd", dtype, ours.clone(), oracle);
        compare("ifvd vs IfvdCpu", dtype, ours, ifvd_cpu(&config, &student, &teacher, &labels, label_dims));
    }
}

/// The labels' integer type does not change the result; without autodiff the loss alone runs.
#[test]
fn ifvd_label_types_and_untracked_forward() {
    let config = IfvdConfig::new(4);
    let dims = [1, 6, 5];
    // No negative label, so that every type holds them all (255 stays the ignored value).
    let labels: Vec<i64> = ifvd_label_values(dims).into_iter().map(|v| if v < 0 { 255 } else { v }).collect();
    for device in [Device::ndarray(), Device::ndarray().autodiff()] {
        let student = features([1, 3, 6, 5], 3, &device, DType::F64);
        let teacher = features([1, 2, 6, 5], 4, &device, DType::F64);
        let loss = |y: Tensor<3, Int>| data(ifvd_loss(student.clone(), teacher.clone(), y, &config).unwrap());
        let wide = int_labels(labels.clone(), dims, &device);
        for dtype in [DType::I32, DType::U8] {
            let narrow = wide.clone().cast(dtype);
            assert_eq!(narrow.dtype(), dtype, "the labels are cast");
            assert_eq!(loss(narrow), loss(wide.clone()), "{dtype:?} labels give the i64 labels' loss");
        }
        let oracle = data(reference::ifvd_loss(student.clone(), teacher.clone(), wide.clone(), &config));
        assert_close("ifvd forward", loss(wide), oracle, limit(DType::F64, OutputKind::Loss));
    }
}

#[test]
fn ifvd_bad_inputs_are_typed_errors() {
    let device = Device::ndarray().autodiff();
    let config = IfvdConfig::new(3);
    let s = features([2, 3, 4, 5], 1, &device, DType::F32);
    let t = features([2, 2, 4, 5], 2, &device, DType::F32);
    let y = |dims: [usize; 3]| int_labels(vec![0i64; dims.iter().product()], dims, &device);
    assert!(ifvd_loss(s.clone(), t.clone(), y([2, 7, 3]), &config).is_ok());

    let zero = IfvdConfig::new(0);
    let err = ifvd_loss(s.clone(), t.clone(), y([2, 4, 5]), &zero).unwrap_err();
    assert!(matches!(err, KdError::InvalidParameter { name: "num_classes", .. }), "{err}");
    assert!(matches!(ifvd_loss(s.clone(), t.clone(), y([3, 4, 5]), &config), Err(KdError::ShapeMismatch { .. })));
    let other = features([2, 2, 5, 4], 2, &device, DType::F32);
    assert!(matches!(ifvd_loss(s.clone(), other, y([2, 4, 5]), &config), Err(KdError::ShapeMismatch { .. })));
    let wide = t.clone().cast(DType::F64);
    assert!(matches!(ifvd_loss(s.clone(), wide, y([2, 4, 5]), &config), Err(KdError::DTypeMismatch { .. })));
    let tracked = t.clone().require_grad() * 2.0;
    let err = ifvd_loss(s.clone(), tracked, y([2, 4, 5]), &config).unwrap_err();
    assert!(matches!(err, KdError::Unsupported { .. }) && err.to_string().contains("detach"), "{err}");
    let unsigned = y([2, 4, 5]).cast(DType::U32);
    assert!(matches!(ifvd_loss(s, t, unsigned, &config), Err(KdError::DTypeMismatch { .. })));
}

/// `(student, teacher)` dims: other channels with odd sides (`ceil_mode` edge windows), and the same channels.
const RELATION_SHAPES: [([usize; 4], [usize; 4]); 2] = [([2, 5, 5, 7], [2, 3, 5, 7]), ([1, 4, 7, 3], [1, 4, 7, 3])];

type RelationLoss<'a> = &'a dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<1>;

/// A relation loss times 2.5 (the fused gradient must take the upstream factor) against burn's autograd of the
/// `P x P` reference and against the CPU reference `R`, on every shape and dtype.
fn check_relation<R: PairReference>(what: &str, config: R::Config, ours: RelationLoss<'_>, oracle: RelationLoss<'_>) {
    let device = Device::ndarray().autodiff();
    let cpu = R::new(config).unwrap();
    for (k, (s_dims, t_dims)) in RELATION_SHAPES.into_iter().enumerate() {
        for dtype in DTYPES {
            let what = format!("{what} {s_dims:?} vs {t_dims:?}");
            let student = features(s_dims, 20 + k as u64, &device, dtype).require_grad();
            let teacher = features(t_dims, 30 + k as u64, &device, dtype);
            let run = |loss: RelationLoss<'_>| {
                loss_and_grads(loss(student.clone(), teacher.clone()) * 2.5, from_ref(&student), dtype)
            };
            let got = run(ours);
            compare(&format!("{what} vs burn autograd"), dtype, got.clone(), run(oracle));
            let (s, t) = (data(student.clone().detach()), data(teacher.clone()));
            let (s, t) = (ArrayView4::from_shape(s_dims, &s).unwrap(), ArrayView4::from_shape(t_dims, &t).unwrap());
            let out = cpu.gradients(s, t, 1.0).unwrap();
            let want = (vec![out.loss * 2.5], vec![out.grad_student.iter().map(|g| g * 2.5).collect()]);
            compare(&format!("{what} vs the CPU reference"), dtype, got, want);
        }
    }
}

#[test]
fn skd_matches_burn_autograd_and_the_cpu_reference() {
    for config in [SkdConfig::default(), SkdConfig { loss_weight: 10.0, pool: SkdPool::None }] {
        let ours = |s, t| skd_loss(s, t, &config).unwrap();
        check_relation::<SkdCpu>(&format!("skd {config:?}"), config, &ours, &|s, t| reference::skd_loss(s, t, &config));
    }
}

#[test]
fn cirkd_matches_burn_autograd_and_the_cpu_reference() {
    let base = CirkdConfig::default();
    let pooled = CirkdConfig { tau: 0.5, loss_weight: 2.0, pool: CirkdPool::Avg(2) };
    for config in [base, pooled, CirkdConfig { pool: CirkdPool::Avg(3), ..base }] {
        let (ours, oracle) = (|s, t| cirkd_loss(s, t, &config).unwrap(), |s, t| reference::cirkd_loss(s, t, &config));
        check_relation::<CirkdCpu>(&format!("cirkd {config:?}"), config, &ours, &oracle);
    }
}

/// Without autodiff the loss alone runs, and agrees with the loss of the tracked call.
#[test]
fn skd_and_cirkd_untracked_forward_matches() {
    let (skd, cirkd) = (SkdConfig::default(), CirkdConfig { pool: CirkdPool::Avg(2), ..Default::default() });
    let device = Device::ndarray();
    let student = features([2, 3, 5, 4], 5, &device, DType::F64);
    let teacher = features([2, 6, 5, 4], 6, &device, DType::F64);
    let limit = limit(DType::F64, OutputKind::Loss);
    let ours = data(skd_loss(student.clone(), teacher.clone(), &skd).unwrap());
    assert_close("skd forward", ours, data(reference::skd_loss(student.clone(), teacher.clone(), &skd)), limit);
    let ours = data(cirkd_loss(student.clone(), teacher.clone(), &cirkd).unwrap());
    assert_close("cirkd forward", ours, data(reference::cirkd_loss(student, teacher, &cirkd)), limit);
}

#[test]
fn skd_and_cirkd_bad_inputs_are_typed_errors() {
    let device = Device::ndarray().autodiff();
    let f = |shape: [usize; 4], seed| features(shape, seed, &device, DType::F32);
    let (s, t) = (f([2, 3, 4, 5], 1), f([2, 2, 4, 5], 2));
    let skd = |s: &Tensor<4>, t: &Tensor<4>, config: &SkdConfig| skd_loss(s.clone(), t.clone(), config);
    let cirkd = |s: &Tensor<4>, t: &Tensor<4>, config: &CirkdConfig| cirkd_loss(s.clone(), t.clone(), config);
    let nan = SkdConfig { loss_weight: f64::NAN, ..Default::default() };
    assert!(matches!(skd(&s, &t, &nan), Err(KdError::InvalidParameter { name: "loss_weight", .. })));
    let cold = CirkdConfig { tau: 0.0, ..Default::default() };
    assert!(matches!(cirkd(&s, &t, &cold), Err(KdError::InvalidParameter { .. })));
    let no_window = CirkdConfig { pool: CirkdPool::Avg(0), ..Default::default() };
    assert!(matches!(cirkd(&s, &t, &no_window), Err(KdError::InvalidParameter { name: "pool", .. })));
    let (skd_default, cirkd_default) = (SkdConfig::default(), CirkdConfig::default());
    let run = |s: &Tensor<4>, t: &Tensor<4>| [skd(s, t, &skd_default), cirkd(s, t, &cirkd_default)];
    for result in run(&s, &f([2, 2, 5, 4], 3)) {
        let err = result.unwrap_err();
        assert!(matches!(err, KdError::ShapeMismatch { .. }) && err.to_string().contains("N, H and W"), "{err}");
    }
    for result in run(&s, &f([3, 2, 4, 5], 3)) {
        assert!(matches!(result, Err(KdError::ShapeMismatch { .. })), "another batch");
    }
    for result in run(&s, &t.clone().cast(DType::F64)) {
        assert!(matches!(result, Err(KdError::DTypeMismatch { .. })), "another dtype");
    }
    for result in run(&s, &(t.clone().require_grad() * 2.0)) {
        let err = result.unwrap_err();
        assert!(matches!(err, KdError::Unsupported { .. }) && err.to_string().contains("detach"), "{err}");
    }
    for result in run(&s, &t) {
        assert!(result.is_ok(), "other teacher channels are taken");
    }
}
