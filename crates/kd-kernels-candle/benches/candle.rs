//! The candle ops against the same losses written in candle's own tensor ops: the time of one training
//! step of the loss (forward, `backward()`, a device synchronisation), for CWD and pixel KD, and for SemCKD
//! (every gradient: student maps, regressor outputs, embeddings) on CIFAR resnet32x4 -> resnet8x4's layers.
//!
//! On the GPU (feature `cuda`, a GPU present) on `common::SHAPES`, the other benches' shapes, in f32
//! and bf16; on candle's CPU device on one small shape in f32 (the crate's CPU path is the f64 reference, a
//! correctness tool, not a fast path). Without a GPU the GPU cases are skipped with a message.
//!
//! ```text
//! cargo bench --bench candle -p kd-kernels-candle --features cuda
//! cargo bench --bench candle -p kd-kernels-candle -- cpu    # the CPU cases only
//! ```

/// The checks `candle_support` lists are the tests'; the bench takes its references alone.
macro_rules! candle_tests {
    ($($name:ident => $check:path,)*) => {};
}

#[path = "../tests/candle_support/mod.rs"]
mod candle_support;
// The loss benches' shared harness, in the core crate's benches.
#[path = "../../../benches/common/mod.rs"]
mod common;

use std::time::Duration;

use candle_core::{DType, Device, Tensor, Var};
use criterion::{BenchmarkId, Criterion};
use kd_kernels::cwd::CwdConfig;
use kd_kernels::pixel_kd::PixelKdConfig;
use kd_kernels::semckd::SemckdConfig;
use kd_kernels_candle::{Cwd, PixelKd, Semckd, SemckdTensors};

const CPU_SHAPE: [usize; 4] = [2, 19, 32, 64];

type LossFn<'a> = Box<dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor> + 'a>;
type SemckdFn<'a> = &'a dyn Fn(&SemckdTensors<'_>) -> candle_core::Result<Tensor>;

fn main() {
    let args = common::Args::from_env();
    let mut c = Criterion::default().configure_from_args();
    let cwd_cfg = CwdConfig::default();
    let kd_cfg = PixelKdConfig::default();
    let cwd = Cwd::new(cwd_cfg).expect("the default configuration is valid");
    let kd = PixelKd::new(kd_cfg).expect("the default configuration is valid");
    let losses: Vec<(&str, LossFn<'_>, LossFn<'_>)> = vec![
        (
            "cwd",
            Box::new(|s, t| cwd.loss(s, t)),
            Box::new(move |s, t| candle_support::cwd::cwd_reference(s, t, &cwd_cfg)),
        ),
        (
            "pixel_kd",
            Box::new(|s, t| kd.loss(s, t)),
            Box::new(move |s, t| candle_support::pixel_kd::pixel_kd_reference(s, t, &kd_cfg)),
        ),
    ];

    bench_device(&mut c, &args, "cpu", &Device::Cpu, &[CPU_SHAPE], &[DType::F32], &losses);
    let small = (&candle_support::semckd::STUDENT[..], &candle_support::semckd::TEACHER[..]);
    bench_semckd(&mut c, &args, "cpu", &Device::Cpu, small, &[DType::F32]);
    match gpu() {
        Ok(device) => {
            let shapes: &[[usize; 4]] = if args.bench { &common::SHAPES } else { &common::SHAPES[..1] };
            bench_device(&mut c, &args, "gpu", &device, shapes, &[DType::F32, DType::BF16], &losses);
            let cifar = (&SEMCKD_CIFAR[..], &SEMCKD_CIFAR[..]);
            bench_semckd(&mut c, &args, "gpu", &device, cifar, &[DType::F32, DType::BF16]);
        }
        Err(reason) => println!("candle bench: GPU cases skipped: {reason}"),
    }
    c.final_summary();
}

fn gpu() -> Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err("built without the `cuda` feature".into());
    }
    kd_kernels::cuda::probe().map_err(|e| e.to_string())?;
    Device::new_cuda(0).map_err(|e| format!("candle could not open CUDA device 0: {e}"))
}

