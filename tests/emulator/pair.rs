//! The kernels' own CUDA source, run on the CPU through `kernels/emulator` (feature `emulator`), against
//! the f64 CPU reference: every dtype, every entry point, both CWD paths, odd shapes, rows split into many
//! chunks, misaligned buffers, extreme logits. This is how the kernels' logic is tested on machines without
//! a GPU; `tests/gpu` runs the same comparisons on a real device.

use crate::common;

use common::{logits, to_dtype, widen, SplitMix64, PAIR_SCENARIOS};
use half::{bf16, f16};
use kd_kernels::cpu::CpuOutput;
use kd_kernels::cwd::{Cwd, CwdConfig, CwdCpu, CwdPath};
use kd_kernels::emulator::{self, EmulatedGpu, EmulatedOutput, Mode};
use kd_kernels::pixel_kd::{PixelKd, PixelKdConfig, PixelKdCpu, PixelKdPath, Reduction};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::{GradOptions, KdError, KdFloat};
use ndarray::ArrayView4;

const H100: EmulatedGpu = EmulatedGpu::H100_SMALL_GRID;

fn check_close(what: &str, got: &[f64], reference: &[f64], tol: f64) {
    assert_eq!(got.len(), reference.len(), "{what}: length");
    let c = Comparison::of(got.iter().copied(), reference.iter().copied());
    assert!(c.passes(tol), "{what}: max_rel_err {:e} > {tol:e} ({c:?})", c.max_rel_err);
}

fn compare<T: KdFloat>(what: &str, emulated: &EmulatedOutput<T>, reference: &CpuOutput, mode: Mode) {
    let dtype = T::DTYPE;
    match mode {
        Mode::Backward { .. } => assert!(emulated.loss.is_none(), "{what}: backward must not write the loss"),
        _ => check_close(
            &format!("{what} loss"),
            &[emulated.loss.expect("loss") as f64],
            &[reference.loss],
            tolerance(dtype, OutputKind::Loss),
        ),
    }
    if mode == Mode::Forward {
        assert!(emulated.grad_student.is_none());
        return;
    }
    let grad = widen(emulated.grad_student.as_ref().expect("grad_student"));
    let reference_grad: Vec<f64> = reference.grad_student.iter().copied().collect();
    check_close(&format!("{what} grad.student"), &grad, &reference_grad, tolerance(dtype, OutputKind::Tensor));
    if let Some(reference_teacher) = &reference.grad_teacher {
        let got = widen(emulated.grad_teacher.as_ref().expect("grad_teacher"));
        let reference: Vec<f64> = reference_teacher.iter().copied().collect();
        check_close(&format!("{what} grad.teacher"), &got, &reference, tolerance(dtype, OutputKind::Tensor));
    }
}

