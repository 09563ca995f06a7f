//! SKD and CIRKD (student `[N, Cs, H, W]`, teacher `[N, Ct, H, W]`) against the crate's f64 CPU references
//! ([`SkdCpu`], [`CirkdCpu`]) on the inputs' values: the loss, and the student's gradient that candle's backward
//! pass writes, times an upstream factor; every pooling, `Cs != Ct` and `Cs = Ct`, odd sizes. The same bodies run
//! on candle's CPU device (`tests/candle_ops.rs`) and on a GPU (`tests/candle_cuda.rs`).

use candle_core::{DType, Device, Tensor, Var};
use kd_kernels::cirkd::{CirkdConfig, CirkdCpu, CirkdPool};
use kd_kernels::cpu::PairReference;
use kd_kernels::skd::{SkdConfig, SkdCpu, SkdPool};
use kd_kernels::tolerance::OutputKind;
use kd_kernels_candle::{Cirkd, Skd};

use super::pkd_ifvd::{expect_in, expected, features, host, message, view4, UPSTREAM};
use super::{compare, dtypes, OrMsg, TestResult};

/// `(student, teacher)` dims: other channels with odd sides (ceil-mode edge windows), and the same channels.
const SHAPES: [([usize; 4], [usize; 4]); 2] = [([2, 5, 5, 7], [2, 3, 5, 7]), ([1, 4, 7, 3], [1, 4, 7, 3])];

type Op<'a> = dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + 'a;

/// One op against the CPU reference `R` for its configuration, on every shape and dtype.
fn check_relation<R: PairReference>(device: &Device, tag: &str, config: R::Config, op: &Op<'_>) -> TestResult {
    let cpu = R::new(config).or_msg("cpu")?;
    for (k, (s_dims, t_dims)) in SHAPES.iter().enumerate() {
        for dtype in dtypes(device) {
            let tag = format!("{tag} {s_dims:?} vs {t_dims:?} {dtype:?}");
            let student = Var::from_tensor(&features(s_dims, 30 + k as u64, dtype, device)?).or_msg("var")?;
            let teacher = features(t_dims, 40 + k as u64, dtype, device)?;
            let loss = op(student.as_tensor(), &teacher).or_msg(&tag)?;
            let grads = loss.affine(UPSTREAM, 0.0).and_then(|l| l.backward()).or_msg("backward")?;
            let (s_host, t_host) = (host(student.as_tensor())?, host(&teacher)?);
            let want = cpu.gradients(view4(&s_host), view4(&t_host), 1.0).or_msg("cpu")?;
            let want_loss = Tensor::new(want.loss as f32, device).or_msg("loss")?;
            compare(&format!("{tag} loss"), &loss, &want_loss, dtype, OutputKind::Loss)?;
            let got = grads.get(student.as_tensor()).ok_or(format!("{tag}: no gradient for the student"))?;
            let want_grad = expected(&want.grad_student, dtype, device)?;
            compare(&format!("{tag} d/d student"), got, &want_grad, dtype, OutputKind::Tensor)?;
        }
    }
    Ok(())
}

pub fn check_skd(device: &Device) -> TestResult {
    for config in [SkdConfig::default(), SkdConfig { loss_weight: 10.0, pool: SkdPool::None }] {
        let skd = Skd::new(config).or_msg("Skd::new")?;
        check_relation::<SkdCpu>(device, &format!("skd {config:?}"), config, &|s, t| skd.loss(s, t))?;
    }
    Ok(())
}

/// The default's `auto` pool is none at these sizes.
pub fn check_cirkd(device: &Device) -> TestResult {
    let base = CirkdConfig::default();
    let pooled = CirkdConfig { tau: 0.5, loss_weight: 2.0, pool: CirkdPool::Avg(2) };
    for config in [base, pooled, CirkdConfig { pool: CirkdPool::Avg(3), ..base }] {
        let cirkd = Cirkd::new(config).or_msg("Cirkd::new")?;
        check_relation::<CirkdCpu>(device, &format!("cirkd {config:?}"), config, &|s, t| cirkd.loss(s, t))?;
    }
    Ok(())
}

pub fn check_skd_cirkd_errors(device: &Device) -> TestResult {
    let f = |shape: &[usize], seed| features(shape, seed, DType::F32, device);
    let (s, t) = (f(&[2, 3, 4, 5], 1)?, f(&[2, 2, 4, 5], 2)?);
    let m = message(Skd::new(SkdConfig { loss_weight: f64::NAN, ..Default::default() }), "skd NaN weight")?;
    expect_in(&m, "loss_weight", "skd NaN weight")?;
    let m = message(Cirkd::new(CirkdConfig { tau: 0.0, ..Default::default() }), "cirkd tau 0")?;
    expect_in(&m, "tau", "cirkd tau 0")?;
    let m = message(Cirkd::new(CirkdConfig { pool: CirkdPool::Avg(0), ..Default::default() }), "cirkd pool 0")?;
    expect_in(&m, "pool", "cirkd pool 0")?;
    let skd = Skd::new(SkdConfig::default()).or_msg("new")?;
    let cirkd = Cirkd::new(CirkdConfig::default()).or_msg("new")?;
    let ops: [(&str, &Op<'_>); 2] = [("skd", &|s, t| skd.loss(s, t)), ("cirkd", &|s, t| cirkd.loss(s, t))];
    for (name, op) in ops {
        let m = message(op(&s, &f(&[2, 2, 5, 4], 2)?), &format!("{name} teacher of another H x W"))?;
        expect_in(&m, "N, H and W", &format!("{name} teacher of another H x W"))?;
        message(op(&s, &f(&[3, 2, 4, 5], 2)?), &format!("{name} teacher of another batch"))?;
        message(op(&s.flatten_from(2).or_msg("rank 3")?, &t), &format!("{name} student of rank 3"))?;
        let m = message(op(&s, &t.to_dtype(DType::F16).or_msg("f16")?), &format!("{name} teacher of another dtype"))?;
        expect_in(&m, "teacher", &format!("{name} teacher of another dtype"))?;
        message(op(&s.to_dtype(DType::U32).or_msg("u32")?, &t), &format!("{name} integer student"))?;
    }
    Ok(())
}
