//! Pixel KD: the kernels' own CUDA source, run on the CPU through `kernels/emulator` (feature `emulator`), against
//! the f64 CPU reference: every dtype, every entry point, both CWD paths, odd shapes, rows split into many
//! chunks, misaligned buffers, extreme logits. This is how the kernels' logic is tested on machines without
//! a GPU; `tests/gpu` runs the same comparisons on a real device.

use crate::common::{logits, to_dtype, SplitMix64, PAIR_SCENARIOS};
use crate::pair::{
    close_student, compare, cpu_reference, grad_options_follow_the_reference, per_dtype_tests, H100, MODES,
};
use half::{bf16, f16};
use kd_kernels::emulator::{self, EmulatedGpu, Mode};
use kd_kernels::pixel_kd::{PixelKd, PixelKdConfig, PixelKdCpu, PixelKdPath, Reduction};
use kd_kernels::{KdError, KdFloat};
use ndarray::ArrayView4;

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

per_dtype_tests!(
    pixel_all_scenarios: pixel_kd_matches_the_reference_f32,
    pixel_kd_matches_the_reference_f16,
    pixel_kd_matches_the_reference_bf16
);

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
fn pixel_kd_accumulate_and_scale() {
    pixel_kd_grad_options::<f32>();
    pixel_kd_grad_options::<bf16>();
}
