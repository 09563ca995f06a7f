//! The IFVD CPU reference (`docs/losses.md §11`): the recorded fixtures, central finite differences of the
//! loss (the gradient through the prototypes included), properties that hold exactly in exact arithmetic,
//! and typed errors on bad input.

use crate::common;

use common::{max_abs, max_abs_diff, SplitMix64};
use kd_kernels::ifvd::{check_shapes, nearest_source, IfvdConfig, IfvdCpu, LabelDType, MAX_CLASSES};
use kd_kernels::KdError;
use ndarray::{Array3, Array4, ArrayView4, Axis};

fn ifvd_files() -> Vec<std::path::PathBuf> {
    common::family_fixtures("ifvd_")
}

#[test]
fn fixtures_pass_on_the_cpu_reference() {
    let files = ifvd_files();
    assert!(files.len() >= 10, "expected the recorded ifvd fixtures, found {}", files.len());
    let mut label_dtypes = Vec::new();
    for path in files {
        let (fixture, _) = common::passes_on_cpu(&path, &["loss", "grad.student"]);
        label_dtypes.push(fixture.tensors["labels"].label_dtype().unwrap());
    }
    for dtype in [LabelDType::U8, LabelDType::I32, LabelDType::I64] {
        assert!(label_dtypes.contains(&dtype), "no fixture has {dtype} labels");
    }
}

/// Features ~ N(0, 1) in f64 (the finite differences need no input rounding).
fn features(rng: &mut SplitMix64, dims: [usize; 4]) -> Array4<f64> {
    Array4::from_shape_fn(dims, |_| rng.normal())
}

/// Labels in `[0, classes)` with about one in six pixels `ignore`.
fn labels(rng: &mut SplitMix64, dims: [usize; 3], classes: usize, ignore: i64) -> Array3<i64> {
    Array3::from_shape_fn(dims, |_| if rng.below(6) == 0 { ignore } else { rng.below(classes) as i64 })
}

/// One scenario of the gradient checks and properties.
struct Scenario {
    name: &'static str,
    student: Array4<f64>,
    teacher: Array4<f64>,
    labels: Array3<i64>,
    config: IfvdConfig,
}

fn scenarios() -> Vec<Scenario> {
    let mut rng = SplitMix64::new(0x1f_d0);
    let mut out = Vec::new();
    // Labels at a higher resolution than the features (a non-integer ratio), 255 ignored, class 4 of 5 absent.
    let mut l = labels(&mut rng, [2, 7, 11], 4, 255);
    l[[1, 0, 0]] = 3;
    out.push(Scenario {
        name: "labels 7x11 -> 3x5, Cs 4 != Ct 6, ignore 255, class 4 absent",
        student: features(&mut rng, [2, 4, 3, 5]),
        teacher: features(&mut rng, [2, 6, 3, 5]),
        labels: l,
        config: IfvdConfig { num_classes: 5, loss_weight: 2.5 },
    });
    // Labels coarser than the features, -1 ignored, a class present in the second image only.
    let mut l = labels(&mut rng, [2, 2, 3], 2, -1);
    l[[1, 1, 2]] = 2;
    out.push(Scenario {
        name: "labels 2x3 -> 5x4, ignore -1, class 2 in image 1 only",
        student: features(&mut rng, [2, 3, 5, 4]),
        teacher: features(&mut rng, [2, 3, 5, 4]),
        labels: l,
        config: IfvdConfig::new(3),
    });
    // Same resolution, one class per image covering most pixels, many labels >= num_classes.
    out.push(Scenario {
        name: "same resolution, labels up to 9 with num_classes 2",
        student: features(&mut rng, [1, 5, 4, 3]),
        teacher: features(&mut rng, [1, 2, 4, 3]),
        labels: Array3::from_shape_fn((1, 4, 3), |(_, h, w)| ((h * 3 + w) % 10) as i64),
        config: IfvdConfig { num_classes: 2, loss_weight: -0.5 },
    });
    out
}

fn loss_of(cpu: &IfvdCpu, s: ArrayView4<'_, f64>, sc: &Scenario) -> f64 {
    cpu.forward(s, sc.teacher.view(), sc.labels.view()).unwrap().loss
}

