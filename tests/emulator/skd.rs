//! The SKD kernels (kernels/skd.cu) run on the host through the emulation, against the f64 CPU reference:
//! every dtype, small odd shapes (ceil pooling), `Cs != Ct` and `Cs = Ct` (the rearranged form through
//! `D = S_hat - T_hat`), pool 2 and 1, forward / forward+backward / backward with upstream, accumulate + scale,
//! exact zeros for identical inputs, a student close to its teacher, max-pool ties, bitwise determinism, typed
//! errors, and the recorded fixtures (CIRKD's official module's values).

use crate::common;
use crate::pair::{close, recorded_fixtures, stored_tensor};

use common::{quantize, widen, SplitMix64};
use half::{bf16, f16};
use kd_kernels::emulator::{EmulatedGpu, EmulatedOutput, Mode};
use kd_kernels::skd::emulate::skd;
use kd_kernels::skd::{check_shapes, gram_path, GramPath, RelationShapes, SkdConfig, SkdCpu, SkdPool};
use kd_kernels::tolerance::{Comparison, OutputKind};
use kd_kernels::{CpuOutput, DType, GradOptions, KdError, KdFloat};
use ndarray::ArrayView4;

const GPU: EmulatedGpu = EmulatedGpu::H100_SMALL_GRID;

struct Case {
    shapes: RelationShapes,
    student: Vec<f32>,
    teacher: Vec<f32>,
}

impl Case {
    /// Random quantized features `[N, Cs, H, W]` and `[N, Ct, H, W]`.
    fn new(seed: u64, student: [usize; 4], ct: usize) -> Case {
        let mut rng = SplitMix64::new(seed);
        let teacher_dims = [student[0], ct, student[2], student[3]];
        let mut values = |dims: [usize; 4]| -> Vec<f32> {
            (0..dims.iter().product::<usize>()).map(|_| quantize(rng.normal()) as f32).collect()
        };
        let (s, t) = (values(student), values(teacher_dims));
        Case { shapes: check_shapes(&student, &teacher_dims).unwrap(), student: s, teacher: t }
    }

    fn inputs<T: KdFloat>(&self) -> (Vec<T>, Vec<T>) {
        let round = |v: &[f32]| v.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>();
        (round(&self.student), round(&self.teacher))
    }

    /// The reference on the inputs as rounded to `T`.
    fn reference<T: KdFloat>(&self, config: SkdConfig) -> CpuOutput {
        let (s, t) = self.inputs::<T>();
        let (s, t) = (widen(&s), widen(&t));
        let s = ArrayView4::from_shape(self.shapes.student.dims(), &s).unwrap();
        let t = ArrayView4::from_shape(self.shapes.teacher().dims(), &t).unwrap();
        SkdCpu::new(config).unwrap().forward_backward(s, t).unwrap()
    }

    fn emulate<T: KdFloat>(
        &self,
        config: SkdConfig,
        mode: Mode,
        options: GradOptions,
        initial: Option<&[T]>,
    ) -> EmulatedOutput<T> {
        let (s, t) = self.inputs::<T>();
        skd(&config, &self.shapes, &s, &t, mode, options, initial, GPU).unwrap()
    }
}

/// Compares an emulated call with the reference: the loss, and the gradient as `factor * reference + initial`.
fn compare<T: KdFloat>(
    what: &str,
    got: &EmulatedOutput<T>,
    reference: &CpuOutput,
    mode: Mode,
    factor: f64,
    initial: Option<&[T]>,
) {
    let dtype = T::DTYPE;
    match mode {
        Mode::Backward { .. } => assert_eq!(got.loss, None),
        _ => close(&format!("{what} loss"), dtype, OutputKind::Loss, [got.loss.unwrap() as f64], [reference.loss]),
    }
    assert!(got.grad_teacher.is_none());
    let Some(grad) = &got.grad_student else {
        assert_eq!(mode, Mode::Forward);
        return;
    };
    let want: Vec<f64> = match initial {
        Some(init) => reference.grad_student.iter().zip(init).map(|(x, b)| factor * x + b.to_f64()).collect(),
        None => reference.grad_student.iter().map(|x| factor * x).collect(),
    };
    close(&format!("{what} grad"), dtype, OutputKind::Tensor, widen(grad), want);
}