fn cpu_reference<T: KdFloat>(
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

const MODES: [Mode; 3] = [Mode::Forward, Mode::ForwardBackward, Mode::Backward { upstream: 2.5 }];
const CWD_PATHS: [CwdPath; 2] = [CwdPath::SinglePass, CwdPath::TwoPass];

/// How one CWD case is run: which kernels, for which GPU, and at which element offsets the student and the
/// teacher start (offsets move them off the 16-byte alignment the vector paths want; unequal offsets make
/// the two buffers impossible to align together, which forces the scalar paths).
#[derive(Debug, Clone, Copy)]
struct CwdRun {
    path: CwdPath,
    gpu: EmulatedGpu,
    offsets: [usize; 2],
}

impl CwdRun {
    fn on(path: CwdPath) -> Self {
        CwdRun { path, gpu: H100, offsets: [0, 0] }
    }
}

fn cwd_case<T: KdFloat>(dims: [usize; 4], config: CwdConfig, scale: f64, run: CwdRun, seed: u64) {
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(seed);
    let [os, ot] = run.offsets;
    let student: Vec<T> = to_dtype(&logits(&mut rng, numel + os, scale, numel / 50 + 1));
    let teacher: Vec<T> = to_dtype(&logits(&mut rng, numel + ot, scale, numel / 50 + 1));
    cwd_every_mode(dims, config, &student[os..], &teacher[ot..], run);
}

/// Every entry point ([`MODES`]) through the emulated kernels against the CPU reference.
fn cwd_every_mode<T: KdFloat>(dims: [usize; 4], config: CwdConfig, s: &[T], t: &[T], run: CwdRun) {
    let cpu = CwdCpu::new(config).unwrap();
    for mode in MODES {
        let emulated = emulator::pair::<Cwd, _>(&config, run.path, &dims, s, t, mode, run.gpu).unwrap();
        let reference = cpu_reference(|s, t, up| cpu.backward(s, t, up).unwrap(), dims, s, t, mode);
        let what = format!("cwd {:?} {dims:?} {config:?} {run:?} {mode:?}", T::DTYPE);
        compare(&what, &emulated, &reference, mode);
    }
}

/// One `forward_backward` through the emulated kernels of `path`, against the CPU reference.
fn cwd_forward_backward_matches(
    what: &str,
    config: CwdConfig,
    path: CwdPath,
    dims: [usize; 4],
    student: &[f32],
    teacher: &[f32],
    gpu: EmulatedGpu,
) {
    let emulated =
        emulator::pair::<Cwd, _>(&config, path, &dims, student, teacher, Mode::ForwardBackward, gpu).unwrap();
    let cpu = CwdCpu::new(config).unwrap();
    let reference =
        cpu_reference(|s, t, up| cpu.backward(s, t, up).unwrap(), dims, student, teacher, Mode::ForwardBackward);
    compare(what, &emulated, &reference, Mode::ForwardBackward);
}

/// The shared scenarios (`common::PAIR_SCENARIOS`) small enough for the emulation, on both CWD paths.
fn cwd_all_scenarios<T: KdFloat>() {
    for scenario in PAIR_SCENARIOS.iter().filter(|s| s.on_emulator()) {
        let (s, t) = scenario.logits();
        let (s, t): (Vec<T>, Vec<T>) = (to_dtype(&s), to_dtype(&t));
        for path in CWD_PATHS {
            cwd_every_mode(scenario.dims, scenario.cwd_config(T::DTYPE), &s, &t, CwdRun::on(path));
        }
    }
}

#[test]
fn cwd_matches_the_reference_f32() {
    cwd_all_scenarios::<f32>();
}

#[test]
fn cwd_matches_the_reference_f16() {
    cwd_all_scenarios::<f16>();
}

#[test]
fn cwd_matches_the_reference_bf16() {
    cwd_all_scenarios::<bf16>();
}

#[test]
fn cwd_two_pass_rows_split_into_many_chunks() {
    // 1 x 2 rows of 40000: with 1000 SMs the plan asks for many chunks per row, and the merge of the
    // chunk statistics in cwd_finish is what is tested.
    let config = CwdConfig { tau: 2.0, loss_weight: 1.0, teacher_grad: true };
    let run =
        CwdRun { gpu: EmulatedGpu { sm_count: 1000, resident_blocks: 0, ..H100 }, ..CwdRun::on(CwdPath::TwoPass) };
    cwd_case::<f32>([1, 2, 200, 200], config, 4.0, run, 7);
    cwd_case::<bf16>([1, 2, 200, 200], config, 4.0, run, 8);
}

#[test]
fn cwd_single_pass_rows_of_many_chunks_over_many_rounds() {
    // Rows of 10 f32 chunks (40000 elements) and 5 bf16 ones; 15 rows, 2 rows (f32) or 4 (bf16) per round
    // of the 20 resident blocks: blocks wait for the rest of their row, move on to later rows, and the
    // per-row counters are reused across rounds.
    let config = CwdConfig { tau: 2.0, loss_weight: 1.0, teacher_grad: true };
    let gpu = EmulatedGpu { resident_blocks: 20, ..H100 };
    let run = CwdRun { gpu, ..CwdRun::on(CwdPath::SinglePass) };
    cwd_case::<f32>([3, 5, 200, 200], config, 4.0, run, 17);
    cwd_case::<bf16>([3, 5, 200, 200], config, 4.0, run, 18);
}

#[test]
fn cwd_single_pass_chunk_boundaries() {
    // Rows exactly one register chunk long (4096 f32, 8192 16-bit), one element more, and one less; with and
    // without a lead (the row's misalignment), so that the padded row just fits or just spills into a chunk.
    let config = CwdConfig { tau: 1.0, loss_weight: 2.0, teacher_grad: true };
    for len in [4095, 4096, 4097, 8191, 8192, 8193] {
        for offset in [0, 3] {
            let run = CwdRun { offsets: [offset, offset], ..CwdRun::on(CwdPath::SinglePass) };
            cwd_case::<f32>([1, 3, 1, len], config, 2.0, run, len as u64);
            cwd_case::<bf16>([1, 3, 1, len], config, 2.0, run, len as u64 + 1);
        }
    }
}

#[test]
fn cwd_misaligned_buffers_take_the_scalar_paths() {
    let config = CwdConfig { tau: 1.0, loss_weight: 1.0, teacher_grad: true };
    for path in CWD_PATHS {
        for offsets in [[1, 1], [2, 2], [3, 3], [1, 0], [0, 3], [5, 2]] {
            let run = CwdRun { offsets, ..CwdRun::on(path) };
            cwd_case::<f32>([2, 3, 9, 31], config, 2.0, run, 20 + offsets[0] as u64);
            cwd_case::<f16>([2, 3, 9, 31], config, 2.0, run, 30 + offsets[1] as u64);
            cwd_case::<bf16>([1, 2, 77, 113], config, 2.0, run, 40 + offsets[1] as u64);
        }
    }
}

#[test]
fn cwd_auto_takes_two_passes_where_rows_outgrow_the_resident_grid() {
    // 3 resident blocks hold rows of up to 3 f32 chunks: longer rows go through the two passes under Auto,
    // and forcing the single pass is a typed error.
    let config = CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: false };
    let gpu = EmulatedGpu { sm_count: 4, resident_blocks: 3, ..H100 };
    cwd_case::<f32>([2, 2, 100, 150], config, 3.0, CwdRun { gpu, ..CwdRun::on(CwdPath::Auto) }, 50);
    let x = vec![0.0f32; 2 * 2 * 100 * 150];
    let forced = emulator::pair::<Cwd, _>(&config, CwdPath::SinglePass, &[2, 2, 100, 150], &x, &x, Mode::Forward, gpu);
    assert!(matches!(forced, Err(KdError::Unsupported { .. })), "{forced:?}");
}

