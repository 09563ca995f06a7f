//! What the families' emulator tests share: the comparison with the CPU reference in every mode, one test per
//! dtype, and for the pair families (`cwd`, `pixel_kd`) the inputs of a student close to its teacher and the
//! `GradOptions` contract.

use std::collections::HashMap;

use crate::common::{logits, to_dtype, widen, SplitMix64};
use kd_kernels::cpu::CpuOutput;
use kd_kernels::emulator::{EmulatedGpu, EmulatedOutput, Mode};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::{DType, GradOptions, KdFloat};
use ndarray::{Array4, ArrayView4};
use safetensors::{Dtype, SafeTensors};

pub(crate) const H100: EmulatedGpu = EmulatedGpu::H100_SMALL_GRID;

pub(crate) fn check_close(what: &str, got: &[f64], reference: &[f64], tol: f64) {
    assert_eq!(got.len(), reference.len(), "{what}: length");
    let c = Comparison::of(got.iter().copied(), reference.iter().copied());
    assert!(c.passes(tol), "{what}: max_rel_err {:e} > {tol:e} ({c:?})", c.max_rel_err);
}

/// Compares an emulated call in `mode` with the reference: the loss (none for a backward call) and, unless
/// the call is a forward one, d loss / d student, to the dtype's tolerances. Returns whether gradients were
/// compared.
pub(crate) fn compare_student<T: KdFloat>(
    what: &str,
    emulated: &EmulatedOutput<T>,
    reference_loss: f64,
    reference_grad: &Array4<f64>,
    mode: Mode,
) -> bool {
    let dtype = T::DTYPE;
    match mode {
        Mode::Backward { .. } => assert!(emulated.loss.is_none(), "{what}: backward must not write the loss"),
        _ => check_close(
            &format!("{what} loss"),
            &[emulated.loss.expect("loss") as f64],
            &[reference_loss],
            tolerance(dtype, OutputKind::Loss),
        ),
    }
    if mode == Mode::Forward {
        assert!(emulated.grad_student.is_none(), "{what}: forward must not write a gradient");
        return false;
    }
    let grad = widen(emulated.grad_student.as_ref().expect("grad_student"));
    let reference_grad: Vec<f64> = reference_grad.iter().copied().collect();
    check_close(&format!("{what} grad.student"), &grad, &reference_grad, tolerance(dtype, OutputKind::Tensor));
    true
}

/// [`compare_student`], and d loss / d teacher where the reference has it.
pub(crate) fn compare<T: KdFloat>(what: &str, emulated: &EmulatedOutput<T>, reference: &CpuOutput, mode: Mode) {
    if !compare_student(what, emulated, reference.loss, &reference.grad_student, mode) {
        return;
    }
    if let Some(reference_teacher) = &reference.grad_teacher {
        let got = widen(emulated.grad_teacher.as_ref().expect("grad_teacher"));
        let reference: Vec<f64> = reference_teacher.iter().copied().collect();
        check_close(&format!("{what} grad.teacher"), &got, &reference, tolerance(T::DTYPE, OutputKind::Tensor));
    }
}

/// The recorded fixtures of one family (file names starting with `prefix`, `count` of them), each as its file
/// name, bytes and metadata: what the tests that feed the stored inputs to the emulated kernels read.
pub(crate) fn recorded_fixtures(prefix: &str, count: usize) -> Vec<(String, Vec<u8>, HashMap<String, String>)> {
    let files = crate::common::family_fixtures(prefix);
    assert_eq!(files.len(), count, "expected the {count} recorded {prefix} fixtures");
    files
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).unwrap();
            let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
            let meta = header.metadata().clone().unwrap_or_default();
            (path.file_name().unwrap().to_string_lossy().to_string(), bytes, meta)
        })
        .collect()
}

/// The tensor `name` of the recorded fixture `file` (deserialised as `st`): its shape, its values widened to
/// f64 and its stored dtype (f32, f16 or bf16).
pub(crate) fn stored_tensor(file: &str, st: &SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f64>, Dtype) {
    let t = st.tensor(name).unwrap();
    let d = t.data();
    let v = match t.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        other => panic!("{file}: {name} is {other:?}"),
    };
    (t.shape().to_vec(), v, t.dtype())
}

