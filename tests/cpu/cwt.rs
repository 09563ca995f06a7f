//! The CWT CPU reference: the recorded fixtures, central finite differences of its loss against every
//! analytic gradient (dead ReLU units included), `backward`'s upstream scaling, and typed errors for bad
//! inputs.

use crate::common;

/// The inputs and reference every harness's CWT tests share.
#[path = "../common/cwt.rs"]
mod shared;

use common::quantize;
use kd_kernels::cwt::{CwtConfig, CwtCpu, CwtNormalize, CwtShapes, MlpParams};
use kd_kernels::fixture::{Backend, Fixture, LossKind};
use kd_kernels::verify;
use kd_kernels::KdError;
use ndarray::{Array1, Array2, Array4};
use shared::CwtInputs;

/// One set of inputs, all f32 multiples of 2^-10 (exact under the finite-difference steps).
#[derive(Clone)]
struct Case {
    student: Array4<f32>,
    teacher: Array4<f32>,
    w1: Array2<f32>,
    b1: Array1<f32>,
    w2: Array2<f32>,
    b2: Array1<f32>,
}

impl Case {
    /// The shared inputs (`shared`), quantized, every parameter ~ N(0, 0.5^2).
    fn random(seed: u64, dims: [usize; 4], ch: usize, ct: usize) -> Case {
        let shapes = CwtShapes { cs: dims[1], ch, ct };
        let i = CwtInputs::draw(seed, dims, shapes, [1.0, 1.0, 0.5, 0.5, 0.5, 0.5], quantize);
        Case {
            teacher: Array4::from_shape_vec(i.teacher_dims(), i.teacher).unwrap(),
            student: Array4::from_shape_vec(dims, i.student).unwrap(),
            w1: Array2::from_shape_vec((ch, dims[1]), i.w1).unwrap(),
            b1: Array1::from_vec(i.b1),
            w2: Array2::from_shape_vec((ct, ch), i.w2).unwrap(),
            b2: Array1::from_vec(i.b2),
        }
    }

    fn params(&self) -> MlpParams<'_> {
        MlpParams { w1: self.w1.view(), b1: self.b1.view(), w2: self.w2.view(), b2: self.b2.view() }
    }

    fn loss(&self, cwt: &CwtCpu) -> f64 {
        cwt.forward(self.student.view(), self.teacher.view(), &self.params()).unwrap()
    }

    /// The smallest |A| over every pixel and hidden unit other than those in `skip`.
    fn min_abs_preactivation(&self, skip: &[usize]) -> f64 {
        let (ch, cs) = self.w1.dim();
        let [n, _, h, w]: [usize; 4] = self.student.shape().try_into().unwrap();
        let mut m = f64::INFINITY;
        for (nn, y, x) in itertools(n, h, w) {
            for u in (0..ch).filter(|u| !skip.contains(u)) {
                let a: f64 = self.b1[u] as f64
                    + (0..cs).map(|c| self.w1[[u, c]] as f64 * self.student[[nn, c, y, x]] as f64).sum::<f64>();
                m = m.min(a.abs());
            }
        }
        m
    }
}

fn itertools(n: usize, h: usize, w: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..n).flat_map(move |a| (0..h).flat_map(move |b| (0..w).map(move |c| (a, b, c))))
}

/// The step for `x`: 2^-14 times the power of two at or below max(|x|, 1).
fn step(x: f32) -> f32 {
    let e = (x.abs().max(1.0)).log2().floor() as i32;
    2f32.powi(e - 14)
}

/// Central differences of `f` over every element of the slice `values` (edited through `set`).
fn numeric(values: Vec<f32>, f: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut work = values.clone();
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let h = step(v);
            work[i] = v + h;
            let plus = f(&work);
            work[i] = v - h;
            let minus = f(&work);
            work[i] = v;
            (plus - minus) / (2.0 * h as f64)
        })
        .collect()
}

fn assert_close(what: &str, numeric: &[f64], analytic: &[f64]) {
    assert_eq!(numeric.len(), analytic.len(), "{what}: length");
    let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && scale.is_finite(), "{what}: degenerate analytic gradient");
    for (i, (n, a)) in numeric.iter().zip(analytic).enumerate() {
        assert!((n - a).abs() <= 1e-6 * scale, "{what}[{i}]: numeric {n:e} analytic {a:e} (scale {scale:e})");
    }
}

