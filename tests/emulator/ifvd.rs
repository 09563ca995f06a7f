//! The IFVD kernels (kernels/ifvd.cu) run on the host through the emulator, against the f64 CPU reference:
//! every dtype, mode and label dtype, odd shapes (channel groups cut short, more groups than warps, several
//! pixel chunks, labels resized up and down), ignored labels (255, -1, values >= num_classes), absent classes,
//! a class in one image only, a zero prototype, accumulate + scale, bitwise determinism, typed errors, and
//! the recorded fixtures.

use crate::common;
use crate::pair::{check_close, compare_student, recorded_fixtures};

use common::{logits, to_dtype, widen, SplitMix64};
use half::{bf16, f16};
use kd_kernels::dtype::LabelInt;
use kd_kernels::emulator::{EmulatedGpu, Mode};
use kd_kernels::ifvd::emulate::{self, IfvdHostInputs};
use kd_kernels::ifvd::{IfvdConfig, IfvdCpu};
use kd_kernels::tolerance::{tolerance, OutputKind};
use kd_kernels::{DType, GradOptions, KdError, KdFloat};
use ndarray::{ArrayView3, ArrayView4};

/// Few SMs, so that small images already split into several chunks.
const SMALL: EmulatedGpu = EmulatedGpu { sm_count: 2, resident_blocks: 6, max_dynamic_smem: 48 * 1024 };
const MODES: [Mode; 3] = [Mode::Forward, Mode::ForwardBackward, Mode::Backward { upstream: 2.5 }];

/// One call's inputs: features in f32 (rounded to the case's dtype before use) and labels as i64.
struct Case {
    name: &'static str,
    student_dims: [usize; 4],
    ct: usize,
    label_dims: [usize; 3],
    student: Vec<f32>,
    teacher: Vec<f32>,
    labels: Vec<i64>,
    config: IfvdConfig,
}

impl Case {
    fn teacher_dims(&self) -> [usize; 4] {
        let [n, _, h, w] = self.student_dims;
        [n, self.ct, h, w]
    }
}

/// Labels in patches of `ph x pw` pixels (as segmentation maps are: few classes per row of 32 pixels), the
/// patch's class drawn from `[0, range)`, about one patch in six `ignore`.
fn patchy_labels(rng: &mut SplitMix64, dims: [usize; 3], patch: (usize, usize), range: usize, ignore: i64) -> Vec<i64> {
    let [n, h, w] = dims;
    let (ph, pw) = patch;
    let (rows, cols) = (h.div_ceil(ph), w.div_ceil(pw));
    let classes: Vec<i64> =
        (0..n * rows * cols).map(|_| if rng.below(6) == 0 { ignore } else { rng.below(range) as i64 }).collect();
    let mut out = Vec::with_capacity(n * h * w);
    for img in 0..n {
        for y in 0..h {
            for x in 0..w {
                out.push(classes[(img * rows + y / ph) * cols + x / pw]);
            }
        }
    }
    out
}

fn make(
    name: &'static str,
    seed: u64,
    student_dims: [usize; 4],
    ct: usize,
    label_hw: [usize; 2],
    labels: impl FnOnce(&mut SplitMix64, [usize; 3]) -> Vec<i64>,
    config: IfvdConfig,
) -> Case {
    let mut rng = SplitMix64::new(seed);
    let [n, cs, h, w] = student_dims;
    let student = logits(&mut rng, n * cs * h * w, 1.0, 0);
    let teacher = logits(&mut rng, n * ct * h * w, 1.0, 0);
    let label_dims = [n, label_hw[0], label_hw[1]];
    let labels = labels(&mut rng, label_dims);
    Case { name, student_dims, ct, label_dims, student, teacher, labels, config }
}