/// `got` against `want` to the tolerance of `kind` in `dtype`.
pub(crate) fn close(
    what: &str,
    dtype: DType,
    kind: OutputKind,
    got: impl IntoIterator<Item = f64>,
    want: impl IntoIterator<Item = f64>,
) {
    let c = Comparison::of(got, want);
    let tol = tolerance(dtype, kind);
    assert!(c.passes(tol), "{what} ({dtype}): {c:?} > {tol}");
}

/// One `#[test]` per dtype, each running `$check::<T>()`: the three names are the f32, f16 and bf16 tests'.
macro_rules! per_dtype_tests {
    ($check:ident: $f32:ident, $f16:ident, $bf16:ident) => {
        #[test]
        fn $f32() {
            $check::<f32>();
        }

        #[test]
        fn $f16() {
            $check::<half::f16>();
        }

        #[test]
        fn $bf16() {
            $check::<half::bf16>();
        }
    };
}
pub(crate) use per_dtype_tests;

pub(crate) fn cpu_reference<T: KdFloat>(
    run: impl Fn(ArrayView4<'_, T>, ArrayView4<'_, T>, f64) -> CpuOutput,
    dims: [usize; 4],
    student: &[T],
    teacher: &[T],
    mode: Mode,
) -> CpuOutput {
    let numel: usize = dims.iter().product();
    let s = ArrayView4::from_shape(dims, &student[..numel]).unwrap();
    let t = ArrayView4::from_shape(dims, &teacher[..numel]).unwrap();
    let upstream = match mode {
        Mode::Backward { upstream } => upstream as f64,
        _ => 1.0,
    };
    run(s, t, upstream)
}

pub(crate) const MODES: [Mode; 3] = [Mode::Forward, Mode::ForwardBackward, Mode::Backward { upstream: 2.5 }];

/// Student = teacher + small noise (late training): the KL is tiny next to log(H*W), the case where
/// computing it from two log-sum-exps loses the most.
pub(crate) fn close_student(numel: usize, seed: u64, noise: f64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64::new(seed);
    let teacher: Vec<f32> = logits(&mut rng, numel, 2.0, 0);
    let student = teacher.iter().map(|&t| t + (rng.normal() * noise) as f32).collect();
    (student, teacher)
}

/// What [`GradOptions`] promise, on one loss: with `accumulate` the gradients are added into what the buffers
/// held, `scale` multiplies the gradients (on top of a device upstream) and never the loss.
pub(crate) fn grad_options_follow_the_reference<T: KdFloat>(
    what: &str,
    numel: usize,
    emulate: impl Fn(Mode, GradOptions, &[T]) -> EmulatedOutput<T>,
    reference: impl Fn(f64) -> CpuOutput,
) {
    let mut rng = SplitMix64::new(numel as u64);
    // Of the gradients' magnitude, so that a kernel that dropped the buffer's values would fail.
    let initial: Vec<T> = to_dtype(&logits(&mut rng, numel, 1e-3, 0));
    let tol = tolerance(T::DTYPE, OutputKind::Tensor);
    let options =
        [(-0.75, true), (1.0, true), (4.0, false)].map(|(scale, accumulate)| GradOptions { scale, accumulate });
    for mode in [Mode::ForwardBackward, Mode::Backward { upstream: 2.5 }] {
        let upstream = match mode {
            Mode::Backward { upstream } => upstream as f64,
            _ => 1.0,
        };
        let r = reference(upstream);
        for option in options {
            let got = emulate(mode, option, &initial);
            let case = format!("{what} {:?} {mode:?} {option:?}", T::DTYPE);
            let expect = |grad: &ndarray::Array4<f64>| -> Vec<f64> {
                let start = |i: usize| if option.accumulate { initial[i].to_f64() } else { 0.0 };
                grad.iter().enumerate().map(|(i, g)| start(i) + option.scale * g).collect()
            };
            let gs = widen(got.grad_student.as_ref().expect("grad_student"));
            check_close(&format!("{case} grad.student"), &gs, &expect(&r.grad_student), tol);
            if let Some(reference_teacher) = &r.grad_teacher {
                let gt = widen(got.grad_teacher.as_ref().expect("grad_teacher"));
                check_close(&format!("{case} grad.teacher"), &gt, &expect(reference_teacher), tol);
            }
            if mode == Mode::ForwardBackward {
                let loss = got.loss.expect("loss") as f64;
                check_close(&format!("{case} loss"), &[loss], &[r.loss], tolerance(T::DTYPE, OutputKind::Loss));
            }
        }
    }
}
