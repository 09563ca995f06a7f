//! What the pixel-relation tests (SKD, CIRKD) share: the fixture loop, central differences, and a direct
//! (written independently of the crate) pooling and normalisation to build `P x P` references from.

use std::path::PathBuf;

use kd_kernels::fixture::Fixture;
use kd_kernels::CpuOutput;
use ndarray::{Array4, ArrayView4};

use super::{family_fixtures, passes_on_cpu};

/// Runs every fixture whose name starts with `prefix` through `verify` on the CPU; every output the file
/// holds is checked and passes. Returns the loaded fixtures and their paths.
pub fn fixtures_pass(prefix: &str) -> Vec<(PathBuf, Fixture)> {
    let mut out = Vec::new();
    for path in family_fixtures(prefix) {
        let fixture = Fixture::load(&path).unwrap();
        let expected: Vec<&str> =
            ["loss", "grad.student"].into_iter().filter(|name| fixture.tensors.contains_key(*name)).collect();
        assert!(expected.contains(&"loss"), "{}: no loss", path.display());
        let (fixture, _) = passes_on_cpu(&path, &expected);
        out.push((path, fixture));
    }
    out
}

/// Central differences of `f` at `x` in the elements `at` (every element when `None`), step `h`.
pub fn central_differences(
    x: &Array4<f64>,
    at: Option<&[[usize; 4]]>,
    h: f64,
    f: impl Fn(ArrayView4<'_, f64>) -> f64,
) -> Vec<f64> {
    let all: Vec<[usize; 4]>;
    let at = match at {
        Some(at) => at,
        None => {
            all = x.indexed_iter().map(|((a, b, c, d), _)| [a, b, c, d]).collect();
            &all
        }
    };
    let mut work = x.clone();
    at.iter()
        .map(|&idx| {
            let v = x[idx];
            work[idx] = v + h;
            let plus = f(work.view());
            work[idx] = v - h;
            let minus = f(work.view());
            work[idx] = v;
            (plus - minus) / (2.0 * h)
        })
        .collect()
}

/// Image `n` of `x` pooled `k x k` (stride `k`, windows clipped at the edges; the max or the mean of what lies
/// inside) and normalised per pixel (`x / max(|x|, 1e-12)`): one `C`-vector per pixel, in row-major pixel order.
pub fn pixels(x: &Array4<f64>, n: usize, k: usize, max: bool) -> Vec<Vec<f64>> {
    let (c, h, w) = (x.shape()[1], x.shape()[2], x.shape()[3]);
    let mut out = Vec::new();
    for oh in 0..h.div_ceil(k) {
        for ow in 0..w.div_ceil(k) {
            let v: Vec<f64> = (0..c)
                .map(|ch| {
                    let window: Vec<f64> = (oh * k..((oh + 1) * k).min(h))
                        .flat_map(|ih| (ow * k..((ow + 1) * k).min(w)).map(move |iw| (ih, iw)))
                        .map(|(ih, iw)| x[[n, ch, ih, iw]])
                        .collect();
                    if max {
                        window.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    } else {
                        window.iter().sum::<f64>() / window.len() as f64
                    }
                })
                .collect();
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
            out.push(v.iter().map(|a| a / norm).collect());
        }
    }
    out
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One case of a relation loss's CPU tests: a student, a teacher (each ~ N(0, 1) in f64 unless built
/// otherwise) and the loss's configuration.
pub struct Scenario<C> {
    pub name: &'static str,
    pub student: Array4<f64>,
    pub teacher: Array4<f64>,
    pub config: C,
}

/// The scenarios of `rows` (name, student dims, teacher dims, configuration), each row's student then its
/// teacher drawn from `rng` ([`normal4`]), in the rows' order.
pub fn scenarios<C, const N: usize>(
    rng: &mut super::SplitMix64,
    rows: [(&'static str, [usize; 4], [usize; 4], C); N],
) -> Vec<Scenario<C>> {
    rows.into_iter()
        .map(|(name, student, teacher, config)| {
            let student = normal4(rng, student);
            Scenario { name, student, teacher: normal4(rng, teacher), config }
        })
        .collect()
}

/// An array ~ N(0, 1) in f64.
pub fn normal4(rng: &mut super::SplitMix64, dims: [usize; 4]) -> Array4<f64> {
    Array4::from_shape_fn(dims, |_| rng.normal())
}

/// The relative max-abs error of `got` against `want` (the verifier's measure).
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    super::max_abs_diff(got, want) / super::max_abs(want).max(1e-300)
}

/// `forward` (the loss) and `fb` (`forward_backward`) agree bit for bit, and `b` (`backward(upstream)`) has the
/// same loss and `upstream` times the gradient.
pub fn assert_calls_agree(what: &str, forward: f64, fb: &CpuOutput, b: &CpuOutput, upstream: f64) {
    assert_eq!(forward.to_bits(), fb.loss.to_bits(), "{what}");
    assert_eq!(b.loss.to_bits(), fb.loss.to_bits(), "{what}");
    let scaled: Vec<f64> = fb.grad_student.iter().map(|g| upstream * g).collect();
    let got: Vec<f64> = b.grad_student.iter().copied().collect();
    assert!(rel_err(&got, &scaled) <= 1e-15, "{what}");
}

/// The loss and every gradient element are exactly 0.
pub fn assert_exactly_zero(what: &str, out: &CpuOutput) {
    assert_eq!(out.loss, 0.0, "{what}");
    assert!(out.grad_student.iter().all(|&g| g == 0.0), "{what}");
}