#[test]
fn cwd_large_logits_keep_their_accuracy() {
    // Logits near 1e4 with a spread of a few units: only differences of inputs may enter the softmax, so
    // the result must be as accurate as for logits near 0. (Student and teacher far apart from each other,
    // e.g. +1e4 against -1e4, is a documented fp32 limit: see the README's numerics notes.)
    let dims = [1, 2, 6, 7];
    let mut rng = SplitMix64::new(99);
    let student: Vec<f32> = logits(&mut rng, 84, 2.0, 0).iter().map(|v| v + 10_000.0).collect();
    let teacher: Vec<f32> = logits(&mut rng, 84, 2.0, 0).iter().map(|v| v + 10_000.0).collect();
    let config = CwdConfig { tau: 1.0, loss_weight: 1.0, teacher_grad: false };
    for path in CWD_PATHS {
        cwd_forward_backward_matches(
            &format!("cwd large logits {path:?}"),
            config,
            path,
            dims,
            &student,
            &teacher,
            H100,
        );
    }
}

#[test]
fn cwd_identical_inputs_give_exactly_zero() {
    let dims = [2, 3, 5, 7];
    let mut rng = SplitMix64::new(5);
    let x: Vec<f32> = logits(&mut rng, 210, 5.0, 3);
    let config = CwdConfig::default();
    for path in CWD_PATHS {
        let out = emulator::pair::<Cwd, _>(&config, path, &dims, &x, &x, Mode::ForwardBackward, H100).unwrap();
        assert_eq!(out.loss, Some(0.0), "{path:?}");
        assert!(out.grad_student.unwrap().iter().all(|&g| g == 0.0), "{path:?}");
    }
}

