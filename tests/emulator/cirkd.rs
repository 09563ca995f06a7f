//! The CIRKD kernels (kernels/cirkd.cu) run on the host through the emulator, against the f64 CPU reference:
//! every dtype and mode on small odd shapes (Cs != Ct, channels over one staging chunk, several row tiles and
//! column tiles per image pair, a last tile cut short), pooling none / auto / K with ceil edges, accumulate +
//! scale, exact zeros for identical inputs, bitwise determinism, the gradient buffer as d_hat's accumulator
//! against the workspace's, typed errors, and the recorded fixtures.

use crate::common;
use crate::pair::{check_close, compare, recorded_fixtures};

use common::{logits, to_dtype, widen, SplitMix64};
use half::{bf16, f16};
use kd_kernels::cirkd::emulate::{self, CirkdHostInputs};
use kd_kernels::cirkd::{CirkdConfig, CirkdCpu, CirkdPool};
use kd_kernels::emulator::{EmulatedGpu, EmulatedOutput, Mode};
use kd_kernels::tolerance::{tolerance, OutputKind};
use kd_kernels::{DType, GradOptions, KdError, KdFloat};
use ndarray::ArrayView4;

const GPU: EmulatedGpu = EmulatedGpu::H100_SMALL_GRID;
const MODES: [Mode; 3] = [Mode::Forward, Mode::ForwardBackward, Mode::Backward { upstream: 2.5 }];

/// One call's inputs, in f32 (rounded to the case's dtype before use).
struct Case {
    name: &'static str,
    student_dims: [usize; 4],
    ct: usize,
    student: Vec<f32>,
    teacher: Vec<f32>,
    config: CirkdConfig,
}

impl Case {
    /// A teacher of `ct` channels and a student related to it through its first channels (so that the two
    /// relation maps are alike but not equal).
    fn new(name: &'static str, seed: u64, student_dims: [usize; 4], ct: usize, config: CirkdConfig) -> Case {
        let mut rng = SplitMix64::new(seed);
        let [n, cs, h, w] = student_dims;
        let teacher = logits(&mut rng, n * ct * h * w, 1.0, 0);
        let noise = logits(&mut rng, n * cs * h * w, 1.0, 0);
        let mut student = Vec::with_capacity(noise.len());
        for img in 0..n {
            for c in 0..cs {
                for px in 0..h * w {
                    let t = teacher[(img * ct + c % ct) * h * w + px];
                    student.push(0.8 * t + 0.6 * noise[(img * cs + c) * h * w + px]);
                }
            }
        }
        Case { name, student_dims, ct, student, teacher, config }
    }

    fn teacher_dims(&self) -> [usize; 4] {
        let [n, _, h, w] = self.student_dims;
        [n, self.ct, h, w]
    }

    fn run<T: KdFloat>(
        &self,
        mode: Mode,
        options: GradOptions,
        initial: Option<&[T]>,
    ) -> kd_kernels::Result<EmulatedOutput<T>> {
        let s: Vec<T> = to_dtype(&self.student);
        let t: Vec<T> = to_dtype(&self.teacher);
        let inputs = CirkdHostInputs {
            student_dims: &self.student_dims,
            student: &s,
            teacher_dims: &self.teacher_dims(),
            teacher: &t,
        };
        emulate::cirkd(&self.config, inputs, mode, GPU, options, initial)
    }
}

fn tau(tau: f64, pool: CirkdPool) -> CirkdConfig {
    CirkdConfig { tau, pool, ..CirkdConfig::default() }
}

fn cases() -> Vec<Case> {
    vec![
        // P = 99: four row tiles (the last of 3 rows), two column tiles (the last of 35 columns).
        Case::new("9x11 none", 1, [2, 5, 9, 11], 7, tau(0.1, CirkdPool::None)),
        // 37 and 40 channels: two staging chunks each, the second cut short; P = 35.
        Case::new("wide channels", 2, [2, 37, 5, 7], 40, tau(0.2, CirkdPool::None)),
        // 3x3 windows with ceil edges (10 x 8 -> 4 x 3, edge windows of 1 and 2), three images, a weight.
        Case::new(
            "pool 3 ceil",
            3,
            [3, 4, 10, 8],
            3,
            CirkdConfig { tau: 0.5, loss_weight: 2.0, pool: CirkdPool::Avg(3) },
        ),
        // The auto rule on a map under 256 x 256: no pooling; one image.
        Case::new("auto small", 4, [1, 3, 6, 13], 2, tau(0.1, CirkdPool::Auto)),
    ]
}