fn bench_device(
    c: &mut Criterion,
    args: &common::Args,
    where_: &str,
    device: &Device,
    shapes: &[[usize; 4]],
    dtypes: &[DType],
    losses: &[(&str, LossFn<'_>, LossFn<'_>)],
) {
    for shape in shapes {
        for &dtype in dtypes {
            let student = candle_support::logits(shape, 1, device).to_dtype(dtype).and_then(|t| Var::from_tensor(&t));
            let teacher = candle_support::logits(shape, 2, device).to_dtype(dtype);
            let (student, teacher) = match (student, teacher) {
                (Ok(s), Ok(t)) => (s, t),
                (Err(e), _) | (_, Err(e)) => {
                    println!("candle bench {where_} {}: inputs failed: {e}", common::shape_name(shape));
                    continue;
                }
            };
            for (name, op, reference) in losses {
                let group_name = format!("candle/{name}/{where_}/{dtype:?}");
                for (impl_name, f) in [("kd_kernels_op", op), ("candle_ops", reference)] {
                    let id = format!("{group_name}/{impl_name}/{}", common::shape_name(shape));
                    if !args.wants(&id) {
                        continue;
                    }
                    // One step up front: a failure is reported instead of benchmarked.
                    if let Err(e) = step(f, &student, &teacher, device) {
                        println!("{id}: failed: {e}");
                        continue;
                    }
                    let mut group = c.benchmark_group(&group_name);
                    group.sample_size(10).warm_up_time(Duration::from_millis(500));
                    group.bench_function(BenchmarkId::new(impl_name, common::shape_name(shape)), |b| {
                        b.iter(|| step(f, &student, &teacher, device).expect("succeeded once"))
                    });
                    group.finish();
                }
            }
        }
    }
}

/// resnet32x4 -> resnet8x4 (`docs/losses.md` §4.1): both sides' layers, B = 64.
const SEMCKD_CIFAR: [[usize; 4]; 3] = [[64, 64, 32, 32], [64, 128, 16, 16], [64, 256, 8, 8]];

/// SemCKD's training step (forward, `backward()` to every input, a device synchronisation), the op against
/// the same loss in candle ops.
fn bench_semckd(
    c: &mut Criterion,
    args: &common::Args,
    where_: &str,
    device: &Device,
    (student, teacher): (&[[usize; 4]], &[[usize; 4]]),
    dtypes: &[DType],
) {
    let cfg = SemckdConfig::default();
    let op = match Semckd::new(cfg) {
        Ok(op) => op,
        Err(e) => return println!("candle bench semckd: {e}"),
    };
    let layers = format!("{}x{}_b{}", student.len(), teacher.len(), student[0][0]);
    for &dtype in dtypes {
        let case = match candle_support::semckd::Case::new(student, teacher, dtype, device) {
            Ok(case) => case,
            Err(e) => {
                println!("candle bench semckd {where_} {dtype:?}: inputs failed: {e}");
                continue;
            }
        };
        let tensors = case.tensors();
        let group_name = format!("candle/semckd/{where_}/{dtype:?}");
        let reference = |t: &SemckdTensors<'_>| candle_support::semckd::semckd_reference(t, &cfg);
        let impls: [(&str, SemckdFn<'_>); 2] = [("kd_kernels_op", &|t| op.loss(t)), ("candle_ops", &reference)];
        for (impl_name, f) in impls {
            let id = format!("{group_name}/{impl_name}/{layers}");
            if !args.wants(&id) {
                continue;
            }
            let run = || -> candle_core::Result<()> {
                f(&tensors.view())?.backward()?;
                device.synchronize()
            };
            if let Err(e) = run() {
                println!("{id}: failed: {e}");
                continue;
            }
            let mut group = c.benchmark_group(&group_name);
            group.sample_size(10).warm_up_time(Duration::from_millis(500));
            group.bench_function(BenchmarkId::new(impl_name, &layers), |b| b.iter(|| run().expect("succeeded once")));
            group.finish();
        }
    }
}

/// One training step of the loss: forward, backward to the student, wait for the device.
fn step(f: &LossFn<'_>, student: &Var, teacher: &Tensor, device: &Device) -> candle_core::Result<Tensor> {
    let loss = f(student.as_tensor(), teacher)?;
    let grads = loss.backward()?;
    let grad = grads.get(student.as_tensor()).cloned().ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
    device.synchronize()?;
    Ok(grad)
}
