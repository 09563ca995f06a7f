//! SemCKD: the gradients into every student map, regressor output and MLP parameter.

use super::burn_support::{logits, tensor, values};
use super::compare::{check_close, limit, TestResult, DTYPES};
use burn::tensor::{DType, Device, Tensor, TensorData};
use kd_kernels::semckd::SemckdConfig;
use kd_kernels::tolerance::OutputKind;
use kd_kernels_burn::{reference, semckd_loss, SemckdMlp};

/// One embedding MLP (`[2d, B]`, `[2d]`, `[d, 2d]`, `[d]`), f32, tracked.
fn semckd_mlp(batch: usize, d: usize, seed: u64, device: &Device) -> SemckdMlp {
    let weight = |rows: usize, cols: usize, seed| {
        Tensor::<2>::from_data(
            TensorData::new(logits([1, 1, rows, cols], seed, 0.5), [rows, cols]),
            (device, DType::F32),
        )
    };
    let bias = |len: usize, seed| {
        Tensor::<1>::from_data(TensorData::new(logits([1, 1, 1, len], seed, 0.5), [len]), (device, DType::F32))
    };
    SemckdMlp {
        linear1_weight: weight(2 * d, batch, seed),
        linear1_bias: bias(2 * d, seed + 1),
        linear2_weight: weight(d, 2 * d, seed + 2),
        linear2_bias: bias(d, seed + 3),
    }
    .require_grad()
}

type SemckdFn<'a> = &'a dyn Fn(&[Tensor<4>], &[Tensor<4>], &[Vec<Tensor<4>>], &[SemckdMlp], &[SemckdMlp]) -> Tensor<1>;

/// SemCKD through the packed primitives on CUDA (fusion and cubecl): the loss and the gradients of
/// every student map, regressor output and MLP parameter, against burn's autograd of the reference
/// (in f32 on the f16/bf16 inputs cast up), two student and two teacher layers, one of them pooled.
pub fn check_semckd(device: &Device) -> TestResult {
    let (batch, d) = (8, 2);
    let students = [[6, 8, 8], [12, 4, 4]];
    let teachers = [[8, 8, 8], [16, 4, 4]];
    let config = SemckdConfig::default();
    for dtype in DTYPES {
        let run = |f: SemckdFn<'_>, upcast: bool| -> Result<Vec<Vec<f64>>, String> {
            let map = |[c, h, w]: [usize; 3], seed: u64| {
                tensor(logits([batch, c, h, w], seed, 1.0), [batch, c, h, w], device, dtype)
            };
            let student: Vec<Tensor<4>> =
                students.iter().zip(20..).map(|(s, seed)| map(*s, seed).require_grad()).collect();
            let teacher: Vec<Tensor<4>> = teachers.iter().zip(40..).map(|(t, seed)| map(*t, seed)).collect();
            let proj: Vec<Vec<Tensor<4>>> = students
                .iter()
                .zip(0u64..)
                .map(|(s, i)| {
                    let row = teachers.iter().zip(0u64..);
                    row.map(|(t, j)| map([t[0], s[1].min(t[1]), s[1].min(t[1])], 60 + 10 * i + j).require_grad())
                        .collect()
                })
                .collect();
            let query: Vec<SemckdMlp> = (0..2).map(|i| semckd_mlp(batch, d, 80 + 4 * i, device)).collect();
            let key: Vec<SemckdMlp> = (0..2).map(|j| semckd_mlp(batch, d, 100 + 4 * j, device)).collect();
            let cast = |maps: &[Tensor<4>]| -> Vec<Tensor<4>> {
                maps.iter().map(|m| if upcast { m.clone().cast(DType::F32) } else { m.clone() }).collect()
            };
            let proj_in: Vec<Vec<Tensor<4>>> = proj.iter().map(|row| cast(row)).collect();
            let loss = f(&cast(&student), &cast(&teacher), &proj_in, &query, &key);
            if !upcast && loss.dtype() != dtype {
                return Err(format!("semckd: loss is {:?}, the maps {dtype:?}", loss.dtype()));
            }
            let grads = loss.backward();
            let mut out = vec![values(loss)];
            for map in student.iter().chain(proj.iter().flatten()) {
                out.push(values(map.grad(&grads).ok_or("a map has no gradient")?));
            }
            for mlp in query.iter().chain(&key) {
                out.push(values(mlp.linear1_weight.grad(&grads).ok_or("linear1.weight has no gradient")?));
                out.push(values(mlp.linear1_bias.grad(&grads).ok_or("linear1.bias has no gradient")?));
                out.push(values(mlp.linear2_weight.grad(&grads).ok_or("linear2.weight has no gradient")?));
                out.push(values(mlp.linear2_bias.grad(&grads).ok_or("linear2.bias has no gradient")?));
            }
            Ok(out)
        };
        let ours = run(&|s, t, p, q, k| semckd_loss(s, t, p, q, k, &config).expect("valid input"), false)?;
        let theirs = run(&|s, t, p, q, k| reference::semckd_loss(s, t, p, q, k, &config), dtype != DType::F32)?;
        for (i, (got, want)) in ours.into_iter().zip(theirs).enumerate() {
            let kind = if i == 0 { OutputKind::Loss } else { OutputKind::Tensor };
            check_close(&format!("semckd {dtype:?} output {i}"), got, want, limit(dtype, kind))?;
        }
    }
    Ok(())
}