/// (student dims, Ct, pool, loss weight): odd sizes for ceil pooling, `Cs != Ct` both ways, `Cs = Ct`, more
/// rows than one Gram tile, a pooled plane over one Gram chunk, a 1-pixel-wide plane.
fn cases() -> Vec<([usize; 4], usize, SkdPool, f64)> {
    vec![
        ([2, 3, 5, 7], 4, SkdPool::Max2x2, 1.0),
        ([2, 5, 7, 3], 5, SkdPool::Max2x2, 2.5),
        ([1, 6, 3, 5], 2, SkdPool::None, 1.0),
        ([2, 4, 6, 5], 4, SkdPool::None, 0.5),
        ([1, 9, 5, 5], 9, SkdPool::Max2x2, 1.0),
        ([1, 2, 67, 65], 3, SkdPool::Max2x2, 1.0),
        ([2, 3, 9, 1], 3, SkdPool::Max2x2, 1.0),
    ]
}

fn every_mode<T: KdFloat>(case: &Case, config: SkdConfig) {
    let upstream = -1.75f32;
    let reference = case.reference::<T>(config);
    for mode in [Mode::Forward, Mode::ForwardBackward, Mode::Backward { upstream }] {
        let got = case.emulate::<T>(config, mode, GradOptions::OVERWRITE, None);
        let factor = if let Mode::Backward { upstream } = mode { upstream as f64 } else { 1.0 };
        compare(&format!("{:?} {config:?} {mode:?}", case.shapes), &got, &reference, mode, factor, None);
    }
}

#[test]
fn every_dtype_and_mode_matches_the_reference() {
    for (seed, (dims, ct, pool, loss_weight)) in cases().into_iter().enumerate() {
        let case = Case::new(seed as u64 + 1, dims, ct);
        let config = SkdConfig { loss_weight, pool };
        every_mode::<f32>(&case, config);
        every_mode::<f16>(&case, config);
        every_mode::<bf16>(&case, config);
    }
}

#[test]
fn accumulate_and_scale() {
    let case = Case::new(7, [2, 3, 5, 7], 3);
    let config = SkdConfig { loss_weight: 2.0, pool: SkdPool::Max2x2 };
    let options = GradOptions { scale: 0.5, accumulate: true };
    fn run<T: KdFloat>(case: &Case, config: SkdConfig, options: GradOptions) {
        let mut rng = SplitMix64::new(11);
        let initial: Vec<T> =
            (0..case.shapes.student.numel()).map(|_| T::from_f64(quantize(0.01 * rng.normal()))).collect();
        let reference = case.reference::<T>(config);
        let got = case.emulate::<T>(config, Mode::ForwardBackward, options, Some(&initial));
        compare("accumulate", &got, &reference, Mode::ForwardBackward, 0.5, Some(&initial));
        let upstream = 3.0f32;
        let got = case.emulate::<T>(config, Mode::Backward { upstream }, options, Some(&initial));
        compare("accumulate backward", &got, &reference, Mode::Backward { upstream }, 1.5, Some(&initial));
    }
    run::<f32>(&case, config, options);
    run::<bf16>(&case, config, options);
}

/// The same call twice, and on devices of other sizes (the plan reads no device fact): the same bits.
#[test]
fn bitwise_deterministic_on_every_device() {
    for (dims, ct) in [([2, 5, 9, 7], 5), ([2, 3, 7, 9], 6)] {
        let case = Case::new(13, dims, ct);
        let config = SkdConfig::default();
        let (s, t) = case.inputs::<f16>();
        let call = |gpu: EmulatedGpu| {
            skd(&config, &case.shapes, &s, &t, Mode::ForwardBackward, GradOptions::OVERWRITE, None, gpu).unwrap()
        };
        let first = call(GPU);
        for gpu in [GPU, EmulatedGpu { sm_count: 1, resident_blocks: 0, ..GPU }] {
            let again = call(gpu);
            assert_eq!(again.loss.map(f32::to_bits), first.loss.map(f32::to_bits));
            let bits = |g: &Option<Vec<f16>>| g.as_ref().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&again.grad_student), bits(&first.grad_student));
        }
    }
}

/// Identical student and teacher: the loss and every gradient exactly 0, in every dtype and both pools.
#[test]
fn identical_inputs_give_exactly_zero() {
    fn run<T: KdFloat>(case: &Case, config: SkdConfig) {
        for mode in [Mode::ForwardBackward, Mode::Backward { upstream: 2.0 }] {
            let got = case.emulate::<T>(config, mode, GradOptions::OVERWRITE, None);
            if let Some(loss) = got.loss {
                assert_eq!(loss, 0.0, "{config:?}");
            }
            assert!(got.grad_student.unwrap().iter().all(|&g| g.to_f64() == 0.0), "{config:?} {mode:?}");
        }
    }
    let mut case = Case::new(17, [2, 4, 7, 5], 4);
    case.student = case.teacher.clone();
    for pool in [SkdPool::Max2x2, SkdPool::None] {
        let config = SkdConfig { loss_weight: 3.0, pool };
        run::<f32>(&case, config);
        run::<f16>(&case, config);
        run::<bf16>(&case, config);
    }
}

