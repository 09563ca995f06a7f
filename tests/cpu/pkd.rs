//! The PKD CPU reference (`docs/losses.md §7`): the recorded fixtures, central finite differences over
//! several levels, properties (identical inputs, affine maps of the teacher, constant channels, levels add up)
//! and typed errors on bad inputs.

use crate::common;

use common::SplitMix64;
use kd_kernels::fixture::{Backend, Fixture};
use kd_kernels::pkd::{PkdConfig, PkdCpu};
use kd_kernels::verify;
use kd_kernels::KdError;
use ndarray::{Array4, ArrayView4};

fn pkd_files() -> Vec<std::path::PathBuf> {
    common::family_fixtures("pkd_")
}

#[test]
fn fixtures_pass_on_the_cpu_reference() {
    let files = pkd_files();
    assert_eq!(files.len(), 5, "expected the 5 recorded pkd fixtures");
    for path in files {
        let (fixture, checks) = common::passes_on_cpu(&path, &["loss"]);
        let levels: usize = fixture.metadata["num_levels"].parse().unwrap();
        assert!(levels >= 2, "{}: one level only", path.display());
        // Every level's gradient is checked, except where an official one was not finite (the file names those).
        let nan_levels = fixture.metadata.get("official_grad_nan_levels").cloned().unwrap_or_default();
        for l in 0..levels {
            let name = format!("grad.student.{l}");
            let skipped = nan_levels.split(',').any(|v| v == l.to_string());
            assert_eq!(checks.iter().any(|c| c.output == name), !skipped, "{}: {name}", path.display());
        }
    }
}

/// A level whose channels have different means and scales, so that the standardisation matters.
fn features(rng: &mut SplitMix64, dims: [usize; 4]) -> Array4<f64> {
    let scale: Vec<f64> = (0..dims[1]).map(|_| 0.25 + 3.0 * rng.uniform()).collect();
    let shift: Vec<f64> = (0..dims[1]).map(|_| 2.0 * rng.normal()).collect();
    Array4::from_shape_fn(dims, |(_, c, _, _)| rng.normal() * scale[c] + shift[c])
}

fn views(levels: &[Array4<f64>]) -> Vec<ArrayView4<'_, f64>> {
    levels.iter().map(|a| a.view()).collect()
}

fn assert_close(what: &str, got: &Array4<f64>, want: &Array4<f64>, rtol: f64) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && scale.is_finite(), "{what}: degenerate reference");
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst <= rtol * scale, "{what}: max err {worst:e}, relative {:e}", worst / scale);
}

/// Central differences of the loss in every student value of every level (f64 inputs, step 1e-6).
fn numeric_grads(cpu: &PkdCpu, student: &[Array4<f64>], teacher: &[Array4<f64>]) -> Vec<Array4<f64>> {
    let mut work: Vec<Array4<f64>> = student.to_vec();
    let mut out = Vec::new();
    for (l, level) in student.iter().enumerate() {
        let mut g = Array4::<f64>::zeros(level.raw_dim());
        for (idx, &v) in level.indexed_iter() {
            let h = 1e-6 * v.abs().max(1.0);
            work[l][idx] = v + h;
            let plus = cpu.forward(&views(&work), &views(teacher)).unwrap();
            work[l][idx] = v - h;
            let minus = cpu.forward(&views(&work), &views(teacher)).unwrap();
            work[l][idx] = v;
            g[idx] = (plus - minus) / (2.0 * h);
        }
        out.push(g);
    }
    out
}

