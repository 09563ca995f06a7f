//! The ICSD kernels (kernels/icsd.cu) run on the host through the emulator, against the f64 CPU reference:
//! every dtype and mode, both variants, odd shapes (C = 19, 21, H = 1, odd W, several tile and block
//! boundaries), accumulate + scale, bitwise determinism, and the one-call AICSD objective.

use crate::common;
use crate::pair::{check_close, compare_student, recorded_fixtures};

use common::{logits, to_dtype, widen, SplitMix64};
use half::{bf16, f16};
use kd_kernels::emulator::{EmulatedGpu, Mode};
use kd_kernels::icsd::emulate;
use kd_kernels::icsd::{AicsdConfig, AicsdCpu, IcsdConfig, IcsdCpu, IcsdVariant};
use kd_kernels::tolerance::{tolerance, OutputKind};
use kd_kernels::{GradOptions, KdFloat};
use ndarray::ArrayView4;

/// Few SMs, so that small shapes already span several blocks of every kernel.
const SMALL: EmulatedGpu = EmulatedGpu { sm_count: 2, resident_blocks: 6, max_dynamic_smem: 48 * 1024 };
const MODES: [Mode; 3] = [Mode::Forward, Mode::ForwardBackward, Mode::Backward { upstream: 2.5 }];

fn case<T: KdFloat>(config: IcsdConfig, dims: [usize; 4], seed: u64, gpu: EmulatedGpu) {
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(seed);
    let s: Vec<T> = to_dtype(&logits(&mut rng, numel, 2.0, 2));
    let t: Vec<T> = to_dtype(&logits(&mut rng, numel, 2.0, 2));
    let sv = ArrayView4::from_shape(dims, &s[..]).unwrap();
    let tv = ArrayView4::from_shape(dims, &t[..]).unwrap();
    let cpu = IcsdCpu::new(config).unwrap();
    for mode in MODES {
        let what = format!("{:?} {} {dims:?} {mode:?}", config.variant, T::DTYPE);
        let upstream = if let Mode::Backward { upstream } = mode { upstream as f64 } else { 1.0 };
        let reference = cpu.backward(sv, tv, upstream).unwrap();
        let got = emulate::icsd(&config, &dims, &s, &t, mode, gpu, GradOptions::OVERWRITE, None).unwrap();
        let sims: Vec<f64> = reference.sim_student.iter().chain(reference.sim_teacher.iter()).copied().collect();
        let got_sims: Vec<f64> = got.sim_student.iter().chain(&got.sim_teacher).map(|&v| v as f64).collect();
        check_close(&format!("{what} sims"), &got_sims, &sims, tolerance(kd_kernels::DType::F32, OutputKind::Tensor));
        compare_student(&what, &got.out, reference.loss, &reference.grad_student, mode);
    }
}

fn all_dtypes(config: IcsdConfig, dims: [usize; 4], seed: u64) {
    case::<f32>(config, dims, seed, SMALL);
    case::<f16>(config, dims, seed, SMALL);
    case::<bf16>(config, dims, seed, SMALL);
}

fn variant(v: IcsdVariant) -> IcsdConfig {
    IcsdConfig { variant: v, ..IcsdConfig::default() }
}

#[test]
fn official_every_dtype_odd_shapes() {
    for (i, dims) in [[2, 5, 9, 11], [1, 19, 5, 6], [2, 3, 1, 8], [1, 2, 7, 33]].into_iter().enumerate() {
        all_dtypes(variant(IcsdVariant::Official), dims, 100 + i as u64);
    }
}

#[test]
fn paper_every_dtype_odd_shapes() {
    for (i, dims) in [[2, 5, 9, 11], [1, 19, 5, 6], [2, 3, 1, 8], [1, 2, 7, 33]].into_iter().enumerate() {
        all_dtypes(variant(IcsdVariant::Paper), dims, 200 + i as u64);
    }
}