#[test]
fn gradient_matches_central_differences() {
    for sc in scenarios() {
        let cpu = IfvdCpu::new(sc.config).unwrap();
        let out = cpu.forward_backward(sc.student.view(), sc.teacher.view(), sc.labels.view()).unwrap();
        assert!(out.loss > 0.0 || sc.config.loss_weight < 0.0, "{}: loss {}", sc.name, out.loss);
        let h = 1e-6;
        let mut work = sc.student.clone();
        let mut numeric = Array4::<f64>::zeros(sc.student.raw_dim());
        for (idx, &v) in sc.student.indexed_iter() {
            work[idx] = v + h;
            let plus = loss_of(&cpu, work.view(), &sc);
            work[idx] = v - h;
            let minus = loss_of(&cpu, work.view(), &sc);
            work[idx] = v;
            numeric[idx] = (plus - minus) / (2.0 * h);
        }
        let analytic: Vec<f64> = out.grad_student.iter().copied().collect();
        let numeric: Vec<f64> = numeric.iter().copied().collect();
        let err = max_abs_diff(&analytic, &numeric) / max_abs(&numeric);
        assert!(err < 1e-7, "{}: relative gradient error {err:e}", sc.name);
    }
}

#[test]
fn prototype_path_carries_part_of_the_gradient() {
    // Were the prototypes detached, the gradient would be the direct term alone; the finite differences above
    // would then fail. Here: the gradient of a pixel also moves when another pixel of its class changes.
    let sc = &scenarios()[0];
    let cpu = IfvdCpu::new(sc.config).unwrap();
    let base = cpu.forward_backward(sc.student.view(), sc.teacher.view(), sc.labels.view()).unwrap();
    let mut moved = sc.student.clone();
    moved[[0, 0, 0, 0]] += 0.5;
    let other = cpu.forward_backward(moved.view(), sc.teacher.view(), sc.labels.view()).unwrap();
    let changed = (0..3)
        .flat_map(|h| (0..5).map(move |w| (h, w)))
        .filter(|&(h, w)| (h, w) != (0, 0))
        .any(|(h, w)| (0..4).any(|c| base.grad_student[[0, c, h, w]] != other.grad_student[[0, c, h, w]]));
    assert!(changed);
}

#[test]
fn forward_backward_and_backward_agree() {
    for sc in scenarios() {
        let cpu = IfvdCpu::new(sc.config).unwrap();
        let (s, t, l) = (sc.student.view(), sc.teacher.view(), sc.labels.view());
        let fb = cpu.forward_backward(s, t, l).unwrap();
        let f = cpu.forward(s, t, l).unwrap();
        assert_eq!(f.loss, fb.loss, "{}", sc.name);
        assert_eq!(f.grad_student.len(), 0);
        assert_eq!(f.cos_student, fb.cos_student);
        let b = cpu.backward(s, t, l, -3.0).unwrap();
        assert_eq!(b.loss, fb.loss);
        let scaled: Vec<f64> = fb.grad_student.iter().map(|g| -3.0 * g).collect();
        let got: Vec<f64> = b.grad_student.iter().copied().collect();
        assert!(max_abs_diff(&got, &scaled) <= 1e-15 * max_abs(&scaled), "{}", sc.name);
        // The loss is the weighted mean of the squared cosine differences.
        let mean = (&fb.cos_student - &fb.cos_teacher).mapv(|d| d * d).mean().unwrap();
        assert!((fb.loss - sc.config.loss_weight * mean).abs() <= 1e-15 * fb.loss.abs(), "{}", sc.name);
    }
}

#[test]
fn identical_features_give_exactly_zero() {
    for sc in scenarios() {
        let cpu = IfvdCpu::new(sc.config).unwrap();
        let out = cpu.forward_backward(sc.student.view(), sc.student.view(), sc.labels.view()).unwrap();
        assert_eq!(out.loss, 0.0, "{}", sc.name);
        assert!(out.grad_student.iter().all(|&g| g == 0.0), "{}", sc.name);
    }
}

