//! Helpers shared by the integration tests: the deterministic PRNG, random logits with
//! injected outliers, dtype rounding, and where the recorded fixtures live.
//!
//! Every test file includes this with `mod common;` and uses only part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use kd_kernels::KdFloat;
use ndarray::Array4;

/// The crate's one seeded generator (tests, benches and examples share it).
pub use kd_kernels::testing::SplitMix64;

/// Rounds to a multiple of 2^-10: with |x| < 64 the value then has at most 16 significant bits, so it is
/// exact in f32 and so are `x +- 2^-14` (finite differences without input rounding).
pub fn quantize(x: f64) -> f64 {
    (x * 1024.0).round() / 1024.0
}

/// `numel` logits ~ N(0, scale^2) (quantized, see [`quantize`]), with `outliers` entries at random
/// positions replaced by +30 or -30.
pub fn logits(rng: &mut SplitMix64, numel: usize, scale: f64, outliers: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..numel).map(|_| quantize(rng.normal() * scale) as f32).collect();
    for _ in 0..outliers.min(numel) {
        let i = rng.below(numel);
        v[i] = if rng.uniform() < 0.5 { 30.0 } else { -30.0 };
    }
    v
}

/// A random NCHW array of logits (f32).
pub fn logits4(rng: &mut SplitMix64, dims: [usize; 4], scale: f64, outliers: usize) -> Array4<f32> {
    let numel = dims.iter().product();
    Array4::from_shape_vec(dims, logits(rng, numel, scale, outliers)).expect("shape matches")
}

/// Rounds f32 values to the storage type `T` (round to nearest).
pub fn to_dtype<T: KdFloat>(values: &[f32]) -> Vec<T> {
    values.iter().map(|&v| T::from_f32(v)).collect()
}

/// Widens exactly.
pub fn widen<T: KdFloat>(values: &[T]) -> Vec<f64> {
    values.iter().map(|v| v.to_f64()).collect()
}

/// `tests/fixtures`, relative to the working directory (cargo runs tests from the crate root; the GPU
/// runner runs the binaries from a copy of the repository root).
pub fn fixture_dir() -> PathBuf {
    let dir = PathBuf::from("tests").join("fixtures");
    assert!(
        dir.is_dir(),
        "{} not found: run the tests from the crate root (cwd = {:?})",
        dir.display(),
        std::env::current_dir()
    );
    dir
}

/// Every `*.safetensors` file of [`fixture_dir`], sorted.
pub fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .expect("list tests/fixtures")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixture in tests/fixtures");
    files
}

/// A fresh, empty directory under the system temp dir, unique to this process and call.
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kd_kernels_test_{}_{tag}_{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Max |a - b| over two equally long sequences.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Max |a|.
pub fn max_abs(a: &[f64]) -> f64 {
    a.iter().map(|x| x.abs()).fold(0.0, f64::max)
}
