//! The DIST kernels (kernels/dist.cu) run on the host through the emulator, against the f64 CPU reference:
//! every dtype and mode, odd shapes (odd C, odd H*W, C = 1, several tiles per block and several blocks per
//! class), accumulate + scale, a constant pixel row and a student constant over the batch, bitwise
//! determinism, typed errors, and the recorded fixtures (the official code's values) through the kernels.

use crate::common;
use crate::pair::{check_close, compare, per_dtype_tests, recorded_fixtures};

use common::{logits, to_dtype, widen, SplitMix64};
use half::{bf16, f16};
use kd_kernels::dist::{Dist, DistConfig, DistCpu};
use kd_kernels::emulator::{self, EmulatedGpu, EmulatedOutput, Mode};
use kd_kernels::tolerance::{tolerance, OutputKind};
use kd_kernels::{DType, GradOptions, KdError, KdFloat};
use ndarray::ArrayView4;

/// One SM: `dist_stats` gets 8 blocks, so a few thousand pixels already give several tiles per block and
/// every class several blocks' partials; `dist_grad`'s threads stride over the pixels.
const ONE_SM: EmulatedGpu = EmulatedGpu { sm_count: 1, resident_blocks: 6, max_dynamic_smem: 48 * 1024 };
const MODES: [Mode; 3] = [Mode::Forward, Mode::ForwardBackward, Mode::Backward { upstream: 2.5 }];

fn emulate<T: KdFloat>(config: &DistConfig, dims: [usize; 4], s: &[T], t: &[T], mode: Mode) -> EmulatedOutput<T> {
    emulator::pair::<Dist, T>(config, (), &dims, s, t, mode, ONE_SM).unwrap()
}

/// Every mode of one case against the CPU reference on the same (rounded) inputs.
fn check_modes<T: KdFloat>(what: &str, config: DistConfig, dims: [usize; 4], s: &[T], t: &[T]) {
    let sv = ArrayView4::from_shape(dims, s).unwrap();
    let tv = ArrayView4::from_shape(dims, t).unwrap();
    let cpu = DistCpu::new(config).unwrap();
    for mode in MODES {
        let what = format!("{what} {} {dims:?} {mode:?}", T::DTYPE);
        let upstream = if let Mode::Backward { upstream } = mode { upstream as f64 } else { 1.0 };
        let reference = cpu.backward(sv, tv, upstream).unwrap();
        let got = emulate(&config, dims, s, t, mode);
        assert!(got.grad_teacher.is_none());
        compare(&what, &got, &reference, mode);
    }
}

fn random_case<T: KdFloat>(config: DistConfig, dims: [usize; 4], scale: f64, outliers: usize, seed: u64) {
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(seed);
    let s: Vec<T> = to_dtype(&logits(&mut rng, numel, scale, outliers));
    let t: Vec<T> = to_dtype(&logits(&mut rng, numel, scale, outliers));
    check_modes(&format!("{config:?}"), config, dims, &s, &t);
}

fn every_shape<T: KdFloat>() {
    let weighted = DistConfig { tau: 2.0, beta: 1.5, gamma: 0.5, loss_weight: 3.0 };
    random_case::<T>(DistConfig::default(), [2, 19, 9, 11], 2.0, 3, 1);
    random_case::<T>(weighted, [3, 7, 5, 13], 2.0, 2, 2);
    random_case::<T>(DistConfig { tau: 4.0, ..DistConfig::default() }, [1, 1, 3, 5], 2.0, 0, 3);
    random_case::<T>(DistConfig { gamma: 0.0, ..weighted }, [2, 3, 1, 1], 1.0, 0, 4);
    // 2 x 37 x 31 = 2294 pixels: 5 tiles of 512 over 5 blocks (8 would be idle).
    random_case::<T>(DistConfig { beta: 0.0, ..weighted }, [2, 5, 37, 31], 3.0, 4, 5);
}

per_dtype_tests!(every_shape: matches_the_reference_f32, matches_the_reference_f16, matches_the_reference_bf16);

/// 9 tiles of 512 pixels on 8 blocks: block 0 adds two tiles into its partials.
#[test]
fn blocks_take_several_tiles() {
    random_case::<f32>(DistConfig { tau: 2.0, ..DistConfig::default() }, [1, 3, 67, 67], 2.0, 2, 6);
}

