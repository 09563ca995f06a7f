//! The PKD kernels (kernels/pkd.cu) run on the host through the emulation, against the f64 CPU reference:
//! every dtype, several levels of different sizes in one call (odd planes, planes shorter than a block, a
//! channel of two chunks), large channel means, a constant channel, forward / forward+backward / backward
//! with upstream, accumulate + scale, bitwise determinism, identical inputs, typed errors, and the recorded
//! fixtures (mmrazor's values).

use crate::common;
use crate::pair::{close, recorded_fixtures, stored_tensor};

use common::{quantize, widen, SplitMix64};
use half::{bf16, f16};
use kd_kernels::emulator::{EmulatedGpu, Mode};
use kd_kernels::pkd::emulate::{pkd, PkdEmulated};
use kd_kernels::pkd::{PkdConfig, PkdCpu, PkdCpuOutput, PkdLevels, MAX_LEVELS};
use kd_kernels::tolerance::OutputKind;
use kd_kernels::{DType, GradOptions, KdError, KdFloat};
use ndarray::ArrayView4;

const GPU: EmulatedGpu = EmulatedGpu::H100_SMALL_GRID;

/// Levels of one call: odd planes, a plane shorter than a block (several images per block step), one image,
/// and a channel of 4550 values (two chunks of the stats kernel).
const LEVELS: [[usize; 4]; 4] = [[2, 5, 7, 9], [2, 3, 4, 5], [3, 2, 1, 3], [1, 2, 65, 70]];

/// Features whose channels differ in mean and scale (one with a large mean: 300 +- 1), in f32.
fn features(rng: &mut SplitMix64, dims: [usize; 4], large_mean_channel: Option<usize>) -> Vec<f32> {
    let [n, c, h, w] = dims;
    let scale: Vec<f64> = (0..c).map(|_| 0.25 + 3.0 * rng.uniform()).collect();
    let shift: Vec<f64> =
        (0..c).map(|ch| if Some(ch) == large_mean_channel { 300.0 } else { 2.0 * rng.normal() }).collect();
    let mut out = Vec::with_capacity(n * c * h * w);
    for _ in 0..n {
        for ch in 0..c {
            let s = if Some(ch) == large_mean_channel { 1.0 } else { scale[ch] };
            for _ in 0..h * w {
                out.push(quantize(rng.normal() * s + shift[ch]) as f32);
            }
        }
    }
    out
}

/// A student related to the teacher (correlation well away from 0 and 1), so that both gradient terms matter.
fn student_of(rng: &mut SplitMix64, teacher: &[f32]) -> Vec<f32> {
    teacher.iter().map(|&t| quantize(0.8 * t as f64 + 0.6 * rng.normal()) as f32).collect()
}

struct Case {
    levels: PkdLevels,
    student: Vec<Vec<f32>>,
    teacher: Vec<Vec<f32>>,
}

impl Case {
    fn new(seed: u64, dims: &[[usize; 4]]) -> Case {
        let mut rng = SplitMix64::new(seed);
        let teacher: Vec<Vec<f32>> = dims.iter().map(|&d| features(&mut rng, d, Some(d[1] - 1))).collect();
        let student = teacher.iter().map(|t| student_of(&mut rng, t)).collect();
        Case { levels: PkdLevels::same(dims).unwrap(), student, teacher }
    }

    fn inputs<T: KdFloat>(&self) -> (Vec<Vec<T>>, Vec<Vec<T>>) {
        let round = |v: &Vec<f32>| v.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>();
        (self.student.iter().map(round).collect(), self.teacher.iter().map(round).collect())
    }

    /// The reference on the inputs as rounded to `T`.
    fn reference<T: KdFloat>(&self, config: PkdConfig, upstream: f64) -> PkdCpuOutput {
        let (s, t) = self.inputs::<T>();
        let (s, t): (Vec<Vec<f64>>, Vec<Vec<f64>>) =
            (s.iter().map(|v| widen(v)).collect(), t.iter().map(|v| widen(v)).collect());
        fn view<'a>(v: &'a [Vec<f64>], levels: &PkdLevels) -> Vec<ArrayView4<'a, f64>> {
            v.iter().zip(levels.shapes()).map(|(x, s)| ArrayView4::from_shape(s.dims(), x).unwrap()).collect()
        }
        PkdCpu::new(config).unwrap().backward(&view(&s, &self.levels), &view(&t, &self.levels), upstream).unwrap()
    }

    fn emulate<T: KdFloat>(
        &self,
        config: PkdConfig,
        mode: Mode,
        options: GradOptions,
        initial: Option<&[Vec<T>]>,
        gpu: EmulatedGpu,
    ) -> PkdEmulated<T> {
        let (s, t) = self.inputs::<T>();
        let sr: Vec<&[T]> = s.iter().map(|v| v.as_slice()).collect();
        let tr: Vec<&[T]> = t.iter().map(|v| v.as_slice()).collect();
        pkd(&config, &self.levels, &sr, &tr, mode, options, initial, gpu).unwrap()
    }
}