/// The scenarios every dtype runs.
fn cases() -> Vec<Case> {
    vec![
        // Labels at a finer, non-integer resolution; 255 ignored; class 4 of 5 absent; 4 chunks of 32 pixels.
        make(
            "2x5x9x11, Ct 7, labels 17x21, ignore 255, class 4 absent",
            1,
            [2, 5, 9, 11],
            7,
            [17, 21],
            |rng, d| patchy_labels(rng, d, (1, 1), 4, 255),
            IfvdConfig { num_classes: 5, loss_weight: 20.0 },
        ),
        // Coarser labels (a non-integer ratio), -1 ignored, values >= num_classes ignored too, and
        // class 5 in the second image only.
        make(
            "3x4x7x9, Ct 4, labels 3x4, ignore -1 and >= K, class 5 in image 1 only",
            2,
            [3, 4, 7, 9],
            4,
            [3, 4],
            |rng, d| {
                let mut l = patchy_labels(rng, d, (1, 1), 8, -1).iter().map(|&v| v.min(4)).collect::<Vec<_>>();
                l[12 + 5] = 5; // image 1, row 1, column 1
                l[12 + 4] = 9; // >= num_classes: ignored
                l
            },
            IfvdConfig::new(6),
        ),
        // More channel groups than warps (Cs 70: 3 groups, Ct 260: 9 groups, both cut short), labels at half
        // the resolution (PyTorch's exact-doubling rule).
        make(
            "2x70x6x10, Ct 260, labels 3x5, 19 classes",
            3,
            [2, 70, 6, 10],
            260,
            [3, 5],
            |rng, d| patchy_labels(rng, d, (2, 3), 19, 255),
            IfvdConfig::new(19),
        ),
    ]
}

fn run<T: KdFloat, L: LabelInt>(
    case: &Case,
    labels: &[L],
    mode: Mode,
    gpu: EmulatedGpu,
    options: GradOptions,
    initial: Option<&[T]>,
) -> kd_kernels::Result<kd_kernels::emulator::EmulatedOutput<T>> {
    let s: Vec<T> = to_dtype(&case.student);
    let t: Vec<T> = to_dtype(&case.teacher);
    let inputs = IfvdHostInputs {
        student_dims: &case.student_dims,
        student: &s,
        teacher_dims: &case.teacher_dims(),
        teacher: &t,
        label_dims: &case.label_dims,
        labels,
    };
    emulate::ifvd(&case.config, inputs, mode, gpu, options, initial)
}

/// Checks every mode of `case` in dtype `T` with labels stored as `L`.
fn check_case<T: KdFloat, L: LabelInt>(case: &Case, convert: impl Fn(i64) -> L) {
    check_modes::<T, L>(case, convert, &MODES)
}

/// Checks `modes` of `case` in dtype `T` with labels stored as `L`.
fn check_modes<T: KdFloat, L: LabelInt>(case: &Case, convert: impl Fn(i64) -> L, modes: &[Mode]) {
    let labels: Vec<L> = case.labels.iter().map(|&v| convert(v)).collect();
    // The reference sees the inputs the kernels see: rounded to T.
    let s = widen(&to_dtype::<T>(&case.student));
    let t = widen(&to_dtype::<T>(&case.teacher));
    let sv = ArrayView4::from_shape(case.student_dims, &s[..]).unwrap();
    let tv = ArrayView4::from_shape(case.teacher_dims(), &t[..]).unwrap();
    let lv = ArrayView3::from_shape(case.label_dims, &case.labels[..]).unwrap();
    let cpu = IfvdCpu::new(case.config).unwrap();
    for &mode in modes {
        let what = format!("{} {} {:?} {mode:?}", case.name, T::DTYPE, L::LABEL_DTYPE);
        let upstream = if let Mode::Backward { upstream } = mode { upstream as f64 } else { 1.0 };
        let reference = cpu.backward(sv, tv, lv, upstream).unwrap();
        let got = run::<T, L>(case, &labels, mode, SMALL, GradOptions::OVERWRITE, None).unwrap();
        compare_student(&what, &got, reference.loss, &reference.grad_student, mode);
    }
}

#[test]
fn every_dtype_and_label_dtype_on_odd_shapes() {
    let cases = cases();
    // Each case runs in every feature dtype; the label dtypes rotate over the cases and dtypes (255 needs
    // u8 or wider, -1 a signed type). The widest case (the emulator's slowest) runs its 16-bit dtypes in the
    // training-step mode only: the other modes differ in flags, which the smaller cases cover in every dtype.
    check_case::<f32, u8>(&cases[0], |v| v as u8);
    check_case::<f16, i64>(&cases[0], |v| v);
    check_case::<bf16, i32>(&cases[0], |v| v as i32);
    check_case::<f32, i32>(&cases[1], |v| v as i32);
    check_case::<f16, i64>(&cases[1], |v| v);
    check_case::<bf16, i32>(&cases[1], |v| v as i32);
    check_case::<f32, i64>(&cases[2], |v| v);
    check_modes::<f16, u8>(&cases[2], |v| v as u8, &[Mode::ForwardBackward]);
    check_modes::<bf16, i64>(&cases[2], |v| v, &[Mode::ForwardBackward]);
}

