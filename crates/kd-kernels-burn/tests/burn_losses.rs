//! The burn ops against burn's own autograd of the same losses written in burn tensor ops
//! (`kd_kernels_burn::reference`), on burn's NdArray backend, in every float type it stores (f32, f64;
//! CWT, whose parameters are f32, in f32; SemCKD's f32 MLPs beside f32 or f64 maps).
// burn 0.22 deprecates its NdArray backend in favour of Flex; NdArray is the CPU backend this feature covers.
#![allow(deprecated)]

mod burn_support;

use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_support::{cwt_outputs, logits, tensor, values, CWT_OUTPUTS};
use kd_kernels::cwd::CwdConfig;
use kd_kernels::cwt::{CwtConfig, CwtNormalize};
use kd_kernels::dist::DistConfig;
use kd_kernels::icsd::{AicsdConfig, IcsdConfig, IcsdVariant};
use kd_kernels::pixel_kd::{PixelKdConfig, Reduction};
use kd_kernels::semckd::SemckdConfig;
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::KdError;
use kd_kernels_burn::{
    aicsd_loss, cwd_loss, cwt_loss, dist_loss, icsd_loss, pixel_kd_loss, reference, semckd_loss, CwtMlp, SemckdMlp,
};

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

#[test]
fn cwd_matches_burn_autograd() {
    for (shape, config) in SHAPES.into_iter().zip([
        CwdConfig::default(),
        CwdConfig { tau: 1.0, loss_weight: 5.0, teacher_grad: false },
        CwdConfig { tau: 2.5, loss_weight: 0.5, teacher_grad: false },
    ]) {
        compare_pair(
            ("cwd", shape, 6.0, false),
            |s, t| cwd_loss(s, t, &config).expect("valid input"),
            |s, t| reference::cwd_loss(s, t, &config),
        );
    }
}

#[test]
fn cwd_teacher_gradient_matches_burn_autograd() {
    let config = CwdConfig { tau: 2.0, loss_weight: 3.0, teacher_grad: true };
    compare_pair(
        ("cwd teacher_grad", [2, 3, 5, 4], 4.0, true),
        |s, t| cwd_loss(s, t, &config).expect("valid input"),
        |s, t| reference::cwd_loss(s, t, &config),
    );
}

#[test]
fn pixel_kd_matches_burn_autograd_for_every_reduction() {
    for (i, reduction) in
        [Reduction::Mean, Reduction::BatchMean, Reduction::Sum, Reduction::PixelMean].into_iter().enumerate()
    {
        let config = PixelKdConfig { tau: 1.0 + i as f64, loss_weight: 10.0, reduction, scale_tau2: i % 2 == 1 };
        for shape in SHAPES {
            compare_pair(
                ("pixel_kd", shape, 6.0, false),
                |s, t| pixel_kd_loss(s, t, &config).expect("valid input"),
                |s, t| reference::pixel_kd_loss(s, t, &config),
            );
        }
    }
}

/// The upstream gradient reaches the stored gradients: a weighted sum of both losses and a second use of
/// the student give burn's own gradient.
#[test]
fn combined_losses_scale_by_the_upstream_gradient() {
    let cwd = CwdConfig::default();
    let kd = PixelKdConfig::default();
    compare_pair(
        ("0.25 cwd + 3 kd + sum(s^2)", [2, 4, 3, 5], 3.0, false),
        |s, t| {
            cwd_loss(s.clone(), t.clone(), &cwd).unwrap() * 0.25
                + pixel_kd_loss(s.clone(), t, &kd).unwrap() * 3.0
                + (s.clone() * s).sum()
        },
        |s, t| {
            reference::cwd_loss(s.clone(), t.clone(), &cwd) * 0.25
                + reference::pixel_kd_loss(s.clone(), t, &kd) * 3.0
                + (s.clone() * s).sum()
        },
    );
}

