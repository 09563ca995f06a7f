//! Inputs shared by the burn test binaries (`tests/burn_losses/` on NdArray, `tests/burn_cuda/` on a
//! GPU), so every backend is checked on the same deterministic logits.
#![allow(dead_code)] // each binary uses the part it needs

use burn::tensor::{DType, Device, Tensor, TensorData};

/// Deterministic logits spread over about ±`spread`, from a fixed LCG (no RNG crate, reproducible).
pub fn logits(shape: [usize; 4], seed: u64, spread: f64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..shape.iter().product::<usize>())
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * spread
        })
        .collect()
}

/// `values` as a rank-4 tensor of `shape` on `device` in `dtype`.
pub fn tensor(values: Vec<f64>, shape: [usize; 4], device: &Device, dtype: DType) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, shape), (device, dtype))
}

/// A tensor's values as f64.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().convert::<f64>().try_to_vec::<f64>().expect("f64 data")
}