/// Nearly uniform distributions (logits of spread 1e-3): the centred probabilities are about 1e-4 and their
/// correlations still match the f64 reference (p - 1/C in fp32 would have cancelled them).
#[test]
fn nearly_uniform_distributions_keep_their_correlations() {
    let dims = [2, 6, 7, 5];
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(7);
    let s: Vec<f32> = (0..numel).map(|_| (1e-3 * rng.normal()) as f32).collect();
    let t: Vec<f32> = (0..numel).map(|_| (1e-3 * rng.normal()) as f32).collect();
    check_modes("nearly uniform", DistConfig::default(), dims, &s, &t);
}

/// A student pixel whose logits are all equal has centred probabilities of exactly 0: the derivative of its
/// correlation is then the teacher's centred row over the eps (about 1e8 times the others), as in the
/// reference. A student the same at every pixel (a zero-initialised last layer) has every class constant over
/// the batch: the intra-class terms' derivatives are the teacher's deviations over the eps.
#[test]
fn constant_rows_and_constant_classes() {
    let dims = [2, 5, 3, 7];
    let (n, c, plane) = (dims[0], dims[1], dims[2] * dims[3]);
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(8);
    let mut s = logits(&mut rng, numel, 2.0, 0);
    let t = logits(&mut rng, numel, 2.0, 0);
    for k in 0..c {
        s[(n - 1) * c * plane + k * plane + 4] = 0.625;
    }
    check_modes("constant row", DistConfig::default(), dims, &s, &t);
    let per_class: Vec<f32> = (0..c).map(|_| rng.normal() as f32).collect();
    let constant: Vec<f32> = (0..numel).map(|i| per_class[(i / plane) % c]).collect();
    check_modes("constant student", DistConfig { tau: 2.0, ..DistConfig::default() }, dims, &constant, &t);
}

#[test]
fn identical_inputs_give_zero_up_to_the_eps() {
    let dims = [2, 6, 5, 3];
    let numel: usize = dims.iter().product();
    let s = logits(&mut SplitMix64::new(9), numel, 2.0, 1);
    let got = emulate(&DistConfig::default(), dims, &s, &s, Mode::ForwardBackward);
    let loss = got.loss.unwrap();
    assert!((0.0..1e-5).contains(&loss), "{loss}");
    let g = got.grad_student.unwrap().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(g < 1e-5, "{g}");
}

fn accumulate_and_scale<T: KdFloat>() {
    let dims = [2, 7, 9, 5];
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(10);
    let s: Vec<T> = to_dtype(&logits(&mut rng, numel, 2.0, 2));
    let t: Vec<T> = to_dtype(&logits(&mut rng, numel, 2.0, 2));
    // Of the gradients' magnitude, so that a kernel that dropped the buffer's values would fail.
    let initial: Vec<T> = to_dtype(&logits(&mut rng, numel, 1e-3, 0));
    let config = DistConfig { tau: 2.0, beta: 2.0, gamma: 0.5, loss_weight: 3.0 };
    let cpu = DistCpu::new(config).unwrap();
    let (sv, tv) = (ArrayView4::from_shape(dims, &s[..]).unwrap(), ArrayView4::from_shape(dims, &t[..]).unwrap());
    for mode in [Mode::ForwardBackward, Mode::Backward { upstream: 2.5 }] {
        let upstream = if let Mode::Backward { upstream } = mode { upstream as f64 } else { 1.0 };
        let r = cpu.backward(sv, tv, upstream).unwrap();
        for (scale, accumulate) in [(-0.75, true), (1.0, true), (4.0, false)] {
            let options = GradOptions { scale, accumulate };
            let got = emulator::pair_with::<Dist, T>(&config, (), &dims, &s, &t, mode, ONE_SM, options, Some(&initial))
                .unwrap();
            let what = format!("{} {mode:?} {options:?}", T::DTYPE);
            let want: Vec<f64> = r
                .grad_student
                .iter()
                .enumerate()
                .map(|(i, g)| if accumulate { initial[i].to_f64() } else { 0.0 } + scale * g)
                .collect();
            let tol = tolerance(T::DTYPE, OutputKind::Tensor);
            check_close(&format!("{what} grad"), &widen(got.grad_student.as_ref().unwrap()), &want, tol);
            if mode == Mode::ForwardBackward {
                let tol = tolerance(T::DTYPE, OutputKind::Loss);
                check_close(&format!("{what} loss (never scaled)"), &[got.loss.unwrap() as f64], &[r.loss], tol);
            }
        }
    }
}

#[test]
fn accumulate_and_scale_f32() {
    accumulate_and_scale::<f32>();
}

#[test]
fn accumulate_and_scale_bf16() {
    accumulate_and_scale::<bf16>();
}

