//! CWD: the kernels' own CUDA source, run on the CPU through `kernels/emulator` (feature `emulator`), against
//! the f64 CPU reference: every dtype, every entry point, both CWD paths, odd shapes, rows split into many
//! chunks, misaligned buffers, extreme logits. This is how the kernels' logic is tested on machines without
//! a GPU; `tests/gpu` runs the same comparisons on a real device.

use crate::common::{logits, to_dtype, SplitMix64, PAIR_SCENARIOS};
use crate::pair::{
    close_student, compare, cpu_reference, grad_options_follow_the_reference, per_dtype_tests, H100, MODES,
};
use half::{bf16, f16};
use kd_kernels::cwd::{Cwd, CwdConfig, CwdCpu, CwdPath};
use kd_kernels::emulator::{self, EmulatedGpu, Mode};
use kd_kernels::{KdError, KdFloat};
use ndarray::ArrayView4;

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

/// One `forward_backward` through the emulated kernels of each path, against the CPU reference.
fn cwd_forward_backward_matches(
    what: &str,
    config: CwdConfig,
    dims: [usize; 4],
    student: &[f32],
    teacher: &[f32],
    gpu: EmulatedGpu,
) {
    let cpu = CwdCpu::new(config).unwrap();
    let reference =
        cpu_reference(|s, t, up| cpu.backward(s, t, up).unwrap(), dims, student, teacher, Mode::ForwardBackward);
    for path in CWD_PATHS {
        let emulated =
            emulator::pair::<Cwd, _>(&config, path, &dims, student, teacher, Mode::ForwardBackward, gpu).unwrap();
        compare(&format!("{what} {path:?}"), &emulated, &reference, Mode::ForwardBackward);
    }
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

per_dtype_tests!(cwd_all_scenarios: cwd_matches_the_reference_f32, cwd_matches_the_reference_f16, cwd_matches_the_reference_bf16);

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
    cwd_forward_backward_matches("cwd large logits", config, dims, &student, &teacher, H100);
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

#[test]
fn cwd_close_student_loss_is_accurate() {
    // [1, 2, 256, 512]: rows of 32 f32 chunks, on a cooperative grid of 64 blocks for the single pass.
    let gpu = EmulatedGpu { resident_blocks: 64, ..H100 };
    for dims in [[2, 19, 17, 33], [1, 2, 256, 512]] {
        let numel: usize = dims.iter().product();
        let (s, t) = close_student(numel, 11, 0.1);
        let config = CwdConfig { tau: 4.0, loss_weight: 1.0, teacher_grad: false };
        cwd_forward_backward_matches(&format!("cwd close student {dims:?}"), config, dims, &s, &t, gpu);
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

#[test]
fn cwd_accumulate_and_scale() {
    cwd_grad_options::<f32>();
    cwd_grad_options::<bf16>();
}
