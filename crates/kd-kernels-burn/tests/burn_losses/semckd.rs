//! SemCKD: the loss and every gradient against burn's autograd, composition with burn's ops, typed errors.

use super::*;
use burn::tensor::module::adaptive_avg_pool2d;
use kd_kernels::semckd::SemckdConfig;
use kd_kernels_burn::{semckd_loss, SemckdMlp};

/// SemCKD's inputs: maps, regressor outputs and MLPs for one layout, deterministic.
struct SemckdCase {
    student: Vec<Tensor<4>>,
    teacher: Vec<Tensor<4>>,
    proj: Vec<Vec<Tensor<4>>>,
    query: Vec<SemckdMlp>,
    key: Vec<SemckdMlp>,
}

fn semckd_mlp(batch: usize, d: usize, seed: u64, device: &Device) -> SemckdMlp {
    SemckdMlp {
        linear1_weight: matrix(2 * d, batch, seed, device),
        linear1_bias: vector(2 * d, seed + 1, device),
        linear2_weight: matrix(d, 2 * d, seed + 2, device),
        linear2_bias: vector(d, seed + 3, device),
    }
}

/// Student maps `[B, C, H, W]` from `student`, teacher maps from `teacher`, `d = B / 4`.
fn semckd_case(
    student: &[[usize; 3]],
    teacher: &[[usize; 3]],
    batch: usize,
    dtype: DType,
    device: &Device,
) -> SemckdCase {
    let map = |[c, h, w]: [usize; 3], seed: u64| {
        let shape = [batch, c, h, w];
        tensor(logits(shape, seed, 1.0), shape, device, dtype)
    };
    let d = batch / 4;
    SemckdCase {
        student: student.iter().enumerate().map(|(i, s)| map(*s, 20 + i as u64)).collect(),
        teacher: teacher.iter().enumerate().map(|(j, t)| map(*t, 40 + j as u64)).collect(),
        proj: student
            .iter()
            .enumerate()
            .map(|(i, s)| {
                teacher
                    .iter()
                    .enumerate()
                    .map(|(j, t)| {
                        let h = s[1].min(t[1]);
                        map([t[0], h, h], 60 + (i * teacher.len() + j) as u64)
                    })
                    .collect()
            })
            .collect(),
        query: (0..student.len()).map(|i| semckd_mlp(batch, d, 100 + 4 * i as u64, device)).collect(),
        key: (0..teacher.len()).map(|j| semckd_mlp(batch, d, 200 + 4 * j as u64, device)).collect(),
    }
}

impl SemckdCase {
    /// Every input but the teacher, marked `require_grad`.
    fn tracked(self) -> Self {
        SemckdCase {
            student: self.student.into_iter().map(Tensor::require_grad).collect(),
            teacher: self.teacher,
            proj: self.proj.into_iter().map(|row| row.into_iter().map(Tensor::require_grad).collect()).collect(),
            query: self.query.into_iter().map(SemckdMlp::require_grad).collect(),
            key: self.key.into_iter().map(SemckdMlp::require_grad).collect(),
        }
    }

    fn loss(&self, f: &SemckdFn, config: &SemckdConfig) -> Tensor<1> {
        f(&self.student, &self.teacher, &self.proj, &self.query, &self.key, config)
    }

    /// The loss and every gradient, named, after `backward` of `f`.
    fn loss_and_gradients(&self, f: &SemckdFn, config: &SemckdConfig) -> Vec<(String, Vec<f64>)> {
        let loss = self.loss(f, config);
        let grads = loss.backward();
        let mut out = vec![("loss".to_string(), values(loss))];
        let grad = |what: String, g: Option<Tensor<4>>| {
            (what.clone(), values(g.unwrap_or_else(|| panic!("{what}: no gradient"))))
        };
        for (i, s) in self.student.iter().enumerate() {
            out.push(grad(format!("student[{i}]"), s.grad(&grads)));
        }
        for (i, row) in self.proj.iter().enumerate() {
            for (j, p) in row.iter().enumerate() {
                out.push(grad(format!("proj[{i}][{j}]"), p.grad(&grads)));
            }
        }
        for (side, mlps) in [("query", &self.query), ("key", &self.key)] {
            for (k, m) in mlps.iter().enumerate() {
                let need = |what: &str, g: Option<Vec<f64>>| {
                    (format!("{side}[{k}].{what}"), g.unwrap_or_else(|| panic!("{side}[{k}].{what}: no gradient")))
                };
                out.push(need("linear1.weight", m.linear1_weight.grad(&grads).map(values)));
                out.push(need("linear1.bias", m.linear1_bias.grad(&grads).map(values)));
                out.push(need("linear2.weight", m.linear2_weight.grad(&grads).map(values)));
                out.push(need("linear2.bias", m.linear2_bias.grad(&grads).map(values)));
            }
        }
        out
    }
}