/// Compares an emulated call with the reference: the loss, and each level's gradient as
/// `factor * reference + initial`.
fn compare<T: KdFloat>(
    what: &str,
    got: &PkdEmulated<T>,
    reference: &PkdCpuOutput,
    mode: Mode,
    factor: f64,
    initial: Option<&[Vec<T>]>,
) {
    let dtype = T::DTYPE;
    match mode {
        Mode::Backward { .. } => assert_eq!(got.loss, None),
        _ => close(&format!("{what} loss"), dtype, OutputKind::Loss, [got.loss.unwrap() as f64], [reference.loss]),
    }
    if mode == Mode::Forward {
        assert!(got.grad_student.is_empty());
        return;
    }
    assert_eq!(got.grad_student.len(), reference.grad_student.len());
    for (l, (g, r)) in got.grad_student.iter().zip(&reference.grad_student).enumerate() {
        let want: Vec<f64> = match initial {
            Some(init) => r.iter().zip(&init[l]).map(|(x, b)| factor * x + b.to_f64()).collect(),
            None => r.iter().map(|x| factor * x).collect(),
        };
        close(&format!("{what} grad level {l}"), dtype, OutputKind::Tensor, widen(g), want);
    }
}

fn every_mode<T: KdFloat>(case: &Case, config: PkdConfig) {
    let upstream = -1.75f32;
    let reference = case.reference::<T>(config, 1.0);
    for mode in [Mode::Forward, Mode::ForwardBackward, Mode::Backward { upstream }] {
        let got = case.emulate::<T>(config, mode, GradOptions::OVERWRITE, None, GPU);
        let factor = if let Mode::Backward { upstream } = mode { upstream as f64 } else { 1.0 };
        compare(&format!("{mode:?}"), &got, &reference, mode, factor, None);
    }
}

#[test]
fn every_dtype_and_mode_matches_the_reference() {
    let case = Case::new(3, &LEVELS);
    let config = PkdConfig { loss_weight: 6.0 };
    every_mode::<f32>(&case, config);
    every_mode::<f16>(&case, config);
    every_mode::<bf16>(&case, config);
}

/// The per-level terms add up: a call on one level alone gives that level's gradient and term.
#[test]
fn levels_are_independent() {
    let case = Case::new(5, &LEVELS[..3]);
    let config = PkdConfig::default();
    let all = case.emulate::<f32>(config, Mode::ForwardBackward, GradOptions::OVERWRITE, None, GPU);
    let reference = case.reference::<f32>(config, 1.0);
    for (l, &dims) in LEVELS[..3].iter().enumerate() {
        let one = Case {
            levels: PkdLevels::same(&[dims]).unwrap(),
            student: vec![case.student[l].clone()],
            teacher: vec![case.teacher[l].clone()],
        };
        let got = one.emulate::<f32>(config, Mode::ForwardBackward, GradOptions::OVERWRITE, None, GPU);
        close("level term", DType::F32, OutputKind::Loss, [got.loss.unwrap() as f64], [reference.level_losses[l]]);
        // The same blocks, the same order: bitwise the same gradient as in the call on every level.
        assert_eq!(got.grad_student[0], all.grad_student[l], "level {l}");
    }
}

#[test]
fn accumulate_and_scale() {
    let case = Case::new(7, &LEVELS[..3]);
    let config = PkdConfig { loss_weight: 2.0 };
    let options = GradOptions { scale: 0.5, accumulate: true };
    fn run<T: KdFloat>(case: &Case, config: PkdConfig, options: GradOptions) {
        let mut rng = SplitMix64::new(11);
        let initial: Vec<Vec<T>> = case
            .levels
            .shapes()
            .iter()
            .map(|s| (0..s.numel()).map(|_| T::from_f64(quantize(0.01 * rng.normal()))).collect())
            .collect();
        let reference = case.reference::<T>(config, 1.0);
        let got = case.emulate::<T>(config, Mode::ForwardBackward, options, Some(&initial), GPU);
        compare("accumulate", &got, &reference, Mode::ForwardBackward, 0.5, Some(&initial));
        let upstream = 3.0f32;
        let got = case.emulate::<T>(config, Mode::Backward { upstream }, options, Some(&initial), GPU);
        compare("accumulate backward", &got, &reference, Mode::Backward { upstream }, 1.5, Some(&initial));
    }
    run::<f32>(&case, config, options);
    run::<bf16>(&case, config, options);
}