#[test]
fn twenty_one_classes_and_tau() {
    for v in [IcsdVariant::Official, IcsdVariant::Paper] {
        case::<f32>(IcsdConfig { tau: 2.0, loss_weight: 1.0, variant: v }, [2, 21, 9, 7], 300, SMALL);
    }
    // Many tiles and gradient groups: the gram tile of C = 21 is 128 pixels, 2 blocks per tensor here.
    case::<f32>(variant(IcsdVariant::Official), [1, 21, 17, 40], 301, SMALL);
    case::<f32>(variant(IcsdVariant::Paper), [1, 21, 17, 40], 302, EmulatedGpu::H100_SMALL_GRID);
}

/// The most classes ICSD takes, on a shape whose gram tiles (8 pixels at C = 256) outnumber the partial
/// slots the workspace bound allows (63 at C = 256): fewer gram blocks, each over several tiles. One more
/// class is a typed error.
#[test]
fn the_most_classes_with_bounded_partials() {
    for v in [IcsdVariant::Official, IcsdVariant::Paper] {
        case::<f32>(variant(v), [1, 256, 24, 24], 303, EmulatedGpu::H100_SMALL_GRID);
    }
    let dims = [1, 257, 2, 2];
    let x = vec![0.0f32; dims.iter().product()];
    let r = emulate::icsd(&IcsdConfig::default(), &dims, &x, &x, Mode::Forward, SMALL, GradOptions::OVERWRITE, None);
    assert!(matches!(r, Err(kd_kernels::KdError::TooLarge { .. })), "{r:?}");
}

#[test]
fn accumulate_and_scale() {
    let dims = [2, 5, 6, 7];
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(400);
    let s = logits(&mut rng, numel, 2.0, 0);
    let t = logits(&mut rng, numel, 2.0, 0);
    let initial = logits(&mut rng, numel, 1e-3, 0);
    for v in [IcsdVariant::Official, IcsdVariant::Paper] {
        let config = variant(v);
        let options = GradOptions { scale: -0.75, accumulate: true };
        let got = emulate::icsd(&config, &dims, &s, &t, Mode::ForwardBackward, SMALL, options, Some(&initial)).unwrap();
        let r = IcsdCpu::new(config)
            .unwrap()
            .forward_backward(
                ArrayView4::from_shape(dims, &s[..]).unwrap(),
                ArrayView4::from_shape(dims, &t[..]).unwrap(),
            )
            .unwrap();
        let expect: Vec<f64> = r.grad_student.iter().zip(&initial).map(|(g, &i)| i as f64 - 0.75 * g).collect();
        check_close(&format!("{v:?} accumulate"), &widen(&got.out.grad_student.unwrap()), &expect, 1e-4);
    }
}

#[test]
fn bitwise_deterministic() {
    let dims = [2, 19, 6, 9];
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(500);
    let s: Vec<bf16> = to_dtype(&logits(&mut rng, numel, 2.0, 1));
    let t: Vec<bf16> = to_dtype(&logits(&mut rng, numel, 2.0, 1));
    for v in [IcsdVariant::Official, IcsdVariant::Paper] {
        let run = || {
            emulate::icsd(&variant(v), &dims, &s, &t, Mode::ForwardBackward, SMALL, GradOptions::OVERWRITE, None)
                .unwrap()
        };
        let (a, b) = (run(), run());
        assert_eq!(a.out.loss.unwrap().to_bits(), b.out.loss.unwrap().to_bits());
        let bits = |g: &[bf16]| g.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a.out.grad_student.as_ref().unwrap()), bits(b.out.grad_student.as_ref().unwrap()));
        assert_eq!(a.sim_student, b.sim_student);
    }
}