type SemckdFn =
    dyn Fn(&[Tensor<4>], &[Tensor<4>], &[Vec<Tensor<4>>], &[SemckdMlp], &[SemckdMlp], &SemckdConfig) -> Tensor<1>;

fn semckd_ours(
    s: &[Tensor<4>],
    t: &[Tensor<4>],
    p: &[Vec<Tensor<4>>],
    q: &[SemckdMlp],
    k: &[SemckdMlp],
    c: &SemckdConfig,
) -> Tensor<1> {
    semckd_loss(s, t, p, q, k, c).expect("valid input")
}

/// The tolerance of one SemCKD output: the loss's, the maps' dtype for map and `proj` gradients, f32 for
/// the MLP parameters' gradients (stored in f32 on both sides).
fn semckd_tolerance(name: &str, dtype: DType) -> f64 {
    if name == "loss" {
        tolerance_for(dtype, OutputKind::Loss)
    } else if name.starts_with("query") || name.starts_with("key") {
        tolerance_for(DType::F32, OutputKind::Tensor)
    } else {
        tolerance_for(dtype, OutputKind::Tensor)
    }
}

/// Student map sizes `[C, H, W]`, teacher map sizes, the batch, the configuration.
type SemckdLayout = (&'static [[usize; 3]], &'static [[usize; 3]], usize, SemckdConfig);

/// The loss and every gradient (student maps, regressor outputs, every query and key parameter) against
/// burn's autograd of the same SemCKD in burn ops, on odd layouts: non-integer pooling ratios, students
/// larger and smaller than teachers, `d` from 1 to 3, the optional epsilon clamping every norm or none.
#[test]
fn semckd_matches_burn_autograd() {
    let device = ndarray_autodiff();
    // B >= 8: with d = B / 4 = 1 the embeddings are +-1 and the attention path's gradient is zero (rounding
    // noise on burn's side), which a relative error cannot compare; the clamped epsilon keeps d = 1 alive.
    let layouts: [SemckdLayout; 4] = [
        (&[[3, 5, 5], [2, 3, 4]], &[[2, 4, 6], [3, 3, 3], [1, 6, 5]], 8, SemckdConfig::default()),
        (&[[2, 2, 3]], &[[3, 5, 2]], 9, SemckdConfig { loss_weight: 50.0, eps: None }),
        (
            &[[1, 4, 4], [2, 2, 2], [3, 7, 3]],
            &[[2, 3, 5], [1, 4, 4]],
            12,
            SemckdConfig { loss_weight: 3.0, eps: Some(1e-9) },
        ),
        (&[[2, 3, 3], [1, 6, 2]], &[[2, 3, 3]], 4, SemckdConfig { loss_weight: 1.0, eps: Some(1e3) }),
    ];
    for (student, teacher, batch, config) in layouts {
        for dtype in DTYPES {
            let run = |f: &SemckdFn| {
                semckd_case(student, teacher, batch, dtype, &device).tracked().loss_and_gradients(f, &config)
            };
            let ours = run(&semckd_ours);
            let theirs = run(&reference::semckd_loss);
            assert_eq!(ours.len(), theirs.len());
            for ((name, got), (_, want)) in ours.into_iter().zip(theirs) {
                let tag = format!("semckd {dtype:?} B {batch} {student:?} x {teacher:?} {config:?}: {name}");
                assert_close(&tag, got, want, semckd_tolerance(&name, dtype));
            }
        }
    }
}