/// The same call twice, and on devices of other sizes (the plan reads no device fact): the same bits.
#[test]
fn bitwise_deterministic_on_every_device() {
    let case = Case::new(13, &LEVELS);
    let config = PkdConfig { loss_weight: 6.0 };
    let first = case.emulate::<f16>(config, Mode::ForwardBackward, GradOptions::OVERWRITE, None, GPU);
    for gpu in [GPU, EmulatedGpu { sm_count: 1, resident_blocks: 0, ..GPU }] {
        let again = case.emulate::<f16>(config, Mode::ForwardBackward, GradOptions::OVERWRITE, None, gpu);
        assert_eq!(again.loss.map(f32::to_bits), first.loss.map(f32::to_bits));
        let bits =
            |g: &[Vec<f16>]| g.iter().map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
        assert_eq!(bits(&again.grad_student), bits(&first.grad_student));
    }
}

/// Identical student and teacher: the loss and every gradient exactly 0, large channel means included.
#[test]
fn identical_inputs_give_exactly_zero() {
    let mut case = Case::new(17, &LEVELS);
    case.student = case.teacher.clone();
    for mode in [Mode::ForwardBackward, Mode::Backward { upstream: 2.0 }] {
        let got = case.emulate::<f32>(PkdConfig { loss_weight: 6.0 }, mode, GradOptions::OVERWRITE, None, GPU);
        if let Some(loss) = got.loss {
            assert_eq!(loss, 0.0);
        }
        assert!(got.grad_student.iter().flatten().all(|&g| g == 0.0), "{mode:?}");
    }
}

/// A student within 1e-3 of its teacher (correlations of 1 - 1e-7): the loss and the gradient are small
/// differences, which the kernels form from S - T and the co-moment of S and S - T, not as differences of
/// large sums.
#[test]
fn a_student_close_to_its_teacher() {
    let mut case = Case::new(23, &LEVELS);
    let mut rng = SplitMix64::new(29);
    case.student = case.teacher.iter().map(|t| t.iter().map(|&v| v + (1e-3 * rng.normal()) as f32).collect()).collect();
    let config = PkdConfig::default();
    let reference = case.reference::<f32>(config, 1.0);
    let got = case.emulate::<f32>(config, Mode::ForwardBackward, GradOptions::OVERWRITE, None, GPU);
    compare("close", &got, &reference, Mode::ForwardBackward, 1.0, None);
}

/// A constant student channel: x_hat = 0 and the gradient's std term dropped, as the reference (and torch's
/// autograd of `std`) does; a constant teacher channel is smooth. Each channel is held to its own scale: the
/// constant channel's gradient (divided by the eps, 1e-6) is far larger than the others'.
#[test]
fn constant_channels_match_the_reference() {
    let mut case = Case::new(19, &LEVELS[..3]);
    let [n, c, h, w] = LEVELS[0];
    let plane = h * w;
    for img in 0..n {
        case.student[0][(img * c + 1) * plane..(img * c + 2) * plane].fill(2.5); // student channel 1: constant
        case.teacher[0][(img * c + 3) * plane..(img * c + 4) * plane].fill(-1.0);
        // teacher channel 3: constant
    }
    fn run<T: KdFloat>(case: &Case, [n, c, h, w]: [usize; 4]) {
        let config = PkdConfig::default();
        let reference = case.reference::<T>(config, 1.0);
        let got = case.emulate::<T>(config, Mode::ForwardBackward, GradOptions::OVERWRITE, None, GPU);
        close("loss", T::DTYPE, OutputKind::Loss, [got.loss.unwrap() as f64], [reference.loss]);
        let plane = h * w;
        let g = &got.grad_student[0];
        let r: Vec<f64> = reference.grad_student[0].iter().copied().collect();
        for ch in 0..c {
            let pick = |v: &dyn Fn(usize) -> f64| -> Vec<f64> {
                (0..n).flat_map(|img| (0..plane).map(move |p| (img * c + ch) * plane + p)).map(v).collect()
            };
            let got_c = pick(&|i| g[i].to_f64());
            let want_c = pick(&|i| r[i]);
            close(&format!("channel {ch}"), T::DTYPE, OutputKind::Tensor, got_c, want_c);
        }
        for l in 1..3 {
            close(
                "other level",
                T::DTYPE,
                OutputKind::Tensor,
                widen(&got.grad_student[l]),
                reference.grad_student[l].iter().copied(),
            );
        }
    }
    run::<f32>(&case, LEVELS[0]);
    run::<bf16>(&case, LEVELS[0]);
}