/// A class whose student features are all zero has a zero prototype (its cosines are 0 and the norm's
/// derivative is taken as 0 there, as PyTorch's autograd does), and an image whose every pixel is ignored.
#[test]
fn zero_prototype_and_all_ignored_image() {
    let mut case = make(
        "2x3x5x6, class 1 zero in image 0, image 1 all ignored",
        7,
        [2, 3, 5, 6],
        5,
        [5, 6],
        |rng, d| patchy_labels(rng, d, (2, 3), 3, 255),
        IfvdConfig::new(3),
    );
    let plane = 30;
    for p in 0..plane {
        if case.labels[p] == 1 {
            for c in 0..3 {
                case.student[c * plane + p] = 0.0;
            }
        }
        case.labels[plane + p] = 255;
    }
    assert!(case.labels[..plane].contains(&1), "the scenario needs class 1 in image 0");
    check_case::<f32, i64>(&case, |v| v);
}

/// 150 classes (ADE20K) with a class count larger than the chunk: longer chunks, and most slots absent.
#[test]
fn many_classes() {
    let case = make(
        "1x9x8x20, Ct 6, 150 classes",
        8,
        [1, 9, 8, 20],
        6,
        [8, 20],
        |rng, d| patchy_labels(rng, d, (2, 5), 150, 255),
        IfvdConfig::new(150),
    );
    check_case::<f32, i64>(&case, |v| v);
}

#[test]
fn accumulate_and_scale() {
    let case = &cases()[0];
    let mut rng = SplitMix64::new(40);
    let initial = logits(&mut rng, case.student.len(), 1e-3, 0);
    let options = GradOptions { scale: -0.75, accumulate: true };
    let got = run::<f32, i64>(case, &case.labels, Mode::ForwardBackward, SMALL, options, Some(&initial)).unwrap();
    let sv = ArrayView4::from_shape(case.student_dims, &case.student[..]).unwrap();
    let tv = ArrayView4::from_shape(case.teacher_dims(), &case.teacher[..]).unwrap();
    let lv = ArrayView3::from_shape(case.label_dims, &case.labels[..]).unwrap();
    let r = IfvdCpu::new(case.config).unwrap().forward_backward(sv, tv, lv).unwrap();
    let expect: Vec<f64> = r.grad_student.iter().zip(&initial).map(|(g, &i)| i as f64 - 0.75 * g).collect();
    check_close("accumulate", &widen(&got.grad_student.unwrap()), &expect, 1e-4);
}

#[test]
fn bitwise_deterministic() {
    let case = &cases()[0];
    let labels: Vec<u8> = case.labels.iter().map(|&v| v as u8).collect();
    let once = || run::<bf16, u8>(case, &labels, Mode::ForwardBackward, SMALL, GradOptions::OVERWRITE, None).unwrap();
    let (a, b) = (once(), once());
    assert_eq!(a.loss.unwrap().to_bits(), b.loss.unwrap().to_bits());
    let bits = |g: &[bf16]| g.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a.grad_student.as_ref().unwrap()), bits(b.grad_student.as_ref().unwrap()));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let case = &cases()[0];
    let s: Vec<f32> = case.student.clone();
    let t: Vec<f32> = case.teacher.clone();
    let call = |config: IfvdConfig, label_dims: &[usize], labels: &[i64], teacher_dims: &[usize]| {
        let inputs = IfvdHostInputs {
            student_dims: &case.student_dims,
            student: &s,
            teacher_dims,
            teacher: &t,
            label_dims,
            labels,
        };
        emulate::ifvd(&config, inputs, Mode::ForwardBackward, SMALL, GradOptions::OVERWRITE, None)
    };
    let td = case.teacher_dims();
    let ld = case.label_dims;
    // Labels of the wrong rank, of another batch, empty, or shorter than their dims.
    for dims in [&[2, 17][..], &[2, 1, 17, 21][..], &[3, 17, 21][..]] {
        let r = call(case.config, dims, &case.labels, &td);
        assert!(matches!(r, Err(KdError::ShapeMismatch { .. })), "{dims:?}: {r:?}");
    }
    let r = call(case.config, &[2, 0, 21], &case.labels, &td);
    assert!(matches!(r, Err(KdError::EmptyInput { .. })), "{r:?}");
    let r = call(case.config, &ld, &case.labels[..10], &td);
    assert!(matches!(r, Err(KdError::BufferTooSmall { what: "labels", .. })), "{r:?}");
    // No class, or a teacher of another resolution.
    let r = call(IfvdConfig::new(0), &ld, &case.labels, &td);
    assert!(matches!(r, Err(KdError::InvalidParameter { name: "num_classes", .. })), "{r:?}");
    let r = call(case.config, &ld, &case.labels, &[2, 7, 9, 10]);
    assert!(matches!(r, Err(KdError::ShapeMismatch { .. })), "{r:?}");
    let r = call(IfvdConfig { num_classes: 5, loss_weight: f64::NAN }, &ld, &case.labels, &td);
    assert!(matches!(r, Err(KdError::InvalidParameter { .. })), "{r:?}");
}