#[test]
fn aicsd_one_call() {
    let dims = [2, 5, 7, 6];
    let numel: usize = dims.iter().product();
    let mut rng = SplitMix64::new(600);
    let s = logits(&mut rng, numel, 2.0, 0);
    let t = logits(&mut rng, numel, 2.0, 0);
    let config = AicsdConfig::default();
    let cpu = AicsdCpu::new(config).unwrap();
    for epoch in [0.0, 45.0, 130.0] {
        let (loss, grad) = emulate::aicsd(&config, epoch, &dims, &s, &t, SMALL, GradOptions::OVERWRITE, None).unwrap();
        let r = cpu
            .forward_backward(
                ArrayView4::from_shape(dims, &s[..]).unwrap(),
                ArrayView4::from_shape(dims, &t[..]).unwrap(),
                epoch,
            )
            .unwrap();
        check_close(&format!("aicsd loss @{epoch}"), &[loss as f64], &[r.loss], 1e-4);
        let reference: Vec<f64> = r.grad_student.iter().copied().collect();
        check_close(&format!("aicsd grad @{epoch}"), &widen(&grad), &reference, 1e-4);
    }
}

/// The recorded fixtures through the emulated kernels, against the PyTorch reference, with the GPU rows of the
/// tolerance table (the kernels store gradients in the input dtype).
#[test]
fn fixtures_through_the_kernels() {
    use safetensors::{Dtype, SafeTensors};
    for (what, bytes, meta) in recorded_fixtures("icsd_", 11) {
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let config = IcsdConfig {
            tau: meta.get("tau").map_or(1.0, |v| v.parse().unwrap()),
            loss_weight: meta.get("loss_weight").map_or(9500.0, |v| v.parse().unwrap()),
            variant: meta.get("variant").map_or(IcsdVariant::Official, |v| IcsdVariant::parse(v).unwrap()),
        };
        let f32s = |name: &str| -> Vec<f64> {
            let t = st.tensor(name).unwrap();
            assert_eq!(t.dtype(), Dtype::F32, "{name}");
            t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
        };
        let student = st.tensor("student").unwrap();
        let dims: [usize; 4] = student.shape().try_into().unwrap();
        fn run<T: KdFloat>(
            config: IcsdConfig,
            dims: [usize; 4],
            s: &[u8],
            t: &[u8],
            decode: impl Fn(&[u8]) -> T,
        ) -> (f64, Vec<f64>, Vec<f64>) {
            let size = std::mem::size_of::<T>();
            let s: Vec<T> = s.chunks_exact(size).map(&decode).collect();
            let t: Vec<T> = t.chunks_exact(size).map(&decode).collect();
            let r = emulate::icsd(&config, &dims, &s, &t, Mode::ForwardBackward, SMALL, GradOptions::OVERWRITE, None)
                .unwrap();
            let sims = r.sim_student.iter().chain(&r.sim_teacher).map(|&v| v as f64).collect();
            (r.out.loss.unwrap() as f64, widen(r.out.grad_student.as_ref().unwrap()), sims)
        }
        let (s, t) = (student.data(), st.tensor("teacher").unwrap().data());
        let (dtype, (loss, grad, sims)) = match student.dtype() {
            Dtype::F32 => (
                kd_kernels::DType::F32,
                run::<f32>(config, dims, s, t, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            Dtype::F16 => {
                (kd_kernels::DType::F16, run::<f16>(config, dims, s, t, |c| f16::from_le_bytes([c[0], c[1]])))
            }
            Dtype::BF16 => {
                (kd_kernels::DType::BF16, run::<bf16>(config, dims, s, t, |c| bf16::from_le_bytes([c[0], c[1]])))
            }
            other => panic!("{what}: dtype {other:?}"),
        };
        check_close(&format!("{what} loss"), &[loss], &f32s("loss"), tolerance(dtype, OutputKind::Loss));
        check_close(&format!("{what} grad"), &grad, &f32s("grad.student"), tolerance(dtype, OutputKind::Tensor));
        if st.names().contains(&"sim.student") {
            let want: Vec<f64> = f32s("sim.student").into_iter().chain(f32s("sim.teacher")).collect();
            check_close(&format!("{what} sims"), &sims, &want, tolerance(dtype, OutputKind::Tensor));
        }
    }
}