/// SemCKD's stored gradients scale by the upstream gradient, and the regressor path reaches the
/// regressor's parameters and the student through `proj` by burn's own autograd (the two student paths add).
#[test]
fn semckd_composes_with_burn_ops() {
    let device = ndarray_autodiff();
    let config = SemckdConfig { loss_weight: 7.0, eps: None };
    let (student, teacher) = ([[2, 4, 4]], [[3, 2, 2], [2, 4, 3]]);
    for dtype in DTYPES {
        let run = |f: &SemckdFn| {
            let case = semckd_case(&student, &teacher, 8, dtype, &device).tracked();
            // A regressor per pair: the student pooled to h, its channels summed, scaled per output channel.
            let scales: Vec<Tensor<4>> = teacher
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    tensor(logits([1, t[0], 1, 1], 300 + j as u64, 1.0), [1, t[0], 1, 1], &device, dtype).require_grad()
                })
                .collect();
            let s = case.student[0].clone();
            let proj = vec![teacher
                .iter()
                .zip(&scales)
                .map(|(t, scale)| {
                    let h = student[0][1].min(t[1]);
                    adaptive_avg_pool2d(s.clone(), [h, h]).sum_dim(1) * scale.clone()
                })
                .collect::<Vec<_>>()];
            let loss = f(&case.student, &case.teacher, &proj, &case.query, &case.key, &config) * 0.3
                + (s.clone() * s.clone()).sum() * 0.01;
            let grads = loss.backward();
            let mut out = vec![values(s.grad(&grads).expect("student"))];
            out.extend(scales.iter().map(|w| values(w.grad(&grads).expect("regressor"))));
            out.push(values(case.query[0].linear1_weight.grad(&grads).expect("query")));
            out.push(values(case.key[1].linear2_bias.grad(&grads).expect("key")));
            out
        };
        let ours = run(&semckd_ours);
        let theirs = run(&reference::semckd_loss);
        for (k, (got, want)) in ours.into_iter().zip(theirs).enumerate() {
            let limit = if k >= 3 {
                tolerance_for(DType::F32, OutputKind::Tensor)
            } else {
                tolerance_for(dtype, OutputKind::Tensor)
            };
            assert_close(&format!("semckd composed {dtype:?} output {k}"), got, want, limit);
        }
    }
}

/// Without autodiff, and with nothing tracked, the loss alone runs.
#[test]
fn semckd_untracked_matches_the_formula() {
    for device in [Device::ndarray(), ndarray_autodiff()] {
        for dtype in DTYPES {
            let case = semckd_case(&[[3, 4, 4], [2, 2, 5]], &[[2, 3, 3]], 6, dtype, &device);
            let config = SemckdConfig::default();
            assert_close(
                &format!("semckd forward {dtype:?}"),
                values(case.loss(&semckd_ours, &config)),
                values(case.loss(&reference::semckd_loss, &config)),
                tolerance_for(dtype, OutputKind::Loss),
            );
        }
    }
}

