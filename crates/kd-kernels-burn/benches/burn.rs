//! burn: the time of one training step of the loss (the forward and the backward into the student
//! logits) through `kd_kernels_burn` against the same loss written in burn's tensor operations
//! (`kd_kernels_burn::reference`, differentiated by burn's autograd), on burn's NdArray CPU backend.
//!
//! ```text
//! cargo bench -p kd-kernels-burn --bench burn
//! cargo bench -p kd-kernels-burn --bench burn -- cwd --quick
//! ```
//!
//! With feature `cuda` and a GPU, the same step on burn's CUDA backend (fusion and autodiff, f32 and
//! bf16) at the GPU bench shape; without them that case prints why it is skipped.
//!
//! ```text
//! cargo bench -p kd-kernels-burn --features cuda --bench burn -- cuda
//! ```
// burn 0.22 deprecates NdArray in favour of Flex; NdArray is the CPU backend this crate covers.
#![allow(deprecated)]

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kd_kernels::cwd::CwdConfig;
use kd_kernels::pixel_kd::PixelKdConfig;
use kd_kernels::semckd::{default_embed_dim, SemckdConfig};
use kd_kernels_burn::{cwd_loss, pixel_kd_loss, reference, semckd_loss, SemckdMlp};

/// Segmentation logits at 1/8 of a small crop (19 Cityscapes classes), and a batch of 8 at 1/16.
const SHAPES: [[usize; 4]; 2] = [[2, 19, 32, 64], [8, 19, 16, 32]];

type Loss = fn(Tensor<4>, Tensor<4>) -> Tensor<1>;

fn step(student: &Tensor<4>, teacher: &Tensor<4>, loss: Loss) -> f32 {
    let student = student.clone().require_grad();
    let grads = loss(student.clone(), teacher.clone()).backward();
    // Reading one value forces the backward to finish on lazy backends.
    student.grad(&grads).expect("a gradient").sum().into_scalar::<f32>()
}

fn bench(c: &mut Criterion) {
    let device = Device::ndarray().autodiff();
    device.seed(3);
    let cases: [(&str, Loss, Loss); 2] = [
        (
            "cwd",
            |s, t| cwd_loss(s, t, &CwdConfig::default()).expect("valid input"),
            |s, t| reference::cwd_loss(s, t, &CwdConfig::default()),
        ),
        (
            "pixel_kd",
            |s, t| pixel_kd_loss(s, t, &PixelKdConfig::default()).expect("valid input"),
            |s, t| reference::pixel_kd_loss(s, t, &PixelKdConfig::default()),
        ),
    ];
    for (name, ours, theirs) in cases {
        cuda::bench(c, name, ours, theirs);
        let mut group = c.benchmark_group(format!("burn_{name}_ndarray_f32"));
        for shape in SHAPES {
            let student = Tensor::<4>::random(shape, Distribution::Normal(0.0, 3.0), &device);
            let teacher = Tensor::<4>::random(shape, Distribution::Normal(0.0, 3.0), &device);
            let id = format!("{}x{}x{}x{}", shape[0], shape[1], shape[2], shape[3]);
            group.bench_with_input(BenchmarkId::new("kd_kernels", &id), &(), |b, _| {
                b.iter(|| step(&student, &teacher, ours))
            });
            group.bench_with_input(BenchmarkId::new("burn_ops", &id), &(), |b, _| {
                b.iter(|| step(&student, &teacher, theirs))
            });
        }
        group.finish();
    }
}

/// SemCKD's inputs: two student and two teacher stages of a batch of 16 (`d = 4`), the regressor outputs and
/// the embeddings (untracked; each step tracks all but the teacher).
struct SemckdInputs {
    student: Vec<Tensor<4>>,
    teacher: Vec<Tensor<4>>,
    proj: Vec<Vec<Tensor<4>>>,
    query: Vec<SemckdMlp>,
    key: Vec<SemckdMlp>,
}

const SEMCKD_BATCH: usize = 16;
const SEMCKD_STUDENT: [[usize; 3]; 2] = [[16, 16, 16], [32, 8, 8]];
const SEMCKD_TEACHER: [[usize; 3]; 2] = [[32, 16, 16], [64, 8, 8]];

fn semckd_inputs(device: &Device) -> SemckdInputs {
    let b = SEMCKD_BATCH;
    let d = default_embed_dim(b);
    let random = |shape: Vec<usize>| {
        Tensor::<4>::random([shape[0], shape[1], shape[2], shape[3]], Distribution::Normal(0.0, 1.0), device)
    };
    let maps = |layers: &[[usize; 3]]| layers.iter().map(|[c, h, w]| random(vec![b, *c, *h, *w])).collect::<Vec<_>>();
    let mlp = || SemckdMlp {
        linear1_weight: Tensor::random([2 * d, b], Distribution::Normal(0.0, 0.1), device),
        linear1_bias: Tensor::random([2 * d], Distribution::Normal(0.0, 0.1), device),
        linear2_weight: Tensor::random([d, 2 * d], Distribution::Normal(0.0, 0.1), device),
        linear2_bias: Tensor::random([d], Distribution::Normal(0.0, 0.1), device),
    };
    let proj = SEMCKD_STUDENT
        .iter()
        .map(|s| SEMCKD_TEACHER.iter().map(|t| random(vec![b, t[0], s[1].min(t[1]), s[1].min(t[1])])).collect())
        .collect();
    SemckdInputs {
        student: maps(&SEMCKD_STUDENT),
        teacher: maps(&SEMCKD_TEACHER),
        proj,
        query: (0..2).map(|_| mlp()).collect(),
        key: (0..2).map(|_| mlp()).collect(),
    }
}

