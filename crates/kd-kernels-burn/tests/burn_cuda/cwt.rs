//! CWT: the gradients into the student and every MLP parameter, in f32 (its parameters' dtype).

#[path = "../burn_support/cwt.rs"]
mod cwt_support;

use super::burn_support::{logits, tensor};
use super::compare::{check_close, limit, TestResult};
use burn::tensor::{DType, Device, Tensor, TensorData};
use cwt_support::{cwt_outputs, CWT_OUTPUTS};
use kd_kernels::cwt::{CwtConfig, CwtNormalize};
use kd_kernels::tolerance::OutputKind;
use kd_kernels_burn::{cwt_loss, reference, CwtMlp};

fn param<const D: usize>(values: Vec<f64>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), (device, DType::F32)).require_grad()
}

pub fn check_cwt(device: &Device) -> TestResult {
    for (n, cs, ch, ct, h, w, normalize) in
        [(2, 5, 4, 3, 3, 4, CwtNormalize::Batch), (2, 16, 32, 19, 9, 17, CwtNormalize::Mean)]
    {
        let config = CwtConfig { loss_weight: 0.3, normalize };
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>, &CwtMlp) -> Tensor<1>| {
            let student = tensor(logits([n, cs, h, w], 11, 2.0), [n, cs, h, w], device, DType::F32).require_grad();
            let teacher = tensor(logits([n, ct, h, w], 12, 2.0), [n, ct, h, w], device, DType::F32);
            let small = |len: usize, seed| logits([1, 1, 1, len], seed, 0.5);
            let mlp = CwtMlp {
                w1: param(small(ch * cs, 13), [ch, cs], device),
                b1: param(small(ch, 14), [ch], device),
                w2: param(small(ct * ch, 15), [ct, ch], device),
                b2: param(small(ct, 16), [ct], device),
            };
            cwt_outputs(f(student.clone(), teacher, &mlp), &student, &mlp)
        };
        let ours = run(&|s, t, mlp| cwt_loss(s, t, mlp, &config).expect("valid input"));
        let theirs = run(&|s, t, mlp| reference::cwt_loss(s, t, mlp, &config));
        for ((name, got), want) in CWT_OUTPUTS.into_iter().zip(ours).zip(theirs) {
            let kind = if name == "loss" { OutputKind::Loss } else { OutputKind::Tensor };
            check_close(&format!("cwt {name} n{n} cs{cs} ch{ch} ct{ct}"), got, want, limit(DType::F32, kind))?;
        }
    }
    Ok(())
}