#[test]
fn is_bitwise_deterministic() {
    let dims = [2, 5, 37, 31];
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(11);
    let s: Vec<f16> = to_dtype(&logits(&mut rng, numel, 2.0, 3));
    let t: Vec<f16> = to_dtype(&logits(&mut rng, numel, 2.0, 3));
    let config = DistConfig { tau: 2.0, ..DistConfig::default() };
    let a = emulate(&config, dims, &s, &t, Mode::ForwardBackward);
    let b = emulate(&config, dims, &s, &t, Mode::ForwardBackward);
    assert_eq!(a.loss.unwrap().to_bits(), b.loss.unwrap().to_bits());
    let bits = |g: &[f16]| g.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a.grad_student.as_ref().unwrap()), bits(b.grad_student.as_ref().unwrap()));
}

#[test]
fn bad_calls_give_typed_errors() {
    let ok = [0.0f32; 2 * 3 * 2 * 2];
    let dims = [2, 3, 2, 2];
    let run = |config: DistConfig, dims: &[usize], s: &[f32]| {
        emulator::pair::<Dist, f32>(&config, (), dims, s, &ok, Mode::ForwardBackward, ONE_SM)
    };
    let bad_tau = DistConfig { tau: 0.0, ..DistConfig::default() };
    assert!(matches!(run(bad_tau, &dims, &ok), Err(KdError::InvalidParameter { name: "tau", .. })));
    let huge = DistConfig { loss_weight: 1e30, tau: 1e10, ..DistConfig::default() };
    assert!(matches!(run(huge, &dims, &ok), Err(KdError::InvalidParameter { .. })));
    assert!(matches!(run(DistConfig::default(), &[2, 3, 2, 3], &ok), Err(KdError::BufferTooSmall { .. })));
    assert!(matches!(run(DistConfig::default(), &[2, 3, 0, 2], &ok), Err(KdError::EmptyInput { .. })));
    let many = vec![0.0f32; 2049];
    let r =
        emulator::pair::<Dist, f32>(&DistConfig::default(), (), &[1, 2049, 1, 1], &many, &many, Mode::Forward, ONE_SM);
    match r {
        Err(KdError::TooLarge { detail, .. }) => assert!(detail.contains("2048"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

/// The recorded fixtures (the official code's values, in fp32 from the stored inputs) through the emulated
/// kernels, with the GPU rows of the tolerance table.
#[test]
fn fixtures_through_the_kernels() {
    use safetensors::{Dtype, SafeTensors};
    for (what, bytes, meta) in recorded_fixtures("dist_", 6) {
        let param = |name: &str| meta.get(name).map_or(1.0, |v| v.parse::<f64>().unwrap());
        let config = DistConfig {
            tau: param("tau"),
            beta: param("beta"),
            gamma: param("gamma"),
            loss_weight: param("loss_weight"),
        };
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let f32s = |name: &str| -> Vec<f64> {
            let t = st.tensor(name).unwrap();
            assert_eq!(t.dtype(), Dtype::F32, "{name}");
            t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
        };
        let student = st.tensor("student").unwrap();
        let teacher = st.tensor("teacher").unwrap();
        let dims: [usize; 4] = student.shape().try_into().unwrap();
        fn run<T: KdFloat>(
            config: DistConfig,
            dims: [usize; 4],
            s: &[u8],
            t: &[u8],
            decode: fn(&[u8]) -> T,
        ) -> (f64, Vec<f64>) {
            let size = std::mem::size_of::<T>();
            let s: Vec<T> = s.chunks_exact(size).map(decode).collect();
            let t: Vec<T> = t.chunks_exact(size).map(decode).collect();
            let r = emulate(&config, dims, &s, &t, Mode::ForwardBackward);
            (r.loss.unwrap() as f64, widen(r.grad_student.as_ref().unwrap()))
        }
        let (s, t) = (student.data(), teacher.data());
        let (dtype, (loss, grad)) = match student.dtype() {
            Dtype::F32 => {
                (DType::F32, run::<f32>(config, dims, s, t, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            }
            Dtype::F16 => (DType::F16, run::<f16>(config, dims, s, t, |c| f16::from_le_bytes([c[0], c[1]]))),
            Dtype::BF16 => (DType::BF16, run::<bf16>(config, dims, s, t, |c| bf16::from_le_bytes([c[0], c[1]]))),
            other => panic!("{what}: dtype {other:?}"),
        };
        check_close(&format!("{what} loss"), &[loss], &f32s("loss"), tolerance(dtype, OutputKind::Loss));
        check_close(&format!("{what} grad"), &grad, &f32s("grad.student"), tolerance(dtype, OutputKind::Tensor));
    }
}
