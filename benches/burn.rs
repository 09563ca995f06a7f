//! burn: the time of one training step of the loss (the forward and the backward into the student
//! logits) through `kd_kernels::burn` against the same loss written in burn's tensor operations
//! (`kd_kernels::burn::reference`, differentiated by burn's autograd), on burn's NdArray CPU backend.
//!
//! ```text
//! cargo bench --features burn --bench burn
//! cargo bench --features burn --bench burn -- cwd --quick
//! ```
//!
//! CPU shapes only: the `burn` feature covers NdArray and Autodiff; burn's CUDA backend is not wired to
//! the kernels yet (see the README's burn section), so there is no GPU case to time.
// burn 0.22 deprecates NdArray in favour of Flex; NdArray is the CPU backend the `burn` feature covers.
#![allow(deprecated)]

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kd_kernels::burn::{cwd_loss, pixel_kd_loss, reference};
use kd_kernels::cwd::CwdConfig;
use kd_kernels::pixel_kd::PixelKdConfig;

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

criterion_group!(benches, bench);
criterion_main!(benches);