#[test]
fn cwd_is_bitwise_deterministic() {
    let dims = [2, 5, 33, 265];
    let mut rng = SplitMix64::new(3);
    let numel = dims.iter().product();
    let s: Vec<f32> = logits(&mut rng, numel, 3.0, 10);
    let t: Vec<f32> = logits(&mut rng, numel, 3.0, 10);
    let config = CwdConfig { tau: 1.0, loss_weight: 1.0, teacher_grad: true };
    let gpu = EmulatedGpu { sm_count: 64, resident_blocks: 9, ..H100 };
    for path in CWD_PATHS {
        let a = emulator::pair::<Cwd, _>(&config, path, &dims, &s, &t, Mode::ForwardBackward, gpu).unwrap();
        let b = emulator::pair::<Cwd, _>(&config, path, &dims, &s, &t, Mode::ForwardBackward, gpu).unwrap();
        assert_eq!(a.loss.unwrap().to_bits(), b.loss.unwrap().to_bits(), "{path:?}");
        assert_eq!(a.grad_student, b.grad_student, "{path:?}");
        assert_eq!(a.grad_teacher, b.grad_teacher, "{path:?}");
    }
}

const PIXEL_PATHS: [PixelKdPath; 2] = [PixelKdPath::Tiled, PixelKdPath::PerPixel];

fn pixel_case<T: KdFloat>(
    dims: [usize; 4],
    config: PixelKdConfig,
    scale: f64,
    path: PixelKdPath,
    gpu: EmulatedGpu,
    seed: u64,
) {
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(seed);
    let student: Vec<T> = to_dtype(&logits(&mut rng, numel, scale, numel / 50 + 1));
    let teacher: Vec<T> = to_dtype(&logits(&mut rng, numel, scale, numel / 50 + 1));
    pixel_every_mode(dims, config, &student, &teacher, path, gpu);
}

/// Every entry point ([`MODES`]) through the emulated kernels against the CPU reference.
fn pixel_every_mode<T: KdFloat>(
    dims: [usize; 4],
    config: PixelKdConfig,
    student: &[T],
    teacher: &[T],
    path: PixelKdPath,
    gpu: EmulatedGpu,
) {
    let cpu = PixelKdCpu::new(config).unwrap();
    for mode in MODES {
        let emulated = emulator::pair::<PixelKd, _>(&config, path, &dims, student, teacher, mode, gpu).unwrap();
        let reference = cpu_reference(|s, t, up| cpu.backward(s, t, up).unwrap(), dims, student, teacher, mode);
        let what = format!("pixel_kd {:?} {dims:?} {config:?} {path:?} {gpu:?} {mode:?}", T::DTYPE);
        compare(&what, &emulated, &reference, mode);
    }
}

/// The shared scenarios small enough for the emulation, on both pixel-KD kernels.
fn pixel_all_scenarios<T: KdFloat>() {
    for scenario in PAIR_SCENARIOS.iter().filter(|s| s.on_emulator()) {
        let (s, t) = scenario.logits();
        let (s, t): (Vec<T>, Vec<T>) = (to_dtype(&s), to_dtype(&t));
        for path in PIXEL_PATHS {
            pixel_every_mode(scenario.dims, scenario.pixel_kd_config(T::DTYPE), &s, &t, path, H100);
        }
    }
}

#[test]
fn pixel_kd_matches_the_reference_f32() {
    pixel_all_scenarios::<f32>();
}

#[test]
fn pixel_kd_matches_the_reference_f16() {
    pixel_all_scenarios::<f16>();
}

#[test]
fn pixel_kd_matches_the_reference_bf16() {
    pixel_all_scenarios::<bf16>();
}

#[test]
fn pixel_kd_threads_stride_over_many_pixels() {
    // One SM: a grid of 8 blocks, so each thread of the per-pixel kernel takes several pixels.
    let gpu = EmulatedGpu { sm_count: 1, ..H100 };
    pixel_case::<f32>([3, 19, 31, 29], PixelKdConfig::default(), 4.0, PixelKdPath::PerPixel, gpu, 77);
}

