//! The SKD CPU reference (`docs/losses.md §9`): the recorded fixtures, central differences of the loss, the
//! Gram form against the `P x P` similarities built directly, exact zeros for identical inputs, the max pool's
//! tie rule, symmetries, and typed errors.

use crate::common;

use common::relation::{
    self, assert_calls_agree, assert_exactly_zero, central_differences, dot, fixtures_pass, normal4, pixels, rel_err,
    Scenario,
};
use common::SplitMix64;
use kd_kernels::skd::{check_shapes, SkdConfig, SkdCpu, SkdPool};
use kd_kernels::{DType, KdError};
use ndarray::{Array4, Axis};

#[test]
fn fixtures_pass_on_the_cpu_reference() {
    let fixtures = fixtures_pass("skd_");
    assert!(fixtures.len() >= 9, "expected the recorded skd fixtures, found {}", fixtures.len());
    let dtypes: Vec<DType> = fixtures.iter().map(|(_, f)| f.tensors["student"].dtype.unwrap()).collect();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        assert!(dtypes.contains(&dtype), "no {dtype} fixture");
    }
    for pool in ["1", "2"] {
        assert!(fixtures.iter().any(|(_, f)| f.metadata["pool"] == pool), "no fixture with pool {pool}");
    }
    assert!(fixtures.iter().any(|(_, f)| f.tensors["student"].shape[1] != f.tensors["teacher"].shape[1]));
}

/// The loss as the spec writes it: pooled, normalised pixels, both `P x P` similarity matrices, the mean
/// squared difference.
fn direct_loss(s: &Array4<f64>, t: &Array4<f64>, config: SkdConfig) -> f64 {
    let (k, n) = (config.pool.window(), s.shape()[0]);
    let mut sum = 0.0;
    let mut count = 0usize;
    for img in 0..n {
        let (ps, pt) = (pixels(s, img, k, true), pixels(t, img, k, true));
        for p in 0..ps.len() {
            for q in 0..ps.len() {
                sum += (dot(&ps[p], &ps[q]) - dot(&pt[p], &pt[q])).powi(2);
                count += 1;
            }
        }
    }
    config.loss_weight * sum / count as f64
}

fn scenarios() -> Vec<Scenario<SkdConfig>> {
    let mut rng = SplitMix64::new(0x5cd9);
    let negative = SkdConfig { loss_weight: -0.7, pool: SkdPool::None };
    let weighted = SkdConfig { loss_weight: 3.0, pool: SkdPool::Max2x2 };
    let mut out = relation::scenarios(
        &mut rng,
        [
            ("pool 2 on odd sizes, Cs 3 != Ct 4", [2, 3, 5, 7], [2, 4, 5, 7], SkdConfig::default()),
            ("pool 1, Cs 4 != Ct 2, negative weight", [1, 4, 3, 4], [1, 2, 3, 4], negative),
            ("pool 2 on H 1", [2, 3, 1, 5], [2, 3, 1, 5], weighted),
        ],
    );
    let teacher = normal4(&mut rng, [2, 3, 4, 3]);
    let noise = normal4(&mut rng, [2, 3, 4, 3]);
    out.push(Scenario {
        name: "student = teacher + 1e-4 noise, pool 1",
        student: &teacher + &(noise * 1e-4),
        teacher,
        config: SkdConfig { loss_weight: 1.0, pool: SkdPool::None },
    });
    out
}

#[test]
fn gram_form_equals_the_direct_similarities() {
    // Also where the student is close to its teacher and the Gram form's three terms nearly cancel: the f64
    // reference keeps 1e-9 of the (tiny) loss there.
    for sc in scenarios() {
        let got = SkdCpu::new(sc.config).unwrap().forward(sc.student.view(), sc.teacher.view()).unwrap();
        let want = direct_loss(&sc.student, &sc.teacher, sc.config);
        assert!((got - want).abs() <= 1e-9 * want.abs(), "{}: {got} vs {want}", sc.name);
    }
}