#[test]
fn ignored_pixels_have_cosine_one_and_no_direct_gradient() {
    // An ignored pixel is its own prototype: cos = 1 for student and teacher, so it adds nothing to the loss;
    // its gradient is the direct term of cos(F, F) (zero) and no prototype term.
    let sc = &scenarios()[0];
    let cpu = IfvdCpu::new(sc.config).unwrap();
    let out = cpu.forward_backward(sc.student.view(), sc.teacher.view(), sc.labels.view()).unwrap();
    let s = sc.student.shape();
    let mut seen = 0;
    for h in 0..s[2] {
        for w in 0..s[3] {
            for n in 0..s[0] {
                let label = sc.labels[[n, nearest_source(h, 7, 3), nearest_source(w, 11, 5)]];
                if label == 255 {
                    seen += 1;
                    assert!((out.cos_student[[n, h, w]] - 1.0).abs() < 1e-15);
                    assert!((out.cos_teacher[[n, h, w]] - 1.0).abs() < 1e-15);
                    let g = out.grad_student.index_axis(Axis(0), n);
                    assert!((0..s[1]).all(|c| g[[c, h, w]].abs() < 1e-15), "pixel ({n}, {h}, {w})");
                }
            }
        }
    }
    assert!(seen > 0, "the scenario has no ignored pixel after resizing");
}

/// Multiplies image `n` of `x` by `scales[n]`.
fn scale_images(x: &Array4<f64>, scales: &[f64]) -> Array4<f64> {
    let mut y = x.clone();
    for (n, mut img) in y.axis_iter_mut(Axis(0)).enumerate() {
        img.mapv_inplace(|v| v * scales[n]);
    }
    y
}

#[test]
fn teacher_scale_per_image_and_channel_order_do_not_matter() {
    // Scaling a teacher image by a != 0 scales its features and prototypes alike: every cosine is unchanged
    // (a negative a flips both signs). Permuting the teacher's channels permutes both vectors of each dot
    // product. Neither holds per pixel or per channel: a per-pixel scale changes the prototypes' mix.
    for sc in scenarios() {
        let cpu = IfvdCpu::new(sc.config).unwrap();
        let base = cpu.forward_backward(sc.student.view(), sc.teacher.view(), sc.labels.view()).unwrap();
        let scales = [3.5, -0.25];
        let teacher = scale_images(&sc.teacher, &scales[..sc.teacher.shape()[0]]);
        let scaled = cpu.forward_backward(sc.student.view(), teacher.view(), sc.labels.view()).unwrap();
        assert!((scaled.loss - base.loss).abs() <= 1e-13 * base.loss.abs(), "{}", sc.name);
        let (a, b): (Vec<f64>, Vec<f64>) =
            (base.grad_student.iter().copied().collect(), scaled.grad_student.iter().copied().collect());
        assert!(max_abs_diff(&a, &b) <= 1e-12 * max_abs(&a), "{}", sc.name);
        let mut permuted = sc.teacher.clone();
        let ct = permuted.shape()[1];
        for c in 0..ct {
            permuted.index_axis_mut(Axis(1), c).assign(&sc.teacher.index_axis(Axis(1), ct - 1 - c));
        }
        let p = cpu.forward(sc.student.view(), permuted.view(), sc.labels.view()).unwrap();
        assert!((p.loss - base.loss).abs() <= 1e-13 * base.loss.abs(), "{}", sc.name);
        // A per-pixel scale is not a symmetry (a check that the test above can fail).
        let mut uneven = sc.teacher.clone();
        uneven.index_axis_mut(Axis(2), 0).mapv_inplace(|v| 4.0 * v);
        let u = cpu.forward(sc.student.view(), uneven.view(), sc.labels.view()).unwrap();
        assert!((u.loss - base.loss).abs() > 1e-6 * base.loss.abs(), "{}", sc.name);
    }
}

#[test]
fn student_scale_per_image_leaves_the_loss_and_divides_the_gradient() {
    // L(a F) = L(F) for a != 0 per image, so grad L(a F) = grad L(F) / a.
    for sc in scenarios() {
        let cpu = IfvdCpu::new(sc.config).unwrap();
        let base = cpu.forward_backward(sc.student.view(), sc.teacher.view(), sc.labels.view()).unwrap();
        let scales = [-2.0, 0.125];
        let n = sc.student.shape()[0];
        let student = scale_images(&sc.student, &scales[..n]);
        let scaled = cpu.forward_backward(student.view(), sc.teacher.view(), sc.labels.view()).unwrap();
        assert!((scaled.loss - base.loss).abs() <= 1e-13 * base.loss.abs(), "{}", sc.name);
        let inv: Vec<f64> = scales[..n].iter().map(|a| 1.0 / a).collect();
        let expected: Vec<f64> = scale_images(&base.grad_student, &inv).iter().copied().collect();
        let got: Vec<f64> = scaled.grad_student.iter().copied().collect();
        assert!(max_abs_diff(&got, &expected) <= 1e-12 * max_abs(&expected), "{}", sc.name);
    }
}