#[test]
fn finite_differences_over_several_levels() {
    let mut rng = SplitMix64::new(71);
    let layouts: [&[[usize; 4]]; 3] = [
        &[[2, 3, 4, 5], [2, 2, 3, 3], [2, 4, 1, 2]],
        &[[1, 4, 3, 2], [1, 3, 1, 2]], // the last level has the fewest values allowed: 2 per channel
        &[[3, 2, 5, 1]],
    ];
    for (i, layout) in layouts.iter().enumerate() {
        let s: Vec<Array4<f64>> = layout.iter().map(|&d| features(&mut rng, d)).collect();
        let t: Vec<Array4<f64>> = layout.iter().map(|&d| features(&mut rng, d)).collect();
        for loss_weight in [1.0, 6.0] {
            let cpu = PkdCpu::new(PkdConfig { loss_weight }).unwrap();
            let r = cpu.forward_backward(&views(&s), &views(&t)).unwrap();
            let numeric = numeric_grads(&cpu, &s, &t);
            let overall = numeric.iter().flat_map(|g| g.iter()).fold(0.0f64, |m, v| m.max(v.abs()));
            for (l, (a, n)) in r.grad_student.iter().zip(&numeric).enumerate() {
                let what = format!("layout {i} w {loss_weight} level {l}");
                if layout[l][0] * layout[l][2] * layout[l][3] == 2 {
                    // Two values per channel standardise to +-1/sqrt(2) whatever they are: the gradient is of
                    // the order of the eps, below the differences' rounding noise. Hold it to the other levels'
                    // scale, and check that it is that small.
                    let worst = a.iter().zip(n).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                    assert!(worst <= 1e-6 * overall, "{what}: max err {worst:e} against {overall:e}");
                    assert!(a.iter().all(|v| v.abs() <= 1e-4 * overall), "{what}: not about 0");
                } else {
                    assert_close(&what, a, n, 1e-6);
                }
            }
            // `backward` scales by the upstream gradient and fills the same loss.
            let b = cpu.backward(&views(&s), &views(&t), -2.5).unwrap();
            assert_eq!(b.loss, r.loss);
            // Held to the largest gradient of all levels (an M = 2 level's is rounding-sized).
            for (gb, g) in b.grad_student.iter().zip(&r.grad_student) {
                let worst = gb.iter().zip(g).map(|(x, y)| (x + 2.5 * y).abs()).fold(0.0, f64::max);
                assert!(worst <= 1e-14 * 2.5 * overall, "backward: max err {worst:e} against {overall:e}");
            }
        }
    }
}

#[test]
fn identical_inputs_give_exactly_zero() {
    let mut rng = SplitMix64::new(72);
    let s: Vec<Array4<f64>> = [[2, 3, 5, 4], [2, 5, 2, 3]].iter().map(|&d| features(&mut rng, d)).collect();
    let r = PkdCpu::new(PkdConfig { loss_weight: 6.0 }).unwrap().forward_backward(&views(&s), &views(&s)).unwrap();
    assert_eq!(r.loss, 0.0);
    assert!(r.grad_student.iter().all(|g| g.iter().all(|&v| v == 0.0)));
}

#[test]
fn invariant_to_a_positive_per_channel_affine_map_of_the_teacher() {
    let mut rng = SplitMix64::new(73);
    let layout = [[2, 4, 3, 5], [2, 3, 2, 2]];
    let s: Vec<Array4<f64>> = layout.iter().map(|&d| features(&mut rng, d)).collect();
    let t: Vec<Array4<f64>> = layout.iter().map(|&d| features(&mut rng, d)).collect();
    let mapped: Vec<Array4<f64>> = t
        .iter()
        .map(|x| {
            let a: Vec<f64> = (0..x.dim().1).map(|_| 0.5 + 2.5 * rng.uniform()).collect();
            let b: Vec<f64> = (0..x.dim().1).map(|_| 5.0 * rng.normal()).collect();
            Array4::from_shape_fn(x.raw_dim(), |(n, c, h, w)| a[c] * x[[n, c, h, w]] + b[c])
        })
        .collect();
    let cpu = PkdCpu::new(PkdConfig::default()).unwrap();
    let r = cpu.forward_backward(&views(&s), &views(&t)).unwrap();
    let m = cpu.forward_backward(&views(&s), &views(&mapped)).unwrap();
    // Only the eps on the std (1e-6 against stds of about 1) tells the two apart.
    assert!((r.loss - m.loss).abs() <= 1e-5 * r.loss, "{} vs {}", r.loss, m.loss);
    for (a, b) in m.grad_student.iter().zip(&r.grad_student) {
        assert_close("affine teacher", a, b, 1e-5);
    }
    // A negative scale flips the correlation: not invariant.
    let flipped: Vec<Array4<f64>> = t.iter().map(|x| x.mapv(|v| -v)).collect();
    let f = cpu.forward(&views(&s), &views(&flipped)).unwrap();
    assert!((f - r.loss).abs() > 1e-2 * r.loss, "{f} vs {}", r.loss);
}

#[test]
fn levels_add_up_and_are_independent() {
    let mut rng = SplitMix64::new(74);
    let layout = [[2, 3, 4, 3], [2, 6, 2, 2], [2, 2, 1, 3]];
    let s: Vec<Array4<f64>> = layout.iter().map(|&d| features(&mut rng, d)).collect();
    let t: Vec<Array4<f64>> = layout.iter().map(|&d| features(&mut rng, d)).collect();
    let cpu = PkdCpu::new(PkdConfig { loss_weight: 2.0 }).unwrap();
    let all = cpu.forward_backward(&views(&s), &views(&t)).unwrap();
    let mut sum = 0.0;
    for l in 0..layout.len() {
        let one = cpu.forward_backward(&views(&s[l..=l]), &views(&t[l..=l])).unwrap();
        assert_eq!(one.loss, all.level_losses[l]);
        assert_eq!(one.grad_student[0], all.grad_student[l]);
        sum += one.loss;
    }
    assert!((sum - all.loss).abs() <= 1e-15 * all.loss);
}