/// A student computed from a parameter: the gradient flows on through burn's own ops.
#[test]
fn gradient_flows_into_upstream_parameters() {
    let device = ndarray_autodiff();
    let shape = [2, 3, 4, 4];
    for dtype in DTYPES {
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<1>| {
            let weight = tensor(logits(shape, 7, 1.0), shape, &device, dtype).require_grad();
            let x = tensor(logits(shape, 8, 2.0), shape, &device, dtype);
            let teacher = tensor(logits(shape, 9, 2.0), shape, &device, dtype);
            let student = (x * weight.clone()).tanh() * 4.0;
            let grads = f(student, teacher).backward();
            values(weight.grad(&grads).expect("the parameter has a gradient"))
        };
        let config = CwdConfig { tau: 1.0, loss_weight: 1.0, teacher_grad: false };
        let ours = run(&|s, t| cwd_loss(s, t, &config).unwrap());
        let theirs = run(&|s, t| reference::cwd_loss(s, t, &config));
        assert_close(&format!("parameter gradient {dtype:?}"), ours, theirs, tolerance_for(dtype, OutputKind::Tensor));
    }
}

/// Without autodiff (and with nothing tracked) the loss alone runs.
#[test]
fn untracked_losses_match_the_formula() {
    for device in [Device::ndarray(), ndarray_autodiff()] {
        for dtype in DTYPES {
            let shape = [2, 5, 3, 3];
            let s = tensor(logits(shape, 3, 5.0), shape, &device, dtype);
            let t = tensor(logits(shape, 4, 5.0), shape, &device, dtype);
            let cwd = CwdConfig::default();
            let kd = PixelKdConfig { reduction: Reduction::PixelMean, ..Default::default() };
            let limit = tolerance_for(dtype, OutputKind::Loss);
            assert_close(
                "cwd forward",
                values(cwd_loss(s.clone(), t.clone(), &cwd).unwrap()),
                values(reference::cwd_loss(s.clone(), t.clone(), &cwd)),
                limit,
            );
            assert_close(
                "pixel kd forward",
                values(pixel_kd_loss(s.clone(), t.clone(), &kd).unwrap()),
                values(reference::pixel_kd_loss(s, t, &kd)),
                limit,
            );
        }
    }
}