#[test]
fn classes_outside_the_range_are_ignored_like_255() {
    // Labels >= num_classes and negative labels are all "ignore": replacing every one of them with 255 changes
    // nothing.
    let sc = &scenarios()[2];
    let cpu = IfvdCpu::new(sc.config).unwrap();
    let base = cpu.forward_backward(sc.student.view(), sc.teacher.view(), sc.labels.view()).unwrap();
    let k = sc.config.num_classes as i64;
    for replacement in [255, -1, i64::MAX, i64::MIN] {
        let l = sc.labels.mapv(|v| if (0..k).contains(&v) { v } else { replacement });
        let other = cpu.forward_backward(sc.student.view(), sc.teacher.view(), l.view()).unwrap();
        assert_eq!(other.loss, base.loss);
        assert_eq!(other.grad_student, base.grad_student);
    }
}

#[test]
fn nearest_source_is_the_identity_or_a_clamped_floor() {
    for (input, output) in [(7, 7), (3, 6), (7, 3), (11, 5), (2, 5), (1, 9), (9, 1), (1025, 129)] {
        for dst in 0..output {
            let src = nearest_source(dst, input, output);
            assert!(src < input, "{input} -> {output}: {dst} -> {src}");
            let exact = dst * input / output; // floor of the exact ratio
                                              // f32 rounding of input/output moves a floor by at most one.
            assert!(src.abs_diff(exact) <= 1, "{input} -> {output}: {dst} -> {src}, exact {exact}");
        }
    }
}

#[test]
fn bad_input_gives_typed_errors() {
    let sc = &scenarios()[0];
    let (s, t, l) = (sc.student.view(), sc.teacher.view(), sc.labels.view());
    for classes in [0, MAX_CLASSES + 1] {
        let e = IfvdCpu::new(IfvdConfig::new(classes)).unwrap_err();
        assert!(matches!(e, KdError::InvalidParameter { name: "num_classes", .. }), "{e}");
    }
    let e = IfvdCpu::new(IfvdConfig { num_classes: 3, loss_weight: f64::NAN }).unwrap_err();
    assert!(matches!(e, KdError::InvalidParameter { name: "loss_weight", .. }), "{e}");
    let cpu = IfvdCpu::new(sc.config).unwrap();
    // Teacher of another height.
    let tall = Array4::<f64>::zeros((2, 6, 4, 5));
    let e = cpu.forward(s, tall.view(), l).unwrap_err();
    assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
    // Teacher of another batch.
    let e = cpu.forward(s, t.slice_axis(Axis(0), (0..1).into()), l).unwrap_err();
    assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
    // Labels for one image of two.
    let e = cpu.forward(s, t, l.slice_axis(Axis(0), (0..1).into())).unwrap_err();
    assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
    // Empty labels and empty features.
    let e = cpu.forward(s, t, l.slice_axis(Axis(2), (0..0).into())).unwrap_err();
    assert!(matches!(e, KdError::EmptyInput { what: "labels", .. }), "{e}");
    let e = cpu.forward(s.slice_axis(Axis(1), (0..0).into()), t, l).unwrap_err();
    assert!(matches!(e, KdError::EmptyInput { .. }), "{e}");
    // Labels of rank 2.
    let e = check_shapes(&[2, 4, 3, 5], &[2, 6, 3, 5], &[2, 7]).unwrap_err();
    assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
}

#[test]
fn label_dtypes_decode_exactly() {
    assert_eq!(LabelDType::U8.decode_le(&[0, 7, 255]).unwrap(), vec![0, 7, 255]);
    let i32s: Vec<u8> = [-1i32, 18, i32::MAX].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(LabelDType::I32.decode_le(&i32s).unwrap(), vec![-1, 18, i32::MAX as i64]);
    let i64s: Vec<u8> = [i64::MIN, 255].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(LabelDType::I64.decode_le(&i64s).unwrap(), vec![i64::MIN, 255]);
    assert!(LabelDType::I32.decode_le(&[1, 2, 3]).is_none());
    for d in [LabelDType::U8, LabelDType::I32, LabelDType::I64] {
        assert_eq!(LabelDType::parse(d.name()), Some(d));
    }
    assert_eq!(LabelDType::parse("F32"), None);
}