#[test]
fn semckd_bad_inputs_are_typed_errors() {
    let device = ndarray_autodiff();
    let config = SemckdConfig::default();
    let ok = || semckd_case(&[[3, 4, 4], [2, 2, 2]], &[[2, 3, 3]], 4, DType::F32, &device);
    let call = |c: &SemckdCase| semckd_loss(&c.student, &c.teacher, &c.proj, &c.query, &c.key, &config);
    assert!(call(&ok()).is_ok());

    let mut c = ok();
    c.proj.pop();
    assert!(matches!(call(&c), Err(KdError::ShapeMismatch { what: "proj (rows, one per student layer)", .. })));
    let mut c = ok();
    let extra = c.proj[1][0].clone();
    c.proj[1].push(extra);
    assert!(matches!(call(&c), Err(KdError::ShapeMismatch { what: "proj (pairs per student layer)", .. })));
    let mut c = ok();
    c.proj[0][0] = tensor(logits([4, 2, 4, 4], 1, 1.0), [4, 2, 4, 4], &device, DType::F32);
    let err = call(&c).unwrap_err();
    assert!(matches!(err, KdError::ShapeMismatch { ref expected, .. } if *expected == vec![4, 2, 3, 3]), "{err}");
    let mut c = ok();
    c.query.pop();
    assert!(matches!(call(&c), Err(KdError::ShapeMismatch { what: "query MLPs (one per student layer)", .. })));
    let mut c = ok();
    let extra = c.key[0].clone();
    c.key.push(extra);
    assert!(matches!(call(&c), Err(KdError::ShapeMismatch { what: "key MLPs (one per teacher layer)", .. })));
    let mut c = ok();
    c.key[0].linear1_weight = matrix(2, 5, 1, &device);
    assert!(matches!(call(&c), Err(KdError::ShapeMismatch { what: "linear1.weight [2d, B]", .. })));
    let mut c = ok();
    c.student[1] = tensor(logits([3, 2, 2, 2], 1, 1.0), [3, 2, 2, 2], &device, DType::F32);
    assert!(matches!(call(&c), Err(KdError::ShapeMismatch { what: "batch of a feature map", .. })));

    // B < 4 gives d = 0: no embedding.
    let small = semckd_case(&[[2, 3, 3]], &[[2, 3, 3]], 3, DType::F32, &device);
    assert!(matches!(call(&small), Err(KdError::InvalidParameter { .. })));
    let empty = SemckdCase { student: vec![], ..ok() };
    assert!(matches!(call(&empty), Err(KdError::EmptyInput { .. })));
    let many: Vec<[usize; 3]> = vec![[1, 2, 2]; 9];
    let too_many = semckd_case(&many, &[[1, 2, 2]], 4, DType::F32, &device);
    assert!(matches!(call(&too_many), Err(KdError::TooLarge { .. })));

    // Dtypes: one for the maps and proj, f32 for the MLPs.
    let mut c = ok();
    c.proj[0][0] = c.proj[0][0].clone().cast(DType::F64);
    assert!(matches!(call(&c), Err(KdError::DTypeMismatch { ref what, .. }) if what == "proj[0][0]"));
    let mut c = ok();
    c.teacher[0] = c.teacher[0].clone().cast(DType::F64);
    assert!(matches!(call(&c), Err(KdError::DTypeMismatch { ref what, .. }) if what == "teacher[0]"));
    let mut c = semckd_case(&[[3, 4, 4]], &[[2, 3, 3]], 4, DType::F64, &device);
    c.query[0].linear2_bias = c.query[0].linear2_bias.clone().cast(DType::F64);
    let err = call(&c).unwrap_err();
    assert!(matches!(err, KdError::DTypeMismatch { ref what, .. } if what.contains("linear2.bias")), "{err}");

    // A tracked teacher would get no gradient.
    let mut c = ok();
    c.teacher[0] = c.teacher[0].clone().require_grad() * 2.0;
    let err = call(&c).unwrap_err();
    assert!(matches!(err, KdError::Unsupported { .. }) && err.to_string().contains("detach"), "{err}");

    // A teacher computed on the plain NdArray device (no autodiff) beside autodiff maps is the same device to
    // burn, and a constant: accepted.
    let mut c = ok();
    c.teacher[0] = tensor(logits([4, 2, 3, 3], 40, 1.0), [4, 2, 3, 3], &Device::ndarray(), DType::F32);
    assert!(call(&c).is_ok());

    let bad = SemckdConfig { eps: Some(-1.0), ..config };
    let c = ok();
    assert!(matches!(
        semckd_loss(&c.student, &c.teacher, &c.proj, &c.query, &c.key, &bad),
        Err(KdError::InvalidParameter { name: "eps", .. })
    ));
}

/// Strided maps, regressor outputs and parameters (transposed views) are read as they are: the gradients
/// equal burn's autograd on the same views.
#[test]
fn semckd_strided_inputs() {
    let device = ndarray_autodiff();
    let config = SemckdConfig::default();
    for dtype in DTYPES {
        let run = |f: &SemckdFn| {
            let mut case = semckd_case(&[[3, 4, 4], [2, 5, 5]], &[[2, 4, 4]], 8, dtype, &device);
            // Square maps: swapping H and W keeps the shape and makes the view strided.
            case.student = case.student.into_iter().map(|m| m.swap_dims(2, 3)).collect();
            case.teacher = case.teacher.into_iter().map(|m| m.swap_dims(2, 3)).collect();
            case.proj = case.proj.into_iter().map(|row| row.into_iter().map(|p| p.swap_dims(2, 3)).collect()).collect();
            // A [2d, B] = [4, 8] parameter stored as the transpose of a [8, 4] one (burn's Linear layout).
            case.query[0].linear1_weight = matrix(8, 4, 500, &device).transpose();
            case.tracked().loss_and_gradients(f, &config)
        };
        for ((name, got), (_, want)) in run(&semckd_ours).into_iter().zip(run(&reference::semckd_loss)) {
            assert_close(&format!("semckd strided {dtype:?}: {name}"), got, want, semckd_tolerance(&name, dtype));
        }
    }
}