type SemckdLoss =
    fn(&[Tensor<4>], &[Tensor<4>], &[Vec<Tensor<4>>], &[SemckdMlp], &[SemckdMlp], &SemckdConfig) -> Tensor<1>;

/// One training step of SemCKD's loss: the forward and the backward into the student maps, the regressor
/// outputs and the embeddings.
fn semckd_step(inputs: &SemckdInputs, loss: SemckdLoss) -> f32 {
    let track = |maps: &[Tensor<4>]| maps.iter().map(|m| m.clone().require_grad()).collect::<Vec<_>>();
    let student = track(&inputs.student);
    let proj: Vec<Vec<Tensor<4>>> = inputs.proj.iter().map(|row| track(row)).collect();
    let query: Vec<SemckdMlp> = inputs.query.iter().cloned().map(SemckdMlp::require_grad).collect();
    let key: Vec<SemckdMlp> = inputs.key.iter().cloned().map(SemckdMlp::require_grad).collect();
    let grads = loss(&student, &inputs.teacher, &proj, &query, &key, &SemckdConfig::default()).backward();
    // Reading one value forces the backward to finish on lazy backends.
    student[0].grad(&grads).expect("a gradient").sum().into_scalar::<f32>()
}

fn bench_semckd(c: &mut Criterion) {
    let device = Device::ndarray().autodiff();
    device.seed(5);
    let inputs = semckd_inputs(&device);
    let mut group = c.benchmark_group("burn_semckd_ndarray_f32");
    let id = format!("b{SEMCKD_BATCH}_2x2_layers");
    group.bench_with_input(BenchmarkId::new("kd_kernels", &id), &(), |b, _| {
        b.iter(|| semckd_step(&inputs, |s, t, p, q, k, c| semckd_loss(s, t, p, q, k, c).expect("valid input")))
    });
    group.bench_with_input(BenchmarkId::new("burn_ops", &id), &(), |b, _| {
        b.iter(|| semckd_step(&inputs, reference::semckd_loss))
    });
    group.finish();
}

/// The GPU case: one training step at the GPU bench shape of the families' own benches.
mod cuda {
    use super::Loss;
    use criterion::Criterion;

    /// Why the GPU case cannot run here, if it cannot.
    fn unavailable() -> Option<String> {
        if !cfg!(feature = "cuda") {
            return Some("built without the `cuda` feature".into());
        }
        if !kd_kernels::cuda::KERNELS_COMPILED {
            return Some("the crate was built without nvcc, so it has no kernels".into());
        }
        kd_kernels::cuda::probe().err().map(|e| e.to_string())
    }

    #[cfg(feature = "cuda")]
    pub fn bench(c: &mut Criterion, name: &str, ours: Loss, theirs: Loss) {
        use super::step;
        use burn::tensor::{DType, Device, Distribution, Tensor};
        use criterion::BenchmarkId;
        if let Some(reason) = unavailable() {
            println!("burn_{name}_cuda: skipped: {reason}");
            return;
        }
        let device = Device::cuda(0).autodiff();
        let shape = [8, 19, 64, 128];
        for dtype in [DType::F32, DType::BF16] {
            let mut group = c.benchmark_group(format!("burn_{name}_cuda_{dtype:?}"));
            let random = || Tensor::<4>::random(shape, Distribution::Normal(0.0, 3.0), &device).cast(dtype);
            let (student, teacher) = (random(), random());
            let id = format!("{}x{}x{}x{}", shape[0], shape[1], shape[2], shape[3]);
            group.bench_with_input(BenchmarkId::new("kd_kernels", &id), &(), |b, _| {
                b.iter(|| step(&student, &teacher, ours))
            });
            group.bench_with_input(BenchmarkId::new("burn_ops", &id), &(), |b, _| {
                b.iter(|| step(&student, &teacher, theirs))
            });
            group.finish();
        }
    }

    #[cfg(not(feature = "cuda"))]
    pub fn bench(_: &mut Criterion, name: &str, _: Loss, _: Loss) {
        if let Some(reason) = unavailable() {
            println!("burn_{name}_cuda: skipped: {reason}");
        }
    }
}

criterion_group!(benches, bench, bench_semckd);
criterion_main!(benches);
