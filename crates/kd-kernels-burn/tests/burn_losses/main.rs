//! The burn ops against burn's own autograd of the same losses written in burn tensor ops
//! (`kd_kernels_burn::reference`), on burn's NdArray backend, in every float type it stores (f32, f64; a
//! family whose parameters are f32 in f32 or beside f32 or f64 features, as its module says), and, for the
//! losses whose student and teacher differ in shape (a list of levels, integer labels, other teacher
//! channels), against the crate's f64 CPU references too; bad inputs are typed errors. A
//! module per family (`pair`: the (student, teacher) losses of one shape; `relation`: the two pixel-relation
//! losses, which share their checks).
// burn 0.22 deprecates its NdArray backend in favour of Flex; NdArray is the CPU backend this feature covers.
#![allow(deprecated)]

#[path = "../burn_support/mod.rs"]
mod burn_support;
mod cwt;
mod ifvd;
mod pair;
mod pkd;
mod relation;
mod semckd;

use std::slice::from_ref;

use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_support::{logits, tensor, values};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::KdError;
use kd_kernels_burn::reference;
use ndarray::ArrayView4;

/// Both sides compute in f64 for f64 tensors; they differ only in the order of their sums.
const F64_TOLERANCE: f64 = 1e-12;

fn tolerance_for(dtype: DType, kind: OutputKind) -> f64 {
    match dtype {
        DType::F64 => F64_TOLERANCE,
        _ => tolerance(kd_kernels::DType::F32, kind),
    }
}

fn assert_close(what: &str, got: Vec<f64>, want: Vec<f64>, limit: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let cmp = Comparison::of(got, want);
    assert!(cmp.max_rel_err <= limit, "{what}: max_rel_err {} > {limit} ({cmp:?})", cmp.max_rel_err);
}

fn ndarray_autodiff() -> Device {
    Device::ndarray().autodiff()
}

const DTYPES: [DType; 2] = [DType::F32, DType::F64];

/// Loss and d loss / d student (and d / d teacher when asked) of `ours` and `theirs` on the same inputs.
/// `case`: the name, the shape, the logits' spread, whether the teacher gets a gradient too.
fn compare_pair(
    (name, shape, spread, teacher_grad): (&str, [usize; 4], f64, bool),
    ours: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<1>,
    theirs: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<1>,
) {
    let device = ndarray_autodiff();
    for dtype in DTYPES {
        let (s, t) = (logits(shape, 1, spread), logits(shape, 2, spread));
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<1>| {
            let student = tensor(s.clone(), shape, &device, dtype).require_grad();
            let mut teacher = tensor(t.clone(), shape, &device, dtype);
            if teacher_grad {
                teacher = teacher.require_grad();
            }
            let loss = f(student.clone(), teacher.clone());
            assert_eq!(loss.dtype(), dtype, "{name}: the loss keeps the input dtype");
            let grads = loss.backward();
            let gs = student.grad(&grads).expect("the student has a gradient");
            assert_eq!(gs.dtype(), dtype, "{name}: the gradient keeps the input dtype");
            let gt = teacher_grad.then(|| values(teacher.grad(&grads).expect("the teacher has a gradient")));
            (values(loss), values(gs), gt)
        };
        let (loss, gs, gt) = run(&ours);
        let (ref_loss, ref_gs, ref_gt) = run(&theirs);
        let tag = format!("{name} {dtype:?} {shape:?}");
        assert_close(&format!("{tag} loss"), loss, ref_loss, tolerance_for(dtype, OutputKind::Loss));
        assert_close(&format!("{tag} d/d student"), gs, ref_gs, tolerance_for(dtype, OutputKind::Tensor));
        if let (Some(gt), Some(ref_gt)) = (gt, ref_gt) {
            assert_close(&format!("{tag} d/d teacher"), gt, ref_gt, tolerance_for(dtype, OutputKind::Tensor));
        }
    }
}

const SHAPES: [[usize; 4]; 3] = [[2, 3, 4, 5], [1, 19, 7, 9], [3, 1, 1, 6]];

fn matrix(rows: usize, cols: usize, seed: u64, device: &Device) -> Tensor<2> {
    let v = logits([1, 1, rows, cols], seed, 0.5);
    Tensor::from_data(TensorData::new(v, [rows, cols]), (device, DType::F32))
}

fn vector(len: usize, seed: u64, device: &Device) -> Tensor<1> {
    let v = logits([1, 1, 1, len], seed, 0.5);
    Tensor::from_data(TensorData::new(v, [len]), (device, DType::F32))
}

/// Features spread over about ±3, for the losses held to the CPU references too.
fn features(shape: [usize; 4], seed: u64, device: &Device, dtype: DType) -> Tensor<4> {
    tensor(logits(shape, seed, 3.0), shape, device, dtype)
}

/// The losses held to the CPU references too: the burn op and the oracles differ in summation order only: f64
/// agrees to this, f32 to the crate's f32 tolerance.
fn limit(dtype: DType, kind: OutputKind) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        _ => tolerance(kd_kernels::DType::F32, kind),
    }
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
            values(g)
        })
        .collect();
    (values(loss), per_input)
}

/// The ours / oracle comparison of one loss and its student gradients.
fn compare(what: &str, dtype: DType, ours: (Vec<f64>, Vec<Vec<f64>>), oracle: (Vec<f64>, Vec<Vec<f64>>)) {
    assert_close(&format!("{what} {dtype:?} loss"), ours.0, oracle.0, limit(dtype, OutputKind::Loss));
    for (l, (g, want)) in ours.1.into_iter().zip(oracle.1).enumerate() {
        assert_close(&format!("{what} {dtype:?} d/d student[{l}]"), g, want, limit(dtype, OutputKind::Tensor));
    }
}