/// Strided (transposed) inputs are read as they are.
#[test]
fn strided_inputs() {
    let device = ndarray_autodiff();
    let shape = [2, 3, 5, 4];
    let s = tensor(logits(shape, 5, 4.0), shape, &device, DType::F64).swap_dims(2, 3).require_grad();
    let t = tensor(logits(shape, 6, 4.0), shape, &device, DType::F64).swap_dims(2, 3);
    let config = PixelKdConfig::default();
    let grads = pixel_kd_loss(s.clone(), t.clone(), &config).unwrap().backward();
    let ours = values(s.grad(&grads).unwrap());
    let s2 = s.clone().detach().require_grad();
    let grads = reference::pixel_kd_loss(s2.clone(), t, &config).backward();
    assert_close("strided d/d student", ours, values(s2.grad(&grads).unwrap()), F64_TOLERANCE);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let device = ndarray_autodiff();
    let s = tensor(logits([2, 3, 4, 5], 1, 1.0), [2, 3, 4, 5], &device, DType::F32);
    let t = tensor(logits([2, 3, 4, 5], 2, 1.0), [2, 3, 4, 5], &device, DType::F32);
    let cwd = CwdConfig::default();
    let kd = PixelKdConfig::default();

    let other = tensor(logits([2, 3, 5, 4], 2, 1.0), [2, 3, 5, 4], &device, DType::F32);
    assert!(matches!(cwd_loss(s.clone(), other.clone(), &cwd), Err(KdError::ShapeMismatch { what: "teacher", .. })));
    assert!(matches!(pixel_kd_loss(s.clone(), other, &kd), Err(KdError::ShapeMismatch { what: "teacher", .. })));

    let empty = Tensor::<4>::zeros([2, 0, 4, 5], &device);
    assert!(matches!(cwd_loss(empty.clone(), empty, &cwd), Err(KdError::EmptyInput { what: "student", .. })));

    let t64 = t.clone().cast(DType::F64);
    assert!(matches!(cwd_loss(s.clone(), t64, &cwd), Err(KdError::DTypeMismatch { .. })));

    let bad_tau = CwdConfig { tau: 0.0, ..cwd };
    assert!(matches!(cwd_loss(s.clone(), t.clone(), &bad_tau), Err(KdError::InvalidParameter { name: "tau", .. })));
    let bad_weight = PixelKdConfig { loss_weight: f64::NAN, ..kd };
    assert!(matches!(
        pixel_kd_loss(s.clone(), t.clone(), &bad_weight),
        Err(KdError::InvalidParameter { name: "loss_weight", .. })
    ));

    // A tracked teacher would silently get no gradient: refused, with the fix in the message. (A teacher
    // computed from tracked tensors; detaching it gives an untracked leaf.)
    let tracked = t.clone().require_grad() * 1.5;
    let err = pixel_kd_loss(s.clone(), tracked.clone(), &kd).unwrap_err();
    assert!(matches!(err, KdError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("detach"), "{err}");
    assert!(matches!(cwd_loss(s.clone(), tracked.clone(), &cwd), Err(KdError::OutputMismatch { what: "teacher", .. })));
    let with_teacher = CwdConfig { teacher_grad: true, ..cwd };
    assert!(cwd_loss(s.clone(), tracked.clone(), &with_teacher).is_ok());
    assert!(pixel_kd_loss(s, tracked.detach(), &kd).is_ok());
}

fn matrix(rows: usize, cols: usize, seed: u64, device: &Device) -> Tensor<2> {
    let v = logits([1, 1, rows, cols], seed, 0.5);
    Tensor::from_data(TensorData::new(v, [rows, cols]), (device, DType::F32))
}

fn vector(len: usize, seed: u64, device: &Device) -> Tensor<1> {
    let v = logits([1, 1, 1, len], seed, 0.5);
    Tensor::from_data(TensorData::new(v, [len]), (device, DType::F32))
}

/// CWT: the gradients into the student features and every MLP parameter, against burn's autograd.
#[test]
fn cwt_matches_burn_autograd() {
    let device = ndarray_autodiff();
    for (n, cs, ch, ct, h, w, normalize) in [
        (2, 5, 4, 3, 3, 4, CwtNormalize::Batch),
        (1, 3, 7, 6, 5, 2, CwtNormalize::Mean),
        (3, 1, 1, 1, 1, 1, CwtNormalize::Batch),
    ] {
        let config = CwtConfig { loss_weight: 0.3, normalize };
        let run = |f: &dyn Fn(Tensor<4>, Tensor<4>, &CwtMlp) -> Tensor<1>| {
            let student = tensor(logits([n, cs, h, w], 11, 2.0), [n, cs, h, w], &device, DType::F32).require_grad();
            let teacher = tensor(logits([n, ct, h, w], 12, 2.0), [n, ct, h, w], &device, DType::F32);
            let mlp = CwtMlp {
                w1: matrix(ch, cs, 13, &device).require_grad(),
                b1: vector(ch, 14, &device).require_grad(),
                w2: matrix(ct, ch, 15, &device).require_grad(),
                b2: vector(ct, 16, &device).require_grad(),
            };
            cwt_outputs(f(student.clone(), teacher, &mlp), &student, &mlp)
        };
        let ours = run(&|s, t, mlp| cwt_loss(s, t, mlp, &config).expect("valid input"));
        let theirs = run(&|s, t, mlp| reference::cwt_loss(s, t, mlp, &config));
        for ((name, got), want) in CWT_OUTPUTS.into_iter().zip(ours).zip(theirs) {
            let kind = if name == "loss" { OutputKind::Loss } else { OutputKind::Tensor };
            assert_close(
                &format!("cwt {name} [{n},{cs},{h},{w}] ch {ch} ct {ct}"),
                got,
                want,
                tolerance_for(DType::F32, kind),
            );
        }
    }
}

#[test]
fn cwt_bad_inputs_are_typed_errors() {
    let device = ndarray_autodiff();
    let s = tensor(logits([2, 3, 4, 4], 1, 1.0), [2, 3, 4, 4], &device, DType::F32);
    let t = tensor(logits([2, 5, 4, 4], 2, 1.0), [2, 5, 4, 4], &device, DType::F32);
    let mlp = CwtMlp {
        w1: matrix(4, 3, 3, &device),
        b1: vector(4, 4, &device),
        w2: matrix(5, 4, 5, &device),
        b2: vector(5, 6, &device),
    };
    let config = CwtConfig::default();
    assert!(cwt_loss(s.clone(), t.clone(), &mlp, &config).is_ok());
    let wrong_bias = CwtMlp { b1: vector(3, 4, &device), ..mlp.clone() };
    assert!(matches!(
        cwt_loss(s.clone(), t.clone(), &wrong_bias, &config),
        Err(KdError::ShapeMismatch { what: "mlp.linear1.bias", .. })
    ));
    let wrong_w2 = CwtMlp { w2: matrix(5, 3, 5, &device), ..mlp.clone() };
    assert!(matches!(
        cwt_loss(s.clone(), t.clone(), &wrong_w2, &config),
        Err(KdError::ShapeMismatch { what: "mlp.linear2.weight", .. })
    ));
    let narrow_teacher = tensor(logits([2, 4, 4, 4], 2, 1.0), [2, 4, 4, 4], &device, DType::F32);
    assert!(matches!(
        cwt_loss(s.clone(), narrow_teacher, &mlp, &config),
        Err(KdError::ShapeMismatch { what: "teacher", .. })
    ));
    let s64 = s.clone().cast(DType::F64);
    assert!(matches!(cwt_loss(s64, t.clone(), &mlp, &config), Err(KdError::DTypeMismatch { .. })));
    let err = cwt_loss(s, t.require_grad(), &mlp, &config).unwrap_err();
    assert!(matches!(err, KdError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("detach"), "{err}");
}

#[test]
fn icsd_matches_burn_autograd_in_both_variants() {
    for variant in [IcsdVariant::Official, IcsdVariant::Paper] {
        // At least 3 classes: with 2, the paper variant's normalised rows are (0, ±1) and the loss is 0 up to
        // rounding on both sides, which a relative error cannot compare.
        for (shape, tau) in [([2, 3, 4, 5], 1.0), ([1, 5, 6, 3], 2.0), ([3, 3, 2, 4], 0.7)] {
            let config = IcsdConfig { tau, loss_weight: 9500.0, variant };
            compare_pair(
                (&format!("icsd {variant:?}"), shape, 3.0, false),
                |s, t| icsd_loss(s, t, &config).expect("valid input"),
                |s, t| reference::icsd_loss(s, t, &config),
            );
        }
    }
}

#[test]
fn dist_matches_burn_autograd() {
    for (shape, config) in [
        ([2, 5, 3, 4], DistConfig::default()),
        ([1, 7, 5, 3], DistConfig { tau: 2.0, beta: 1.5, gamma: 0.5, loss_weight: 3.0 }),
    ] {
        compare_pair(
            ("dist", shape, 3.0, false),
            |s, t| dist_loss(s, t, &config).expect("valid input"),
            |s, t| reference::dist_loss(s, t, &config),
        );
    }
}

#[test]
fn aicsd_is_the_alpha_mix_of_its_terms() {
    let config = AicsdConfig::default();
    for epoch in [0.0, 30.0, 200.0] {
        let alpha = config.alpha(epoch).unwrap();
        compare_pair(
            (&format!("aicsd epoch {epoch}"), [2, 4, 5, 3], 3.0, false),
            |s, t| aicsd_loss(s, t, epoch, &config).expect("valid input"),
            |s, t| {
                reference::icsd_loss(s.clone(), t.clone(), &config.icsd) * alpha
                    + reference::pixel_kd_loss(s, t, &config.kd) * (1.0 - alpha)
            },
        );
    }
    let device = ndarray_autodiff();
    let s = tensor(logits([1, 2, 3, 3], 1, 1.0), [1, 2, 3, 3], &device, DType::F32);
    assert!(matches!(
        aicsd_loss(s.clone(), s, f64::NAN, &config),
        Err(KdError::InvalidParameter { name: "epoch", .. })
    ));
}

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