#[test]
fn gradient_matches_central_differences() {
    for sc in scenarios() {
        let cpu = SkdCpu::new(sc.config).unwrap();
        let out = cpu.forward_backward(sc.student.view(), sc.teacher.view()).unwrap();
        let numeric = central_differences(&sc.student, None, 1e-6, |s| cpu.forward(s, sc.teacher.view()).unwrap());
        let analytic: Vec<f64> = out.grad_student.iter().copied().collect();
        let err = rel_err(&analytic, &numeric);
        // The close scenario's loss is ~1e-8: its differences keep fewer digits.
        let tol = if sc.name.starts_with("student = teacher") { 1e-5 } else { 1e-7 };
        assert!(err < tol, "{}: relative gradient error {err:e}", sc.name);
        assert!(out.grad_teacher.is_none());
    }
}

#[test]
fn identical_inputs_give_exactly_zero() {
    let mut rng = SplitMix64::new(77);
    for (dims, pool) in [([2, 5, 7, 9], SkdPool::Max2x2), ([1, 3, 6, 4], SkdPool::None), ([3, 1, 2, 3], SkdPool::None)]
    {
        let x = normal4(&mut rng, dims);
        let x32 = x.mapv(|v| v as f32);
        let cpu = SkdCpu::new(SkdConfig { loss_weight: 2.5, pool }).unwrap();
        for out in
            [cpu.forward_backward(x.view(), x.view()).unwrap(), cpu.forward_backward(x32.view(), x32.view()).unwrap()]
        {
            assert_exactly_zero(&format!("{dims:?}"), &out);
        }
    }
}

#[test]
fn max_pool_ties_send_the_gradient_to_the_first_maximum() {
    // Channel 0 is constant inside every window (a tie of up to four values); channel 1 is not, so the pixel
    // directions and the gradient are not trivial. PyTorch's max pool takes the first maximum in row-major
    // order: only the window's top-left element of channel 0 gets a gradient.
    let mut rng = SplitMix64::new(5);
    let mut s = normal4(&mut rng, [1, 2, 5, 5]);
    for h in 0..5 {
        for w in 0..5 {
            s[[0, 0, h, w]] = 1.0 + (h / 2 * 3 + w / 2) as f64 * 0.25;
        }
    }
    let t = normal4(&mut rng, [1, 3, 5, 5]);
    let out = SkdCpu::new(SkdConfig::default()).unwrap().forward_backward(s.view(), t.view()).unwrap();
    for h in 0..5 {
        for w in 0..5 {
            let g = out.grad_student[[0, 0, h, w]];
            if h % 2 == 0 && w % 2 == 0 {
                assert!(g != 0.0, "({h}, {w})");
            } else {
                assert_eq!(g, 0.0, "({h}, {w})");
            }
        }
    }
}

#[test]
fn forward_backward_and_backward_agree() {
    for sc in scenarios() {
        let cpu = SkdCpu::new(sc.config).unwrap();
        let (s, t) = (sc.student.view(), sc.teacher.view());
        let (f, fb, b) =
            (cpu.forward(s, t).unwrap(), cpu.forward_backward(s, t).unwrap(), cpu.backward(s, t, -1.5).unwrap());
        assert_calls_agree(sc.name, f, &fb, &b, -1.5);
    }
}

