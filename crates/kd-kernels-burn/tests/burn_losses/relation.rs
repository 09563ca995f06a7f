//! SKD and CIRKD: other teacher channels, against burn's autograd of the `P x P` references and the CPU
//! references.

use super::*;
use kd_kernels::cirkd::{CirkdConfig, CirkdCpu, CirkdPool};
use kd_kernels::cpu::PairReference;
use kd_kernels::skd::{SkdConfig, SkdCpu, SkdPool};
use kd_kernels_burn::{cirkd_loss, skd_loss};

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
            let (s, t) = (values(student.clone().detach()), values(teacher.clone()));
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
    let ours = values(skd_loss(student.clone(), teacher.clone(), &skd).unwrap());
    assert_close("skd forward", ours, values(reference::skd_loss(student.clone(), teacher.clone(), &skd)), limit);
    let ours = values(cirkd_loss(student.clone(), teacher.clone(), &cirkd).unwrap());
    assert_close("cirkd forward", ours, values(reference::cirkd_loss(student, teacher, &cirkd)), limit);
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