#[test]
fn pixel_kd_tiles_of_every_width() {
    // Channel counts that give tiles of 256, 128, 64 and 32 pixels (1, 2, 4, 8 threads per pixel), planes that
    // end in a partial tile, and more tiles than the 6 resident blocks, so blocks stride over several.
    let config = PixelKdConfig { tau: 2.0, loss_weight: 3.0, reduction: Reduction::Sum, scale_tau2: true };
    for (dims, seed) in [([2, 19, 23, 29], 80), ([2, 60, 9, 31], 81), ([1, 150, 17, 9], 82), ([2, 256, 7, 11], 83)] {
        pixel_case::<f32>(dims, config, 3.0, PixelKdPath::Tiled, H100, seed);
        pixel_case::<bf16>(dims, config, 3.0, PixelKdPath::Tiled, H100, seed + 10);
    }
    // Beyond 48 KiB: 300 f32 channels need 76.8 KiB for the narrowest tile, which an H100 allows a block.
    pixel_case::<f32>([1, 300, 5, 13], config, 3.0, PixelKdPath::Tiled, H100, 84);
}

#[test]
fn pixel_kd_auto_falls_back_to_the_per_pixel_kernel_for_many_channels() {
    // 1000 f32 channels: a 32-pixel tile needs 256,000 bytes, more than an H100 allows a block.
    let config = PixelKdConfig::default();
    pixel_case::<f32>([1, 1000, 3, 5], config, 3.0, PixelKdPath::Auto, H100, 90);
    let x = vec![0.0f32; 1000 * 15];
    let forced =
        emulator::pair::<PixelKd, _>(&config, PixelKdPath::Tiled, &[1, 1000, 3, 5], &x, &x, Mode::Forward, H100);
    assert!(matches!(forced, Err(KdError::Unsupported { .. })), "{forced:?}");
}

#[test]
fn pixel_kd_identical_inputs_give_exactly_zero() {
    let dims = [2, 7, 5, 3];
    let mut rng = SplitMix64::new(6);
    let x: Vec<bf16> = to_dtype(&logits(&mut rng, 210, 5.0, 3));
    for path in PIXEL_PATHS {
        let out =
            emulator::pair::<PixelKd, _>(&PixelKdConfig::default(), path, &dims, &x, &x, Mode::ForwardBackward, H100)
                .unwrap();
        assert_eq!(out.loss, Some(0.0), "{path:?}");
        assert!(out.grad_student.unwrap().iter().all(|&g| g.to_f64() == 0.0), "{path:?}");
    }
}

#[test]
fn pixel_kd_is_bitwise_deterministic() {
    let dims = [3, 40, 21, 19];
    let mut rng = SplitMix64::new(7);
    let numel = dims.iter().product();
    let s: Vec<f16> = to_dtype(&logits(&mut rng, numel, 3.0, 10));
    let t: Vec<f16> = to_dtype(&logits(&mut rng, numel, 3.0, 10));
    let config = PixelKdConfig { tau: 2.0, ..PixelKdConfig::default() };
    for path in PIXEL_PATHS {
        let a = emulator::pair::<PixelKd, _>(&config, path, &dims, &s, &t, Mode::ForwardBackward, H100).unwrap();
        let b = emulator::pair::<PixelKd, _>(&config, path, &dims, &s, &t, Mode::ForwardBackward, H100).unwrap();
        assert_eq!(a.loss.unwrap().to_bits(), b.loss.unwrap().to_bits(), "{path:?}");
        assert_eq!(a.grad_student, b.grad_student, "{path:?}");
    }
}

/// Student = teacher + small noise (late training): the KL is tiny next to log(H*W), the case where
/// computing it from two log-sum-exps loses the most.
fn close_student(numel: usize, seed: u64, noise: f64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64::new(seed);
    let teacher: Vec<f32> = logits(&mut rng, numel, 2.0, 0);
    let student = teacher.iter().map(|&t| t + (rng.normal() * noise) as f32).collect();
    (student, teacher)
}