/// Checks `modes` of `case` in dtype `T` against the reference on the inputs as rounded to `T`.
fn check_modes<T: KdFloat>(case: &Case, modes: &[Mode]) {
    let s = widen(&to_dtype::<T>(&case.student));
    let t = widen(&to_dtype::<T>(&case.teacher));
    let sv = ArrayView4::from_shape(case.student_dims, &s[..]).unwrap();
    let tv = ArrayView4::from_shape(case.teacher_dims(), &t[..]).unwrap();
    let cpu = CirkdCpu::new(case.config).unwrap();
    for &mode in modes {
        let what = format!("{} {} {mode:?}", case.name, T::DTYPE);
        let upstream = if let Mode::Backward { upstream } = mode { upstream as f64 } else { 1.0 };
        let reference = cpu.backward(sv, tv, upstream).unwrap();
        let got = case.run::<T>(mode, GradOptions::OVERWRITE, None).unwrap();
        compare(&what, &got, &reference, mode);
    }
}

#[test]
fn every_dtype_and_mode_on_odd_shapes() {
    for case in &cases() {
        check_modes::<f32>(case, &MODES);
        check_modes::<f16>(case, &[Mode::ForwardBackward]);
        check_modes::<bf16>(case, &[Mode::ForwardBackward]);
    }
}

#[test]
fn accumulate_and_scale() {
    let case = &cases()[0];
    let mut rng = SplitMix64::new(40);
    let initial = logits(&mut rng, case.student.len(), 1e-3, 0);
    let options = GradOptions { scale: -0.75, accumulate: true };
    let got = case.run::<f32>(Mode::ForwardBackward, options, Some(&initial)).unwrap();
    let sv = ArrayView4::from_shape(case.student_dims, &case.student[..]).unwrap();
    let tv = ArrayView4::from_shape(case.teacher_dims(), &case.teacher[..]).unwrap();
    let r = CirkdCpu::new(case.config).unwrap().forward_backward(sv, tv).unwrap();
    let expect: Vec<f64> = r.grad_student.iter().zip(&initial).map(|(g, &i)| i as f64 - 0.75 * g).collect();
    check_close("accumulate", &widen(&got.grad_student.unwrap()), &expect, 1e-4);
}

/// An overwritten f32 gradient of an unpooled call holds d loss / d S_hat itself until the finish; an
/// accumulating call keeps it in the workspace. Accumulating into zeros gives the same bits, so the in-place
/// path sums and finishes exactly as the workspace path does.
#[test]
fn in_place_accumulator_matches_the_workspace_one() {
    // P = 42: two row tiles, one column tile cut short; Cs != Ct.
    let case = &Case::new("in place", 6, [2, 3, 6, 7], 4, tau(0.1, CirkdPool::None));
    let zeros = vec![0f32; case.student.len()];
    let in_place = case.run::<f32>(Mode::ForwardBackward, GradOptions::OVERWRITE, None).unwrap();
    let options = GradOptions { scale: 1.0, accumulate: true };
    let workspace = case.run::<f32>(Mode::ForwardBackward, options, Some(&zeros)).unwrap();
    assert_eq!(in_place.loss.unwrap().to_bits(), workspace.loss.unwrap().to_bits());
    let bits = |g: &[f32]| g.iter().map(|x| (x + 0.0).to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(in_place.grad_student.as_ref().unwrap()), bits(workspace.grad_student.as_ref().unwrap()));
}

#[test]
fn identical_inputs_give_exact_zeros() {
    // Pooled, and unpooled with the f32 gradient holding d_hat, and with the bf16 one.
    for pool in [CirkdPool::Avg(2), CirkdPool::None] {
        let mut case = Case::new("identical", 5, [2, 6, 5, 9], 6, tau(0.1, pool));
        case.student = case.teacher.clone();
        let got = case.run::<f32>(Mode::ForwardBackward, GradOptions::OVERWRITE, None).unwrap();
        assert_eq!(got.loss.unwrap(), 0.0, "{pool:?}");
        assert!(got.grad_student.unwrap().iter().all(|&g| g == 0.0), "{pool:?}");
        let got = case.run::<bf16>(Mode::ForwardBackward, GradOptions::OVERWRITE, None).unwrap();
        assert_eq!(got.loss.unwrap(), 0.0, "{pool:?} bf16");
        assert!(got.grad_student.unwrap().iter().all(|&g| g.to_f32() == 0.0), "{pool:?} bf16");
    }
}