#[test]
fn constant_student_channel_has_a_finite_gradient() {
    let mut rng = SplitMix64::new(75);
    let dims = [2, 3, 4, 5];
    let mut s = features(&mut rng, dims);
    let t = features(&mut rng, dims);
    // 0.1 is not a dyadic value: a naive mean of 40 copies would not be exactly 0.1.
    s.slice_mut(ndarray::s![.., 1, .., ..]).fill(0.1);
    let cpu = PkdCpu::new(PkdConfig::default()).unwrap();
    let r = cpu.forward_backward(&[s.view()], &[t.view()]).unwrap();
    assert!(r.loss.is_finite() && r.grad_student[0].iter().all(|v| v.is_finite()));
    // x_hat = 0 in that channel whatever the constant: the loss does not depend on it.
    let mut s2 = s.clone();
    s2.slice_mut(ndarray::s![.., 1, .., ..]).fill(-7.0);
    assert_eq!(cpu.forward(&[s2.view()], &[t.view()]).unwrap(), r.loss);
    // The other channels are smooth: finite differences there.
    let numeric = &numeric_grads(&cpu, std::slice::from_ref(&s), std::slice::from_ref(&t))[0];
    for c in [0, 2] {
        let got = r.grad_student[0].slice(ndarray::s![.., c..=c, .., ..]).to_owned();
        let want = numeric.slice(ndarray::s![.., c..=c, .., ..]).to_owned();
        assert_close(&format!("channel {c}"), &got, &want, 1e-6);
    }
    // The constant channel keeps the first term only: (g - mean g) / eps with g = w (0 - T_hat) / numel.
    let tc: Vec<f64> = t.slice(ndarray::s![.., 1, .., ..]).iter().copied().collect();
    let m = tc.len() as f64;
    let mean = tc.iter().sum::<f64>() / m;
    let std = (tc.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (m - 1.0)).sqrt();
    let numel = (dims.iter().product::<usize>()) as f64;
    let g: Vec<f64> = tc.iter().map(|v| -((v - mean) / (std + 1e-6)) / numel).collect();
    let g_mean = g.iter().sum::<f64>() / m;
    let got: Vec<f64> = r.grad_student[0].slice(ndarray::s![.., 1, .., ..]).iter().copied().collect();
    for (a, gi) in got.iter().zip(&g) {
        let want = (gi - g_mean) / 1e-6;
        assert!((a - want).abs() <= 1e-9 * want.abs().max(1.0), "{a} vs {want}");
    }
}

#[test]
fn constant_teacher_channel_is_smooth() {
    let mut rng = SplitMix64::new(76);
    let dims = [1, 3, 3, 4];
    let s = features(&mut rng, dims);
    let mut t = features(&mut rng, dims);
    t.slice_mut(ndarray::s![.., 0, .., ..]).fill(-1.25);
    let cpu = PkdCpu::new(PkdConfig { loss_weight: 3.0 }).unwrap();
    let r = cpu.forward_backward(&[s.view()], &[t.view()]).unwrap();
    let numeric = &numeric_grads(&cpu, std::slice::from_ref(&s), std::slice::from_ref(&t))[0];
    assert_close("constant teacher channel", &r.grad_student[0], numeric, 1e-6);
}

#[test]
fn inputs_in_every_dtype_widen_exactly() {
    let mut rng = SplitMix64::new(77);
    let dims = [2, 3, 3, 2];
    let s = features(&mut rng, dims).mapv(half::bf16::from_f64);
    let t = features(&mut rng, dims).mapv(half::bf16::from_f64);
    let cpu = PkdCpu::new(PkdConfig::default()).unwrap();
    let low = cpu.forward_backward(&[s.view()], &[t.view()]).unwrap();
    let (s64, t64) = (s.mapv(|v| v.to_f64()), t.mapv(|v| v.to_f64()));
    let wide = cpu.forward_backward(&[s64.view()], &[t64.view()]).unwrap();
    assert_eq!(low.loss, wide.loss);
    assert_eq!(low.grad_student, wide.grad_student);
}

