//! The feature losses whose student and teacher differ in shape (a list of levels, integer labels, other teacher
//! channels), as burn ops on burn's NdArray backend in f32 and f64: loss and gradients against burn's own autograd
//! of the same losses (`kd_kernels_burn::reference`) and against the crate's f64 CPU references; bad inputs are
//! typed errors. A module per family (`relation`: the two pixel-relation losses, which share their checks).
// burn 0.22 deprecates its NdArray backend in favour of Flex; NdArray is the CPU backend this crate covers.
#![allow(deprecated)]

mod ifvd;
mod pkd;
mod relation;

use std::slice::from_ref;

use burn::tensor::{DType, Device, Tensor, TensorData};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::KdError;
use kd_kernels_burn::reference;
use ndarray::ArrayView4;

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
