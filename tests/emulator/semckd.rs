//! The SemCKD kernels, run on the host through the emulator, against the f64 CPU reference.

use crate::common;
use crate::pair::close;

use kd_kernels::emulator::EmulatedGpu;
use kd_kernels::semckd::emulate::{semckd, SemckdHostInputs, SemckdHostOutputs};
use kd_kernels::semckd::{SemckdConfig, SemckdCpu, SemckdCpuOutput};
use kd_kernels::tolerance::OutputKind;
use kd_kernels::{DType, GradOptions, KdFloat};
use semckd_support::Case;

/// The cases and reference the CPU and emulator SemCKD tests share.
#[path = "../semckd_support/mod.rs"]
mod semckd_support;

const GPU: EmulatedGpu = EmulatedGpu::H100_SMALL_GRID;

fn host<T: KdFloat>(case: &Case<T>) -> SemckdHostInputs<'_, T> {
    SemckdHostInputs {
        student: case.student.iter().map(|v| v.as_slice()).collect(),
        teacher: case.teacher.iter().map(|v| v.as_slice()).collect(),
        proj: case.proj.iter().map(|v| v.as_slice()).collect(),
        query: case.query.iter().map(|m| [0, 1, 2, 3].map(|k| m[k].as_slice())).collect(),
        key: case.key.iter().map(|m| [0, 1, 2, 3].map(|k| m[k].as_slice())).collect(),
    }
}

/// Compares every output; gradients of the emulated call are `factor * reference + base`.
fn compare<T: KdFloat>(
    got: &SemckdHostOutputs<T>,
    r: &SemckdCpuOutput,
    t: usize,
    factor: f64,
    base: Option<&SemckdHostOutputs<T>>,
) {
    let dtype = T::DTYPE;
    let w = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<_>>();
    let wf = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    if !got.loss.is_nan() {
        close("loss", dtype, OutputKind::Loss, [got.loss as f64], [r.loss]);
    }
    close("attention", DType::F32, OutputKind::Tensor, wf(&got.attention), r.attention.iter().copied());
    let add = |reference: Vec<f64>, b: Option<Vec<f64>>| -> Vec<f64> {
        match b {
            Some(b) => reference.iter().zip(b).map(|(x, y)| factor * x + y).collect(),
            None => reference.iter().map(|x| factor * x).collect(),
        }
    };
    for (i, g) in got.grad_student.iter().enumerate() {
        let want = add(r.grad_student[i].iter().copied().collect(), base.map(|b| w(&b.grad_student[i])));
        close(&format!("grad_student {i}"), dtype, OutputKind::Tensor, w(g), want);
    }
    for (p, g) in got.grad_proj.iter().enumerate() {
        let want = add(r.grad_proj[p / t][p % t].iter().copied().collect(), base.map(|b| w(&b.grad_proj[p])));
        close(&format!("grad_proj {p}"), dtype, OutputKind::Tensor, w(g), want);
    }
    for (side, gots, refs, bases) in [
        ("query", &got.grad_query, &r.grad_query, base.map(|b| &b.grad_query)),
        ("key", &got.grad_key, &r.grad_key, base.map(|b| &b.grad_key)),
    ] {
        for (l, g) in gots.iter().enumerate() {
            let rr = &refs[l];
            let refs4: [Vec<f64>; 4] = [
                rr.linear1_weight.iter().copied().collect(),
                rr.linear1_bias.to_vec(),
                rr.linear2_weight.iter().copied().collect(),
                rr.linear2_bias.to_vec(),
            ];
            for k in 0..4 {
                let want = add(refs4[k].clone(), bases.map(|b| wf(&b[l][k])));
                // MLP parameter gradients are f32 whatever the feature dtype, but computed from features
                // stored in that dtype: they get the dtype's row.
                close(&format!("grad_{side} {l}.{k}"), dtype, OutputKind::Tensor, wf(&g[k]), want);
            }
        }
    }
}

fn check_layout<T: KdFloat>(seed: u64, batch: usize, student: &[[usize; 3]], teacher: &[[usize; 3]]) {
    let case = Case::<T>::new(seed, batch, student, teacher);
    let config = SemckdConfig { loss_weight: 400.0, eps: None };
    let reference = SemckdCpu::new(config).unwrap().forward_backward(&case.cpu_inputs()).unwrap();
    let t = case.layers.teachers();
    let got = semckd(&config, &case.layers, &host(&case), true, None, GradOptions::OVERWRITE, None, GPU).unwrap();
    compare(&got, &reference, t, 1.0, None);
    let fwd = semckd(&config, &case.layers, &host(&case), false, None, GradOptions::OVERWRITE, None, GPU).unwrap();
    close("forward loss", T::DTYPE, OutputKind::Loss, [fwd.loss as f64], [reference.loss]);
    assert_eq!(fwd.loss.to_bits(), got.loss.to_bits(), "forward and forward_backward give one loss");
}

const CIFAR_LIKE: ([[usize; 3]; 3], [[usize; 3]; 3]) =
    ([[4, 8, 8], [8, 4, 4], [16, 2, 2]], [[6, 8, 8], [8, 4, 4], [12, 2, 2]]);