/// A student within 1e-3 of its teacher: the loss (of order 1e-6 of the Frobenius terms) keeps the tolerance,
/// because with `Cs = Ct` the kernels form it from `D = S_hat - T_hat`, not as a difference of large sums.
#[test]
fn a_student_close_to_its_teacher() {
    for pool in [SkdPool::Max2x2, SkdPool::None] {
        let mut case = Case::new(23, [2, 4, 7, 5], 4);
        let mut rng = SplitMix64::new(29);
        case.student = case.teacher.iter().map(|&v| v + (1e-3 * rng.normal()) as f32).collect();
        let config = SkdConfig { loss_weight: 1.0, pool };
        let reference = case.reference::<f32>(config);
        let got = case.emulate::<f32>(config, Mode::ForwardBackward, GradOptions::OVERWRITE, None);
        compare("close", &got, &reference, Mode::ForwardBackward, 1.0, None);
    }
}

/// The tensor-core Gram (`GramPath::TensorCores`: f16 and bf16 with `Cs = Ct`, split-f16 operand pairs)
/// under the emulator's default truncating MMA model, at the reference's tolerances: channels not a multiple
/// of 16 and stacked rows over one 64-entry tile, a pooled plane over one Gram chunk whose chunks, spans and
/// steps end part-way, and a student within 1e-3 of its teacher (a loss of order 1e-6 of the Frobenius
/// terms). The other tests run this path too wherever they take 16-bit inputs with `Cs = Ct` (identical
/// inputs, determinism, accumulation, the fixtures).
#[test]
fn tensor_core_gram_matches_the_reference() {
    fn run<T: KdFloat>(what: &str, case: &Case, config: SkdConfig) {
        assert_eq!(gram_path(&case.shapes, T::DTYPE), GramPath::TensorCores, "{what}");
        let reference = case.reference::<T>(config);
        let got = case.emulate::<T>(config, Mode::ForwardBackward, GradOptions::OVERWRITE, None);
        let loss = Comparison::of([got.loss.unwrap() as f64], [reference.loss]);
        let grad = Comparison::of(widen(got.grad_student.as_ref().unwrap()), reference.grad_student.iter().copied());
        println!("{what} {}: loss {:.2e}, grad {:.2e} (relative)", T::DTYPE, loss.max_rel_err, grad.max_rel_err);
        compare(what, &got, &reference, Mode::ForwardBackward, 1.0, None);
    }
    // (student dims, pool): 23 channels, 69 rows (2 x 2 tiles); 1189 pooled pixels, two chunks of 608 and 581;
    // and a few pixels of few channels, where the loss averages few rounding errors (single f16 roundings of
    // the entries, 2^-12 relative, would show there).
    let cases = [
        ([2, 23, 5, 7], SkdPool::Max2x2),
        ([1, 5, 41, 29], SkdPool::None),
        ([1, 2, 3, 3], SkdPool::Max2x2),
        ([2, 3, 1, 5], SkdPool::None),
    ];
    for (seed, (dims, pool)) in cases.into_iter().enumerate() {
        let case = Case::new(41 + seed as u64, dims, dims[1]);
        let config = SkdConfig { loss_weight: 1.5, pool };
        run::<f16>(&format!("{dims:?} {pool:?}"), &case, config);
        run::<bf16>(&format!("{dims:?} {pool:?}"), &case, config);
    }
    for pool in [SkdPool::Max2x2, SkdPool::None] {
        let mut case = Case::new(43, [2, 7, 9, 11], 7);
        let mut rng = SplitMix64::new(47);
        case.student = case.teacher.iter().map(|&v| v + (1e-3 * rng.normal()) as f32).collect();
        // A weight that keeps the gradient (of order 1e-5 at weight 1) above f16's subnormals, whose spacing
        // alone is 4e-3 of it: the tolerance is the Gram's to meet, not the output format's.
        let config = SkdConfig { pool, loss_weight: 1000.0 };
        run::<f16>(&format!("close {pool:?}"), &case, config);
        run::<bf16>(&format!("close {pool:?}"), &case, config);
    }
}