#[test]
fn bitwise_deterministic() {
    let case = &cases()[0];
    let once = || case.run::<bf16>(Mode::ForwardBackward, GradOptions::OVERWRITE, None).unwrap();
    let (a, b) = (once(), once());
    assert_eq!(a.loss.unwrap().to_bits(), b.loss.unwrap().to_bits());
    let bits = |g: &[bf16]| g.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a.grad_student.as_ref().unwrap()), bits(b.grad_student.as_ref().unwrap()));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let case = &cases()[0];
    let (s, t) = (case.student.clone(), case.teacher.clone());
    let call = |config: CirkdConfig, student_dims: &[usize], teacher_dims: &[usize], t: &[f32]| {
        let inputs = CirkdHostInputs { student_dims, student: &s, teacher_dims, teacher: t };
        emulate::cirkd(&config, inputs, Mode::ForwardBackward, GPU, GradOptions::OVERWRITE, None)
    };
    let (sd, td) = (case.student_dims, case.teacher_dims());
    // A teacher of another resolution or batch, an empty map, a teacher shorter than its dims.
    for dims in [[2, 7, 9, 10], [3, 7, 9, 11]] {
        let r = call(case.config, &sd, &dims, &t);
        assert!(matches!(r, Err(KdError::ShapeMismatch { .. })), "{dims:?}: {r:?}");
    }
    let r = call(case.config, &[2, 5, 0, 11], &[2, 7, 0, 11], &t);
    assert!(matches!(r, Err(KdError::EmptyInput { .. })), "{r:?}");
    let r = call(case.config, &sd, &td, &t[..10]);
    assert!(matches!(r, Err(KdError::BufferTooSmall { what: "teacher", .. })), "{r:?}");
    // Parameters: a temperature of 0, a NaN weight, a window of 0, a weight that vanishes in f32.
    for config in [
        tau(0.0, CirkdPool::None),
        CirkdConfig { loss_weight: f64::NAN, ..CirkdConfig::default() },
        tau(0.1, CirkdPool::Avg(0)),
        CirkdConfig { loss_weight: 1e-60, ..CirkdConfig::default() },
    ] {
        let r = call(config, &sd, &td, &t);
        assert!(matches!(r, Err(KdError::InvalidParameter { .. })), "{config:?}: {r:?}");
    }
}

/// The recorded fixtures (CIRKD's official module) through the emulated kernels, with the tolerance table
/// the verifier uses. The two files of over a thousand pixels per image (the auto rule at 256 x 256, P =
/// 4096, and the tall 257 x 5 map) would take the emulation minutes: the GPU runs them through `verify`
/// (tests/gpu/fixtures.rs) and the CPU reference checks them (tests/cpu/cirkd.rs).
#[test]
fn fixtures_through_the_kernels() {
    use safetensors::{Dtype, SafeTensors};
    let mut emulated = 0;
    for (what, bytes, meta) in recorded_fixtures("cirkd_", 9) {
        if what.contains("_auto256") || what.contains("_tall") {
            continue;
        }
        emulated += 1;
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let d = CirkdConfig::default();
        let config = CirkdConfig {
            tau: meta.get("tau").map_or(d.tau, |v| v.parse().unwrap()),
            loss_weight: meta.get("loss_weight").map_or(d.loss_weight, |v| v.parse().unwrap()),
            pool: meta.get("pool").map_or(d.pool, |v| CirkdPool::parse(v).unwrap()),
        };
        let f32s = |name: &str| -> Vec<f64> {
            let t = st.tensor(name).unwrap();
            assert_eq!(t.dtype(), Dtype::F32, "{name}");
            t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
        };
        let (s, t) = (st.tensor("student").unwrap(), st.tensor("teacher").unwrap());
        fn go<T: KdFloat>(
            config: &CirkdConfig,
            dims: [&[usize]; 2],
            s: &[u8],
            t: &[u8],
            decode: impl Fn(&[u8]) -> T,
        ) -> (f64, Vec<f64>) {
            let size = std::mem::size_of::<T>();
            let s: Vec<T> = s.chunks_exact(size).map(&decode).collect();
            let t: Vec<T> = t.chunks_exact(size).map(&decode).collect();
            let inputs = CirkdHostInputs { student_dims: dims[0], student: &s, teacher_dims: dims[1], teacher: &t };
            let r = emulate::cirkd(config, inputs, Mode::ForwardBackward, GPU, GradOptions::OVERWRITE, None).unwrap();
            (r.loss.unwrap() as f64, widen(r.grad_student.as_ref().unwrap()))
        }
        let dims = [s.shape(), t.shape()];
        let (sd, td) = (s.data(), t.data());
        let (dtype, (loss, grad)) = match s.dtype() {
            Dtype::F32 => (DType::F32, go::<f32>(&config, dims, sd, td, |c| f32::from_le_bytes(c.try_into().unwrap()))),
            Dtype::F16 => (DType::F16, go::<f16>(&config, dims, sd, td, |c| f16::from_le_bytes([c[0], c[1]]))),
            Dtype::BF16 => (DType::BF16, go::<bf16>(&config, dims, sd, td, |c| bf16::from_le_bytes([c[0], c[1]]))),
            other => panic!("{what}: dtype {other:?}"),
        };
        check_close(&format!("{what} loss"), &[loss], &f32s("loss"), tolerance(dtype, OutputKind::Loss));
        check_close(&format!("{what} grad"), &grad, &f32s("grad.student"), tolerance(dtype, OutputKind::Tensor));
    }
    assert_eq!(emulated, 7);
}