/// Finite differences of every input against the analytic gradients, for `case` whose hidden units in
/// `kinked` sit exactly at A = 0 (their W1/b1 differences are skipped: a central difference at the kink is
/// half the one-sided slope, where the crate, as PyTorch, uses ReLU'(0) = 0).
fn check_gradients(case: &Case, config: CwtConfig, kinked: &[usize]) {
    let cwt = CwtCpu::new(config).unwrap();
    let r = cwt.forward_backward(case.student.view(), case.teacher.view(), &case.params()).unwrap();
    assert!((r.loss - case.loss(&cwt)).abs() <= 1e-12 * r.loss.abs());
    let with = |edit: &dyn Fn(&mut Case, &[f32]), v: &[f32]| {
        let mut c = case.clone();
        edit(&mut c, v);
        c.loss(&cwt)
    };
    let to_vec = |a: ndarray::ArrayViewD<'_, f32>| a.iter().copied().collect::<Vec<f32>>();
    let flat = |a: ndarray::ArrayViewD<'_, f64>| a.iter().copied().collect::<Vec<f64>>();

    let gs = numeric(to_vec(case.student.view().into_dyn()), |v| {
        with(&|c, v| c.student.as_slice_mut().unwrap().copy_from_slice(v), v)
    });
    assert_close("grad.student", &gs, &flat(r.grad_student.view().into_dyn()));
    let gw2 = numeric(to_vec(case.w2.view().into_dyn()), |v| {
        with(&|c, v| c.w2.as_slice_mut().unwrap().copy_from_slice(v), v)
    });
    assert_close("grad.w2", &gw2, &flat(r.grad_w2.view().into_dyn()));
    let gb2 = numeric(case.b2.to_vec(), |v| with(&|c, v| c.b2.as_slice_mut().unwrap().copy_from_slice(v), v));
    assert_close("grad.b2", &gb2, &r.grad_b2.to_vec());

    let (ch, cs) = case.w1.dim();
    let mut gw1 = numeric(to_vec(case.w1.view().into_dyn()), |v| {
        with(&|c, v| c.w1.as_slice_mut().unwrap().copy_from_slice(v), v)
    });
    let mut gb1 = numeric(case.b1.to_vec(), |v| with(&|c, v| c.b1.as_slice_mut().unwrap().copy_from_slice(v), v));
    for &u in kinked {
        assert!(r.grad_b1[u] == 0.0, "unit {u} at the kink: ReLU'(0) = 0");
        assert!(r.grad_w1.row(u).iter().all(|&g| g == 0.0));
        gb1[u] = 0.0;
        gw1[u * cs..(u + 1) * cs].iter_mut().for_each(|g| *g = 0.0);
    }
    assert_eq!(gw1.len(), ch * cs);
    assert_close("grad.w1", &gw1, &flat(r.grad_w1.view().into_dyn()));
    assert_close("grad.b1", &gb1, &r.grad_b1.to_vec());
}

/// A random case whose pre-activations stay at least 2^-6 from the kink (the steps move them by far less).
fn smooth_case(seed: u64, dims: [usize; 4], ch: usize, ct: usize) -> Case {
    (seed..seed + 10_000)
        .map(|s| Case::random(s, dims, ch, ct))
        .find(|c| c.min_abs_preactivation(&[]) > 1.0 / 64.0 && some_unit_alive(c))
        .expect("a seed with no pre-activation near 0")
}

fn some_unit_alive(c: &Case) -> bool {
    let cwt = CwtCpu::new(CwtConfig::default()).unwrap();
    let r = cwt.forward_backward(c.student.view(), c.teacher.view(), &c.params()).unwrap();
    r.grad_student.iter().all(|g| g.abs() > 0.0) || r.grad_b1.iter().filter(|g| g.abs() > 0.0).count() > 1
}