/// Windows whose maximum is tied: the gradient goes to the first maximum in row-major order, as the
/// reference (and PyTorch) does.
#[test]
fn max_pool_ties() {
    let mut case = Case::new(31, [2, 3, 5, 6], 5);
    let (h, w) = (5, 6);
    for (i, v) in case.student.iter_mut().enumerate() {
        let (y, x) = ((i / w) % h, i % w);
        if (y / 2 + x / 2) % 2 == 0 {
            *v = (*v * 4.0).round() / 4.0; // coarse values: many ties within a window
        }
    }
    let config = SkdConfig::default();
    let reference = case.reference::<f32>(config);
    let got = case.emulate::<f32>(config, Mode::ForwardBackward, GradOptions::OVERWRITE, None);
    compare("ties", &got, &reference, Mode::ForwardBackward, 1.0, None);
}

#[test]
fn typed_errors() {
    let case = Case::new(37, [1, 2, 3, 3], 3);
    let (s, t) = case.inputs::<f32>();
    let call = |config: SkdConfig, shapes: &RelationShapes, s: &[f32], t: &[f32]| {
        skd(&config, shapes, s, t, Mode::ForwardBackward, GradOptions::OVERWRITE, None, GPU)
    };
    let e = call(SkdConfig::default(), &case.shapes, &s[..5], &t).unwrap_err();
    assert!(matches!(e, KdError::BufferTooSmall { what: "student", .. }), "{e:?}");
    let e = call(SkdConfig::default(), &case.shapes, &s, &t[..t.len() - 1]).unwrap_err();
    assert!(matches!(e, KdError::BufferTooSmall { what: "teacher", .. }), "{e:?}");
    let e = call(SkdConfig { loss_weight: f64::INFINITY, ..SkdConfig::default() }, &case.shapes, &s, &t).unwrap_err();
    assert!(matches!(e, KdError::InvalidParameter { .. }), "{e:?}");
    let e = check_shapes(&[1, 2, 3, 3], &[1, 3, 3, 4]).unwrap_err();
    assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e:?}");
    let short: Vec<f32> = Vec::new();
    let r = skd(
        &SkdConfig::default(),
        &case.shapes,
        &s,
        &t,
        Mode::ForwardBackward,
        GradOptions::OVERWRITE,
        Some(&short),
        GPU,
    );
    assert!(matches!(r, Err(KdError::BufferTooSmall { what: "initial gradient", .. })), "{r:?}");
    let r = skd(
        &SkdConfig::default(),
        &case.shapes,
        &s,
        &t,
        Mode::Forward,
        GradOptions { scale: f64::NAN, accumulate: false },
        None,
        GPU,
    );
    assert!(matches!(r, Err(KdError::InvalidParameter { .. })), "{r:?}");
}

/// The recorded fixtures (CIRKD's official `CriterionStructuralKD`) through the emulated kernels, with the GPU
/// rows of the tolerance table (the kernels store gradients in the input dtype).
#[test]
fn fixtures_through_the_emulated_kernels() {
    use safetensors::{Dtype, SafeTensors};
    for (name, bytes, meta) in recorded_fixtures("skd_", 9) {
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let read = |n: &str| stored_tensor(&name, &st, n);
        let config = SkdConfig {
            loss_weight: meta.get("loss_weight").map_or(1.0, |v| v.parse().unwrap()),
            pool: meta.get("pool").map_or(SkdPool::Max2x2, |v| SkdPool::from_window(v.parse().unwrap()).unwrap()),
        };
        let (sd, s, dtype) = read("student");
        let (td, t, _) = read("teacher");
        let shapes = check_shapes(&sd, &td).unwrap();
        fn go<T: KdFloat>(config: SkdConfig, shapes: &RelationShapes, s: &[f64], t: &[f64]) -> (f32, Vec<f64>) {
            let s: Vec<T> = s.iter().map(|&x| T::from_f64(x)).collect();
            let t: Vec<T> = t.iter().map(|&x| T::from_f64(x)).collect();
            let out = skd(&config, shapes, &s, &t, Mode::ForwardBackward, GradOptions::OVERWRITE, None, GPU).unwrap();
            (out.loss.unwrap(), widen(&out.grad_student.unwrap()))
        }
        let ((loss, grad), kd_dtype) = match dtype {
            Dtype::F32 => (go::<f32>(config, &shapes, &s, &t), DType::F32),
            Dtype::F16 => (go::<f16>(config, &shapes, &s, &t), DType::F16),
            Dtype::BF16 => (go::<bf16>(config, &shapes, &s, &t), DType::BF16),
            other => panic!("{name}: student is {other:?}"),
        };
        close(&format!("{name} loss"), kd_dtype, OutputKind::Loss, [loss as f64], read("loss").1);
        close(&format!("{name} grad.student"), kd_dtype, OutputKind::Tensor, grad, read("grad.student").1);
    }
}