#[test]
fn pixel_scale_channel_order_and_batch_order_do_not_matter() {
    // Without pooling a positive scale per pixel leaves the normalised features (so the loss) unchanged and
    // divides that pixel's gradient; permuting the teacher's channels permutes both vectors of each dot
    // product; reordering the images reorders the gradient.
    let mut rng = SplitMix64::new(31);
    let (s, t) = (normal4(&mut rng, [2, 3, 4, 5]), normal4(&mut rng, [2, 4, 4, 5]));
    let cpu = SkdCpu::new(SkdConfig { loss_weight: 1.0, pool: SkdPool::None }).unwrap();
    let base = cpu.forward_backward(s.view(), t.view()).unwrap();
    let scale = Array4::from_shape_fn([2, 1, 4, 5], |(n, _, h, w)| 0.5 + (n + 2 * h + 3 * w) as f64 * 0.1);
    let scaled = cpu.forward_backward((&s * &scale).view(), (&t * &scale).view()).unwrap();
    assert!((scaled.loss - base.loss).abs() <= 1e-13 * base.loss);
    let expected: Vec<f64> = (&base.grad_student / &scale).iter().copied().collect();
    assert!(rel_err(&scaled.grad_student.iter().copied().collect::<Vec<_>>(), &expected) <= 1e-12);
    let mut permuted = t.clone();
    permuted.invert_axis(Axis(1));
    let p = cpu.forward(s.view(), permuted.view()).unwrap();
    assert!((p - base.loss).abs() <= 1e-13 * base.loss);
    let (mut s2, mut t2) = (s.clone(), t.clone());
    s2.invert_axis(Axis(0));
    t2.invert_axis(Axis(0));
    let swapped = cpu.forward_backward(s2.view(), t2.view()).unwrap();
    assert!((swapped.loss - base.loss).abs() <= 1e-13 * base.loss);
    let mut g = swapped.grad_student.clone();
    g.invert_axis(Axis(0));
    assert!(
        rel_err(&g.iter().copied().collect::<Vec<_>>(), &base.grad_student.iter().copied().collect::<Vec<_>>())
            <= 1e-13
    );
    // A spatial shift of the teacher alone is not a symmetry (a check that the comparisons above can fail).
    let mut shifted = t.clone();
    shifted.invert_axis(Axis(3));
    let u = cpu.forward(s.view(), shifted.view()).unwrap();
    assert!((u - base.loss).abs() > 1e-6 * base.loss);
}

#[test]
fn pooled_dims_round_up() {
    let official = SkdConfig::default();
    assert_eq!(official.pooled_dims(9, 11), (5, 6));
    assert_eq!(official.pooled_dims(1, 1), (1, 1));
    assert_eq!(official.pooled_dims(64, 128), (32, 64));
    assert_eq!(SkdConfig { pool: SkdPool::None, ..official }.pooled_dims(9, 11), (9, 11));
    assert_eq!(SkdPool::from_window(2), Ok(SkdPool::Max2x2));
    assert_eq!(SkdPool::from_window(1), Ok(SkdPool::None));
    for pool in [SkdPool::Max2x2, SkdPool::None] {
        assert_eq!(SkdPool::from_window(pool.window()), Ok(pool));
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    for k in [0, 3, 4] {
        let e = SkdPool::from_window(k).unwrap_err();
        assert!(matches!(e, KdError::InvalidParameter { name: "pool", .. }), "{e}");
    }
    for w in [f64::NAN, f64::INFINITY] {
        let e = SkdCpu::new(SkdConfig { loss_weight: w, ..SkdConfig::default() }).unwrap_err();
        assert!(matches!(e, KdError::InvalidParameter { name: "loss_weight", .. }), "{e}");
    }
    let cpu = SkdCpu::new(SkdConfig::default()).unwrap();
    let s = Array4::<f32>::zeros((2, 3, 4, 5));
    for bad in [[2, 3, 5, 5], [1, 3, 4, 5], [2, 3, 4, 6]] {
        let t = Array4::<f32>::zeros(bad);
        let e = cpu.forward(s.view(), t.view()).unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{bad:?}: {e}");
    }
    let empty = Array4::<f32>::zeros((2, 0, 4, 5));
    let e = cpu.forward_backward(empty.view(), s.view()).unwrap_err();
    assert!(matches!(e, KdError::EmptyInput { what: "student", .. }), "{e}");
    let e = cpu.forward(s.view(), empty.view()).unwrap_err();
    assert!(matches!(e, KdError::EmptyInput { what: "teacher", .. }), "{e}");
    let e = check_shapes(&[2, 3, 4], &[2, 3, 4, 5]).unwrap_err();
    assert!(matches!(e, KdError::WrongRank { what: "student", expected: 4, got: 3 }), "{e}");
    // Channels may differ.
    assert_eq!(check_shapes(&[2, 3, 4, 5], &[2, 7, 4, 5]).unwrap().ct, 7);
}