#[test]
fn fixtures_pass_on_the_cpu_reference() {
    let mut seen = 0;
    for path in common::fixture_files() {
        let fixture = Fixture::load(&path).unwrap();
        if fixture.loss != LossKind::Cwt {
            continue;
        }
        seen += 1;
        let checks = verify::check(&fixture, &Backend::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(checks.len(), 6, "{}: loss and five gradients", path.display());
        for c in &checks {
            assert!(c.pass(), "{} {}: {:?} (tolerance {})", path.display(), c.output, c.comparison, c.tolerance);
        }
    }
    assert!(seen >= 1, "no cwt fixture in tests/fixtures");
}

#[test]
fn finite_differences_every_gradient() {
    for (seed, dims, ch, ct, normalize) in [
        (1, [2, 3, 2, 3], 4, 5, CwtNormalize::Batch),
        (2, [1, 4, 3, 2], 6, 3, CwtNormalize::Mean),
        (3, [2, 2, 1, 1], 2, 2, CwtNormalize::Batch),
    ] {
        let case = smooth_case(seed * 1000, dims, ch, ct);
        check_gradients(&case, CwtConfig { loss_weight: 0.75, normalize }, &[]);
    }
}

#[test]
fn finite_differences_with_dead_units() {
    let mut case = smooth_case(77, [2, 3, 3, 2], 5, 4);
    // Unit 1 always dead (its pre-activation far below 0), unit 3 exactly at the kink everywhere.
    case.b1[1] = -100.0;
    case.w1.row_mut(3).fill(0.0);
    case.b1[3] = 0.0;
    let cwt = CwtCpu::new(CwtConfig { loss_weight: 1.0, normalize: CwtNormalize::Batch }).unwrap();
    let r = cwt.forward_backward(case.student.view(), case.teacher.view(), &case.params()).unwrap();
    for u in [1, 3] {
        assert!(r.grad_w2.column(u).iter().all(|&g| g == 0.0), "Z = 0 for unit {u}: no W2 gradient");
    }
    check_gradients(&case, CwtConfig { loss_weight: 1.0, normalize: CwtNormalize::Batch }, &[3]);
}

#[test]
fn backward_scales_by_upstream_and_normalize_divides() {
    let case = Case::random(5, [2, 3, 4, 2], 4, 3);
    let batch = CwtCpu::new(CwtConfig { loss_weight: 2.0, normalize: CwtNormalize::Batch }).unwrap();
    let mean = CwtCpu::new(CwtConfig { loss_weight: 2.0, normalize: CwtNormalize::Mean }).unwrap();
    let fb = batch.forward_backward(case.student.view(), case.teacher.view(), &case.params()).unwrap();
    let bw = batch.backward(case.student.view(), case.teacher.view(), &case.params(), -3.0).unwrap();
    for (a, b) in fb.grad_student.iter().zip(bw.grad_student.iter()) {
        assert!((b - (-3.0) * a).abs() <= 1e-12 * a.abs().max(1e-300));
    }
    for (a, b) in fb.grad_w1.iter().zip(bw.grad_w1.iter()) {
        assert!((b - (-3.0) * a).abs() <= 1e-12 * a.abs().max(1e-300));
    }
    let lm = mean.forward(case.student.view(), case.teacher.view(), &case.params()).unwrap();
    // D = N versus N*Ct*H*W.
    assert!((fb.loss / lm - (3 * 4 * 2) as f64).abs() < 1e-9);
    assert_eq!(CwtConfig::default(), CwtConfig { loss_weight: 2e-5, normalize: CwtNormalize::Batch });
    assert_eq!(CwtShapes::new(512, 2048), CwtShapes { cs: 512, ch: 2048, ct: 2048 });
}

#[test]
fn bad_inputs_are_typed_errors() {
    let case = Case::random(9, [2, 3, 4, 5], 4, 6);
    let cwt = CwtCpu::new(CwtConfig::default()).unwrap();
    let run = |c: &Case| cwt.forward_backward(c.student.view(), c.teacher.view(), &c.params()).map(|_| ());
    assert!(run(&case).is_ok());
    let what = |r: Result<(), KdError>| match r {
        Err(KdError::ShapeMismatch { what, .. }) => what,
        Err(KdError::EmptyInput { what, .. }) => what,
        other => panic!("expected a shape error, got {other:?}"),
    };

    // W1 that does not match the student's channels.
    let mut c = case.clone();
    c.w1 = Array2::zeros((4, 5));
    assert_eq!(what(run(&c)), "student");
    // b1 of the wrong length.
    let mut c = case.clone();
    c.b1 = Array1::zeros(3);
    assert_eq!(what(run(&c)), "mlp.linear1.bias");
    // W2 whose input width is not Ch.
    let mut c = case.clone();
    c.w2 = Array2::zeros((6, 5));
    assert_eq!(what(run(&c)), "mlp.linear2.weight");
    // b2 of the wrong length.
    let mut c = case.clone();
    c.b2 = Array1::zeros(5);
    assert_eq!(what(run(&c)), "mlp.linear2.bias");
    // Teacher channels other than W2's rows.
    let mut c = case.clone();
    c.teacher = Array4::zeros([2, 5, 4, 5]);
    assert_eq!(what(run(&c)), "teacher");
    // Mismatched N, H, W.
    for dims in [[1, 6, 4, 5], [2, 6, 3, 5], [2, 6, 4, 4]] {
        let mut c = case.clone();
        c.teacher = Array4::zeros(dims);
        assert_eq!(what(run(&c)), "teacher", "{dims:?}");
    }
    // Zero dimensions.
    let mut c = case.clone();
    c.student = Array4::zeros([2, 3, 0, 5]);
    assert!(matches!(run(&c), Err(KdError::EmptyInput { .. })));
    let mut c = case.clone();
    c.w1 = Array2::zeros((0, 3));
    c.b1 = Array1::zeros(0);
    c.w2 = Array2::zeros((6, 0));
    assert!(matches!(run(&c), Err(KdError::EmptyInput { .. })));
    // Bad configuration.
    assert!(matches!(
        CwtCpu::new(CwtConfig { loss_weight: f64::NAN, ..CwtConfig::default() }),
        Err(KdError::InvalidParameter { .. })
    ));
}

/// `verify` refuses a CWT file without the MLP's parameters (a pixel-KD file relabelled `cwt`).
#[test]
fn verify_refuses_a_file_without_the_mlp() {
    let file = crate::fixtures::base_pixel_kd().set_meta("loss", "cwt");
    crate::fixtures::assert_verify_refuses("cwt", file, "missing tensor");
}