#[test]
fn typed_errors() {
    // A level whose student and teacher differ: resize first.
    let e = PkdLevels::new(&[&[2, 3, 8, 8], &[2, 3, 4, 4]], &[&[2, 3, 8, 8], &[2, 3, 5, 5]]).unwrap_err();
    assert!(matches!(e, KdError::LevelShapeMismatch { level: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("resize the student"), "{e}");
    // One value per channel: no unbiased std.
    let e = PkdLevels::same(&[[2, 3, 4, 4], [1, 5, 1, 1]]).unwrap_err();
    assert!(matches!(e, KdError::TooFewValues { got: 1, needed: 2, .. }), "{e:?}");
    // More levels than one call takes.
    let dims = [[1, 1, 1, 2]; MAX_LEVELS + 1];
    let levels = PkdLevels::same(&dims).unwrap();
    let v = vec![1.0f32, 2.0];
    let inputs: Vec<&[f32]> = vec![&v; MAX_LEVELS + 1];
    let forward_error = |config: PkdConfig, levels: &PkdLevels, s: &[&[f32]], t: &[&[f32]]| {
        pkd(&config, levels, s, t, Mode::Forward, GradOptions::OVERWRITE, None, GPU).unwrap_err()
    };
    let e = forward_error(PkdConfig::default(), &levels, &inputs, &inputs);
    assert!(matches!(e, KdError::TooLarge { .. }), "{e:?}");
    // Buffers: one per level, each large enough.
    let levels = PkdLevels::same(&[[1, 1, 1, 2], [1, 1, 1, 2]]).unwrap();
    let e = forward_error(PkdConfig::default(), &levels, &inputs[..1], &inputs[..2]);
    assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e:?}");
    let short: Vec<&[f32]> = vec![&v[..1], &v];
    let e = forward_error(PkdConfig::default(), &levels, &short, &inputs[..2]);
    assert!(matches!(e, KdError::BufferTooSmall { .. }), "{e:?}");
    // A configuration that is not finite.
    let e = forward_error(PkdConfig { loss_weight: f64::NAN }, &levels, &inputs[..2], &inputs[..2]);
    assert!(matches!(e, KdError::InvalidParameter { .. }), "{e:?}");
}

/// The recorded fixtures (mmrazor's values, torch 2.15) through the emulated kernels, with the GPU rows of the
/// tolerance table (the kernels store gradients in the input dtype).
#[test]
fn fixtures_through_the_emulated_kernels() {
    use safetensors::{Dtype, SafeTensors};
    for (name, bytes, meta) in recorded_fixtures("pkd_", 5) {
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let f64s = |n: &str| stored_tensor(&name, &st, n);
        let levels: usize = meta["num_levels"].parse().unwrap();
        let config = PkdConfig { loss_weight: meta["loss_weight"].parse().unwrap() };
        let (mut dims, mut student, mut teacher) = (Vec::new(), Vec::new(), Vec::new());
        for l in 0..levels {
            let (shape, s, _) = f64s(&format!("student.{l}"));
            dims.push(<[usize; 4]>::try_from(shape).unwrap());
            student.push(s);
            teacher.push(f64s(&format!("teacher.{l}")).1);
        }
        let dtype = f64s("student.0").2;
        let level_set = PkdLevels::same(&dims).unwrap();
        let (loss, grads, kd_dtype) = match dtype {
            Dtype::F32 => run_fixture::<f32>(config, &level_set, &student, &teacher),
            Dtype::F16 => run_fixture::<f16>(config, &level_set, &student, &teacher),
            Dtype::BF16 => run_fixture::<bf16>(config, &level_set, &student, &teacher),
            other => panic!("{name}: student is {other:?}"),
        };
        close(&format!("{name} loss"), kd_dtype, OutputKind::Loss, [loss as f64], f64s("loss").1);
        let mut checked = 0;
        for (l, g) in grads.iter().enumerate() {
            let key = format!("grad.student.{l}");
            if st.tensor(&key).is_err() {
                continue; // an official gradient that was not finite (the file lists it)
            }
            close(&format!("{name} {key}"), kd_dtype, OutputKind::Tensor, g.iter().copied(), f64s(&key).1);
            checked += 1;
        }
        assert!(checked > 0, "{name}: no gradient checked");
    }
}

fn run_fixture<T: KdFloat>(
    config: PkdConfig,
    levels: &PkdLevels,
    student: &[Vec<f64>],
    teacher: &[Vec<f64>],
) -> (f32, Vec<Vec<f64>>, DType) {
    let round = |v: &Vec<f64>| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
    let s: Vec<Vec<T>> = student.iter().map(round).collect();
    let t: Vec<Vec<T>> = teacher.iter().map(round).collect();
    let sr: Vec<&[T]> = s.iter().map(|v| v.as_slice()).collect();
    let tr: Vec<&[T]> = t.iter().map(|v| v.as_slice()).collect();
    let out = pkd(&config, levels, &sr, &tr, Mode::ForwardBackward, GradOptions::OVERWRITE, None, GPU).unwrap();
    (out.loss.unwrap(), out.grad_student.iter().map(|g| widen(g)).collect(), T::DTYPE)
}