#[test]
fn bad_inputs_give_typed_errors() {
    let cpu = PkdCpu::new(PkdConfig::default()).unwrap();
    let a = Array4::<f32>::zeros([2, 3, 4, 4]);
    let smaller = Array4::<f32>::zeros([2, 3, 2, 2]);
    let other_c = Array4::<f32>::zeros([2, 5, 4, 4]);
    // A level of another size: the message says to resize first.
    let e = cpu.forward(&[a.view(), smaller.view()], &[a.view(), a.view()]).unwrap_err();
    assert!(matches!(e, KdError::LevelShapeMismatch { level: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("resize"), "{e}");
    let e = cpu.forward(&[other_c.view()], &[a.view()]).unwrap_err();
    assert!(matches!(e, KdError::LevelShapeMismatch { level: 0, .. }), "{e:?}");
    // Fewer than two values per channel.
    let one = Array4::<f32>::zeros([1, 4, 1, 1]);
    let e = cpu.forward(&[a.view(), one.view()], &[a.view(), one.view()]).unwrap_err();
    assert!(matches!(e, KdError::TooFewValues { got: 1, needed: 2, .. }), "{e:?}");
    assert!(e.to_string().contains("level 1"), "{e}");
    // No level, or a different number of levels.
    let none: [ArrayView4<'_, f32>; 0] = [];
    assert!(matches!(cpu.forward(&none, &none), Err(KdError::EmptyInput { .. })));
    assert!(matches!(cpu.forward(&[a.view()], &[a.view(), a.view()]), Err(KdError::ShapeMismatch { .. })));
    // An empty dimension.
    let empty = Array4::<f32>::zeros([2, 0, 4, 4]);
    assert!(matches!(cpu.forward(&[empty.view()], &[empty.view()]), Err(KdError::EmptyInput { .. })));
    // Bad weights.
    for w in [f64::NAN, f64::INFINITY] {
        assert!(matches!(PkdCpu::new(PkdConfig { loss_weight: w }), Err(KdError::InvalidParameter { .. })));
    }
}

/// A recorded PKD file, rewritten with some tensors replaced or removed and some metadata changed.
fn edited(
    path: &std::path::Path,
    replace: &[(&str, Vec<usize>)],
    remove: &[&str],
    meta: &[(&str, &str)],
) -> Result<Vec<(String, String)>, String> {
    use safetensors::tensor::TensorView;
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap_or_default();
    for (k, v) in meta {
        metadata.insert(k.to_string(), v.to_string());
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let zeros: Vec<Vec<u8>> = replace.iter().map(|(_, dims)| vec![0u8; 4 * dims.iter().product::<usize>()]).collect();
    let mut views = Vec::new();
    for (name, view) in st.tensors() {
        if remove.contains(&name.as_str()) {
            continue;
        }
        match replace.iter().position(|(n, _)| *n == name) {
            Some(i) => views.push((
                name.clone(),
                TensorView::new(safetensors::Dtype::F32, replace[i].1.clone(), &zeros[i]).unwrap(),
            )),
            None => {
                views.push((name.clone(), TensorView::new(view.dtype(), view.shape().to_vec(), view.data()).unwrap()))
            }
        }
    }
    let out = safetensors::serialize(views, Some(metadata)).unwrap();
    let fixture = Fixture::from_bytes(&out).map_err(|e| e.to_string())?;
    let checks = verify::check(&fixture, &Backend::Cpu).map_err(|e| e.to_string())?;
    Ok(checks.iter().map(|c| (c.output.clone(), c.pass().to_string())).collect())
}

/// One edit of a fixture file: tensors reshaped, tensors removed, metadata set, and what the error must say.
type Edit<'a> = (&'a [(&'a str, Vec<usize>)], &'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_fixture_files_are_reported_not_panicked() {
    let path = pkd_files().into_iter().find(|p| p.to_string_lossy().contains("_f32_n2_5x9x11")).unwrap();
    assert!(edited(&path, &[], &[], &[]).unwrap().iter().all(|(_, pass)| pass == "true"));
    let cases: [Edit<'_>; 6] = [
        (&[("student.1", vec![2, 3, 4, 6])], &[], &[], "resize"),
        (&[], &["teacher.2"], &[], "missing tensor `teacher.2`"),
        (&[], &[], &[("num_levels", "0")], "num_levels"),
        (&[], &[], &[("num_levels", "two")], "num_levels"),
        (&[], &[], &[("num_levels", "2")], "student.2"),
        (&[], &[], &[("loss_weight", "nan")], "loss_weight"),
    ];
    for (replace, remove, meta, needle) in cases {
        match edited(&path, replace, remove, meta) {
            Err(e) => assert!(e.contains(needle), "{e:?} does not mention {needle:?}"),
            Ok(checks) => panic!("accepted ({needle}): {checks:?}"),
        }
    }
    // Without `num_levels`, the levels are counted.
    let path = pkd_files().into_iter().find(|p| p.to_string_lossy().contains("_bf16_")).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let fixture = Fixture::from_bytes(&bytes).unwrap();
    let mut without = fixture.clone();
    without.metadata.remove("num_levels");
    let checks = verify::check(&without, &Backend::Cpu).unwrap();
    assert_eq!(checks.len(), 3, "{checks:?}");
    assert!(checks.iter().all(|c| c.pass()));
}