#[test]
fn three_by_three_every_dtype() {
    let (s, t) = CIFAR_LIKE;
    check_layout::<f32>(1, 8, &s, &t);
    check_layout::<half::f16>(2, 8, &s, &t);
    check_layout::<half::bf16>(3, 8, &s, &t);
}

#[test]
fn two_by_three_non_integer_pooling_and_student_larger() {
    // Student 0 (6x6) smaller than teacher 0 (7x7): non-integer windows; student 0 larger than teacher 2.
    let s = [[3, 6, 6], [5, 3, 5]];
    let t = [[6, 7, 7], [4, 5, 9], [8, 2, 2]];
    check_layout::<f32>(4, 8, &s, &t);
    check_layout::<half::bf16>(5, 12, &s, &t);
}

#[test]
fn batch_beyond_one_gram_tile_and_long_rows() {
    // B = 70 > 64 (several Gram tiles, row blocks), D = 2 * 48 * 48 > 2048 (several chunks).
    check_layout::<f32>(6, 70, &[[2, 48, 48]], &[[3, 16, 16], [1, 4, 4]]);
}

#[test]
fn accumulate_scale_upstream_and_determinism() {
    let (s, t) = CIFAR_LIKE;
    let case = Case::<f32>::new(7, 8, &s, &t);
    let config = SemckdConfig { loss_weight: 50.0, eps: None };
    let reference = SemckdCpu::new(config).unwrap().forward_backward(&case.cpu_inputs()).unwrap();
    let first = semckd(&config, &case.layers, &host(&case), true, None, GradOptions::OVERWRITE, None, GPU).unwrap();
    let again = semckd(&config, &case.layers, &host(&case), true, None, GradOptions::OVERWRITE, None, GPU).unwrap();
    assert_eq!(format!("{first:?}"), format!("{again:?}"), "bitwise deterministic");
    let options = GradOptions { scale: 3.0, accumulate: true };
    let acc = semckd(&config, &case.layers, &host(&case), true, Some(0.5), options, Some(&first), GPU).unwrap();
    assert!(acc.loss.is_nan(), "backward writes no loss");
    compare(&acc, &reference, 3, 1.5, Some(&first));
}

#[test]
fn opt_in_eps() {
    let (s, t) = CIFAR_LIKE;
    let case = Case::<f32>::new(8, 8, &s, &t);
    // An eps far above every norm clamps every sample: the clamped branch of the backward.
    for eps in [1e-6, 1e3] {
        let config = SemckdConfig { loss_weight: 400.0, eps: Some(eps) };
        let reference = SemckdCpu::new(config).unwrap().forward_backward(&case.cpu_inputs()).unwrap();
        let got = semckd(&config, &case.layers, &host(&case), true, None, GradOptions::OVERWRITE, None, GPU).unwrap();
        compare(&got, &reference, 3, 1.0, None);
    }
}

#[test]
fn too_many_layers_is_typed() {
    let case = Case::<f32>::new(9, 4, &[[1, 2, 2]; 9], &[[1, 2, 2]]);
    let config = SemckdConfig::default();
    let err = semckd(&config, &case.layers, &host(&case), true, None, GradOptions::OVERWRITE, None, GPU).unwrap_err();
    assert!(matches!(err, kd_kernels::KdError::TooLarge { .. }), "{err:?}");
}

#[test]
fn adaptive_pooling_kernels_match_the_reference() {
    use kd_kernels::ndarray::{Array4, ArrayView4};
    use kd_kernels::semckd::{adaptive_avg_pool, adaptive_avg_pool_backward};
    let mut rng = common::SplitMix64::new(21);
    for (h, w, oh, ow) in [(7, 7, 3, 3), (6, 9, 4, 4), (32, 32, 8, 8), (2, 3, 3, 5), (5, 5, 5, 5)] {
        let shape = [2, 3, h, w];
        let x: Vec<f32> = (0..2 * 3 * h * w).map(|_| common::quantize(rng.uniform() - 0.5) as f32).collect();
        let got = kd_kernels::semckd::emulate::adaptive_avg_pool(&shape, [oh, ow], &x).unwrap();
        let want = adaptive_avg_pool(ArrayView4::from_shape(shape, &x).unwrap(), oh, ow).unwrap();
        close("pool", DType::F32, OutputKind::Tensor, got.iter().map(|&v| v as f64), want.iter().copied());
        let g: Vec<f32> = (0..2 * 3 * oh * ow).map(|_| common::quantize(rng.uniform() - 0.5) as f32).collect();
        let options = GradOptions { scale: 2.0, accumulate: true };
        let base = vec![1.0f32; x.len()];
        let got = kd_kernels::semckd::emulate::adaptive_avg_pool_backward(&shape, [oh, ow], &g, options, Some(&base))
            .unwrap();
        let g64 = Array4::from_shape_vec((2, 3, oh, ow), g.iter().map(|&v| v as f64).collect()).unwrap();
        let want = adaptive_avg_pool_backward(g64.view(), h, w).unwrap();
        close(
            "pool backward",
            DType::F32,
            OutputKind::Tensor,
            got.iter().map(|&v| v as f64),
            want.iter().map(|v| 1.0 + 2.0 * v),
        );
    }
}