#[test]
fn cwd_close_student_loss_is_accurate() {
    // [1, 2, 256, 512]: rows of 32 f32 chunks, on a cooperative grid of 64 blocks for the single pass.
    let gpu = EmulatedGpu { resident_blocks: 64, ..H100 };
    for dims in [[2, 19, 17, 33], [1, 2, 256, 512]] {
        let numel: usize = dims.iter().product();
        let (s, t) = close_student(numel, 11, 0.1);
        let config = CwdConfig { tau: 4.0, loss_weight: 1.0, teacher_grad: false };
        for path in CWD_PATHS {
            cwd_forward_backward_matches(
                &format!("cwd close student {dims:?} {path:?}"),
                config,
                path,
                dims,
                &s,
                &t,
                gpu,
            );
        }
    }
}

#[test]
fn pixel_kd_close_student_loss_is_accurate() {
    let dims = [4, 256, 9, 9];
    let (s, t) = close_student(dims.iter().product(), 12, 0.03);
    let config = PixelKdConfig { tau: 4.0, ..PixelKdConfig::default() };
    for path in PIXEL_PATHS {
        let emulated = emulator::pair::<PixelKd, _>(&config, path, &dims, &s, &t, Mode::ForwardBackward, H100).unwrap();
        let reference = cpu_reference(
            |s, t, up| PixelKdCpu::new(config).unwrap().backward(s, t, up).unwrap(),
            dims,
            &s,
            &t,
            Mode::ForwardBackward,
        );
        compare(&format!("pixel_kd close student {path:?}"), &emulated, &reference, Mode::ForwardBackward);
    }
}

/// What [`GradOptions`] promise, on one loss: with `accumulate` the gradients are added into what the buffers
/// held, `scale` multiplies the gradients (on top of a device upstream) and never the loss.
fn grad_options_follow_the_reference<T: KdFloat>(
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

fn cwd_grad_options<T: KdFloat>() {
    let dims = [2, 3, 17, 33];
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(310);
    let s: Vec<T> = to_dtype(&logits(&mut rng, numel, 2.0, 3));
    let t: Vec<T> = to_dtype(&logits(&mut rng, numel, 2.0, 3));
    let config = CwdConfig { tau: 2.0, loss_weight: 3.0, teacher_grad: true };
    let cpu = CwdCpu::new(config).unwrap();
    let (sv, tv) = (ArrayView4::from_shape(dims, &s[..]).unwrap(), ArrayView4::from_shape(dims, &t[..]).unwrap());
    for path in CWD_PATHS {
        grad_options_follow_the_reference::<T>(
            &format!("cwd {path:?}"),
            numel,
            |mode, options, initial| {
                emulator::pair_with::<Cwd, _>(&config, path, &dims, &s, &t, mode, H100, options, Some(initial)).unwrap()
            },
            |upstream| cpu.backward(sv, tv, upstream).unwrap(),
        );
    }
}

fn pixel_kd_grad_options<T: KdFloat>() {
    let dims = [2, 19, 9, 13];
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(320);
    let s: Vec<T> = to_dtype(&logits(&mut rng, numel, 2.0, 3));
    let t: Vec<T> = to_dtype(&logits(&mut rng, numel, 2.0, 3));
    let config = PixelKdConfig { tau: 2.0, loss_weight: 10.0, reduction: Reduction::BatchMean, scale_tau2: true };
    let cpu = PixelKdCpu::new(config).unwrap();
    let (sv, tv) = (ArrayView4::from_shape(dims, &s[..]).unwrap(), ArrayView4::from_shape(dims, &t[..]).unwrap());
    for path in PIXEL_PATHS {
        grad_options_follow_the_reference::<T>(
            &format!("pixel_kd {path:?}"),
            numel,
            |mode, options, initial| {
                emulator::pair_with::<PixelKd, _>(&config, path, &dims, &s, &t, mode, H100, options, Some(initial))
                    .unwrap()
            },
            |upstream| cpu.backward(sv, tv, upstream).unwrap(),
        );
    }
}

#[test]
fn cwd_accumulate_and_scale() {
    cwd_grad_options::<f32>();
    cwd_grad_options::<bf16>();
}

#[test]
fn pixel_kd_accumulate_and_scale() {
    pixel_kd_grad_options::<f32>();
    pixel_kd_grad_options::<bf16>();
}
