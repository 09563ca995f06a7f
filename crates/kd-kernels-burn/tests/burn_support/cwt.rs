//! CWT's outputs, compared alike on NdArray (`tests/burn_losses/cwt.rs`) and on a GPU
//! (`tests/burn_cuda/cwt.rs`), which include this file.

use crate::burn_support::values;
use burn::tensor::Tensor;
use kd_kernels_burn::CwtMlp;

/// CWT's outputs to compare, in the order of `CWT_OUTPUTS`: the loss, then the gradients of the student and
/// of the MLP's four parameters.
pub fn cwt_outputs(loss: Tensor<1>, student: &Tensor<4>, mlp: &CwtMlp) -> Vec<Vec<f64>> {
    let grads = loss.backward();
    vec![
        values(loss),
        values(student.grad(&grads).unwrap()),
        values(mlp.w1.grad(&grads).unwrap()),
        values(mlp.b1.grad(&grads).unwrap()),
        values(mlp.w2.grad(&grads).unwrap()),
        values(mlp.b2.grad(&grads).unwrap()),
    ]
}

/// The names of [`cwt_outputs`]' entries.
pub const CWT_OUTPUTS: [&str; 6] = ["loss", "student", "w1", "b1", "w2", "b2"];