/// The recorded fixtures through the emulated kernels, against the PyTorch reference, with the GPU rows of
/// the tolerance table (the kernels store gradients in the input dtype).
#[test]
fn fixtures_through_the_kernels() {
    use safetensors::{Dtype, SafeTensors};
    for (what, bytes, meta) in recorded_fixtures("ifvd_", 10) {
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let config = IfvdConfig {
            num_classes: meta["num_classes"].parse().unwrap(),
            loss_weight: meta.get("loss_weight").map_or(1.0, |v| v.parse().unwrap()),
        };
        let f32s = |name: &str| -> Vec<f64> {
            let t = st.tensor(name).unwrap();
            assert_eq!(t.dtype(), Dtype::F32, "{name}");
            t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
        };
        let (s, t, l) = (st.tensor("student").unwrap(), st.tensor("teacher").unwrap(), st.tensor("labels").unwrap());
        // The labels go to the kernels in their stored dtype.
        let labels = match l.dtype() {
            Dtype::U8 => Labels::U8(l.data().to_vec()),
            Dtype::I32 => {
                Labels::I32(l.data().chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect())
            }
            Dtype::I64 => {
                Labels::I64(l.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
            }
            other => panic!("{what}: labels {other:?}"),
        };
        enum Labels {
            U8(Vec<u8>),
            I32(Vec<i32>),
            I64(Vec<i64>),
        }
        fn call<T: KdFloat, L: LabelInt>(
            config: IfvdConfig,
            dims: [&[usize]; 3],
            s: &[T],
            t: &[T],
            labels: &[L],
        ) -> (f64, Vec<f64>) {
            let inputs = IfvdHostInputs {
                student_dims: dims[0],
                student: s,
                teacher_dims: dims[1],
                teacher: t,
                label_dims: dims[2],
                labels,
            };
            let r = emulate::ifvd(&config, inputs, Mode::ForwardBackward, SMALL, GradOptions::OVERWRITE, None).unwrap();
            (r.loss.unwrap() as f64, widen(r.grad_student.as_ref().unwrap()))
        }
        fn go<T: KdFloat>(
            config: IfvdConfig,
            dims: [&[usize]; 3],
            s: &[u8],
            t: &[u8],
            labels: &Labels,
            decode: impl Fn(&[u8]) -> T,
        ) -> (f64, Vec<f64>) {
            let size = std::mem::size_of::<T>();
            let s: Vec<T> = s.chunks_exact(size).map(&decode).collect();
            let t: Vec<T> = t.chunks_exact(size).map(&decode).collect();
            match labels {
                Labels::U8(l) => call(config, dims, &s, &t, l),
                Labels::I32(l) => call(config, dims, &s, &t, l),
                Labels::I64(l) => call(config, dims, &s, &t, l),
            }
        }
        let dims = [s.shape(), t.shape(), l.shape()];
        let (sd, td) = (s.data(), t.data());
        let (dtype, (loss, grad)) = match s.dtype() {
            Dtype::F32 => {
                (DType::F32, go::<f32>(config, dims, sd, td, &labels, |c| f32::from_le_bytes(c.try_into().unwrap())))
            }
            Dtype::F16 => (DType::F16, go::<f16>(config, dims, sd, td, &labels, |c| f16::from_le_bytes([c[0], c[1]]))),
            Dtype::BF16 => {
                (DType::BF16, go::<bf16>(config, dims, sd, td, &labels, |c| bf16::from_le_bytes([c[0], c[1]])))
            }
            other => panic!("{what}: dtype {other:?}"),
        };
        check_close(&format!("{what} loss"), &[loss], &f32s("loss"), tolerance(dtype, OutputKind::Loss));
        check_close(&format!("{what} grad"), &grad, &f32s("grad.student"), tolerance(dtype, OutputKind::Tensor));
    }
}
