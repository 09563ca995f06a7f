//! The CWT kernels (kernels/cwt.cu) run on the host through the emulation, against the f64 CPU reference:
//! every dtype, odd channel counts (7 -> 13 -> 5), tile boundaries, several pixel chunks, forward / backward
//! modes, accumulate + scale, bitwise determinism, errors.

use crate::common;

/// The inputs and reference every harness's CWT tests share.
#[path = "../common/cwt.rs"]
mod shared;

use common::{to_dtype, widen};
use half::{bf16, f16};
use kd_kernels::cwt::emulate::{self, CwtEmulated, CwtEmulation, CwtGrads, HostParams};
use kd_kernels::cwt::{CwtConfig, CwtNormalize, CwtOutput, CwtShapes};
use kd_kernels::emulator::{self, EmulatedGpu, Mode};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::{DType, GradOptions, KdError, KdFloat};
use shared::{gradients, CwtInputs as Inputs};

const GPU: EmulatedGpu = EmulatedGpu::H100_SMALL_GRID;
/// A device of one SM: every chunk fills it, so a backward takes the fused kernels (`cwt_forward_store`,
/// `cwt_grad_input`) and the weight gradients take one split (written straight into the gradients), where
/// [`GPU`]'s 132 SMs take one block per tile and several splits on these small inputs.
const FUSED_GPU: EmulatedGpu = EmulatedGpu { sm_count: 1, ..GPU };

/// The kernels' own calls on the shared inputs (`shared`).
impl Inputs {
    fn host(&self) -> HostParams<'_> {
        HostParams { w1: &self.w1, b1: &self.b1, w2: &self.w2, b2: &self.b2 }
    }

    fn emulate_on<T: KdFloat>(
        &self,
        gpu: EmulatedGpu,
        config: CwtConfig,
        mode: Mode,
        emulation: CwtEmulation,
        initial: Option<&CwtGrads<T>>,
    ) -> CwtEmulated<T> {
        let s: Vec<T> = to_dtype(&self.student);
        let t: Vec<T> = to_dtype(&self.teacher);
        emulate::cwt(&config, &self.shapes, &self.dims, &s, &t, self.host(), mode, gpu, emulation, initial).unwrap()
    }
}

fn check(what: &str, got: &[f64], reference: &[f64], tol: f64) {
    assert_eq!(got.len(), reference.len(), "{what}: length");
    let c = Comparison::of(got.iter().copied(), reference.iter().copied());
    assert!(c.passes(tol), "{what}: max_rel_err {:e} > {tol:e} ({c:?})", c.max_rel_err);
}

fn f32s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Compares an emulated call with the reference (plus `base` where the call accumulated onto it). Parameter
/// gradients are f32 outputs computed in fp32 from exactly the stored inputs (the student as read in its
/// dtype), so the f32 row judges them in every dtype.
fn compare<T: KdFloat>(what: &str, got: &CwtEmulated<T>, reference: &CwtOutput, mode: Mode, base: Option<&CwtOutput>) {
    let dtype = T::DTYPE;
    if !matches!(mode, Mode::Backward { .. }) {
        check(
            &format!("{what} loss"),
            &[got.loss.unwrap() as f64],
            &[reference.loss],
            tolerance(dtype, OutputKind::Loss),
        );
    } else {
        assert!(got.loss.is_none());
    }
    if mode == Mode::Forward {
        assert!(got.grads.is_none());
        return;
    }
    let g = got.grads.as_ref().unwrap();
    let got = [widen(&g.student), f32s(&g.w1), f32s(&g.b1), f32s(&g.w2), f32s(&g.b2)];
    let base = base.map(gradients);
    for (i, ((name, mut want), got)) in gradients(reference).into_iter().zip(got).enumerate() {
        if let Some(base) = &base {
            want.iter_mut().zip(&base[i].1).for_each(|(x, y)| *x += y);
        }
        let dtype = if name == "grad.student" { dtype } else { DType::F32 };
        check(&format!("{what} {name}"), &got, &want, tolerance(dtype, OutputKind::Tensor));
    }
}

/// Every entry point on both backward structures ([`GPU`]: a block per tile, several splits; [`FUSED_GPU`]: the
/// fused kernels, one split), and the forward on every kernel that computes it. f16 and bf16 run the
/// tensor-core tiles, f32 the SIMT ones.
fn every_mode<T: KdFloat>(inputs: &Inputs, config: CwtConfig, chunk_limit: Option<usize>) {
    let emulation = CwtEmulation { chunk_limit, ..CwtEmulation::default() };
    for gpu in [GPU, FUSED_GPU] {
        every_entry_point::<T>(inputs, config, gpu, emulation);
    }
    forward_on_every_kernel::<T>(inputs, config, emulation);
}

fn every_entry_point<T: KdFloat>(inputs: &Inputs, config: CwtConfig, gpu: EmulatedGpu, emulation: CwtEmulation) {
    let chunk_limit = emulation.chunk_limit;
    {
        for mode in [Mode::Forward, Mode::ForwardBackward, Mode::Backward { upstream: -1.5 }] {
            let upstream = if let Mode::Backward { upstream } = mode { upstream as f64 } else { 1.0 };
            let reference = inputs.reference::<T>(config, upstream);
            let got = inputs.emulate_on::<T>(gpu, config, mode, emulation, None);
            let what = format!(
                "{} {:?} {:?} {mode:?} chunk {chunk_limit:?} sms {}",
                T::DTYPE,
                inputs.dims,
                inputs.shapes,
                gpu.sm_count
            );
            compare(&what, &got, &reference, mode, None);
        }
    }
}

/// The forward on the other kernels: the one-pass kernel with narrower pixel tiles (less shared memory), and
/// the forward of a hidden tile that fits nowhere (two kernels, or cwt_forward_store on one SM).
fn forward_on_every_kernel<T: KdFloat>(inputs: &Inputs, config: CwtConfig, emulation: CwtEmulation) {
    let reference = inputs.reference::<T>(config, 1.0);
    let ch = inputs.shapes.ch;
    for (smem, sm_count) in [(ch * 32 * 4, GPU.sm_count), (ch * 16 * 4, GPU.sm_count), (0, GPU.sm_count), (0, 1)] {
        // The per-block limit that leaves the fused kernel `smem` bytes of dynamic shared memory.
        let limit = if smem == 0 { 0 } else { smem + emulator::static_smem("cwt_forward_fused") };
        let gpu = EmulatedGpu { max_dynamic_smem: limit, sm_count, ..GPU };
        let got = inputs.emulate_on::<T>(gpu, config, Mode::Forward, emulation, None);
        compare(
            &format!("{} {:?} forward, {smem} B shared", T::DTYPE, inputs.dims),
            &got,
            &reference,
            Mode::Forward,
            None,
        );
    }
}

#[test]
fn odd_channels_every_dtype() {
    let inputs = Inputs::for_kernels(1, [2, 7, 5, 6], CwtShapes { cs: 7, ch: 13, ct: 5 }, true);
    for normalize in [CwtNormalize::Batch, CwtNormalize::Mean] {
        let config = CwtConfig { loss_weight: 0.7, normalize };
        every_mode::<f32>(&inputs, config, None);
        every_mode::<f16>(&inputs, config, None);
        every_mode::<bf16>(&inputs, config, None);
    }
}

#[test]
fn tile_boundaries_and_chunks() {
    // 65 and 130 pixels per image (tiles of 64 pixels), channel counts around the 64-wide tiles, K steps of 16.
    let config = CwtConfig { loss_weight: 1.0, normalize: CwtNormalize::Batch };
    let a = Inputs::for_kernels(2, [2, 17, 5, 13], CwtShapes { cs: 17, ch: 65, ct: 64 }, true);
    every_mode::<f32>(&a, config, None);
    every_mode::<f16>(&a, config, None);
    every_mode::<bf16>(&a, config, None);
    // Several chunks of pixels, the last one short, chunks that straddle images.
    every_mode::<f32>(&a, config, Some(48));
    every_mode::<f16>(&a, config, Some(64));
    every_mode::<bf16>(&a, config, Some(100));
    let b = Inputs::for_kernels(3, [1, 66, 1, 70], CwtShapes { cs: 66, ch: 3, ct: 1 }, true);
    every_mode::<f16>(&b, config, None);
    // Many pixels for few channels: two chunks (the second short), each with several weight-gradient
    // splits, some of the last chunk's empty.
    let d = Inputs::for_kernels(8, [1, 3, 20, 30], CwtShapes { cs: 3, ch: 4, ct: 2 }, true);
    every_mode::<f32>(&d, config, None);
    every_mode::<f16>(&d, config, None);
    every_mode::<bf16>(&d, config, None);
    let c = Inputs::for_kernels(4, [3, 1, 1, 1], CwtShapes { cs: 1, ch: 1, ct: 2 }, true);
    every_mode::<f32>(&c, config, None);
    every_mode::<bf16>(&c, config, None);
}

/// The fused backward with several weight-gradient splits (partial slots added chunk after chunk, then the
/// combine kernel): two SMs make 5-tile chunks "fill the device" while asking for 4 splits.
#[test]
fn fused_backward_with_split_slots() {
    let config = CwtConfig { loss_weight: 1.0, normalize: CwtNormalize::Batch };
    let d = Inputs::for_kernels(9, [1, 3, 20, 30], CwtShapes { cs: 3, ch: 4, ct: 2 }, true);
    let two_sms = EmulatedGpu { sm_count: 2, ..GPU };
    let emulation = CwtEmulation::default();
    every_entry_point::<f32>(&d, config, two_sms, emulation);
    every_entry_point::<f16>(&d, config, two_sms, emulation);
    every_entry_point::<bf16>(&d, config, two_sms, emulation);
    let limited = CwtEmulation { chunk_limit: Some(128), ..emulation };
    every_entry_point::<bf16>(&d, config, two_sms, limited);
}

#[test]
fn accumulate_and_scale() {
    let inputs = Inputs::for_kernels(5, [2, 7, 3, 5], CwtShapes { cs: 7, ch: 13, ct: 5 }, true);
    let config = CwtConfig { loss_weight: 0.5, normalize: CwtNormalize::Batch };
    let scale = 4.0;
    // Start from the gradient of another call; expect start + scale * upstream * gradient.
    let start = inputs.reference::<f32>(CwtConfig { loss_weight: 0.25, ..config }, 1.0);
    let initial = CwtGrads::<f32> {
        student: start.grad_student.iter().map(|&v| v as f32).collect(),
        w1: start.grad_w1.iter().map(|&v| v as f32).collect(),
        b1: start.grad_b1.iter().map(|&v| v as f32).collect(),
        w2: start.grad_w2.iter().map(|&v| v as f32).collect(),
        b2: start.grad_b2.iter().map(|&v| v as f32).collect(),
    };
    let base = CwtOutput {
        loss: 0.0,
        grad_student: start.grad_student.mapv(|v| v as f32 as f64),
        grad_w1: start.grad_w1.mapv(|v| v as f32 as f64),
        grad_b1: start.grad_b1.mapv(|v| v as f32 as f64),
        grad_w2: start.grad_w2.mapv(|v| v as f32 as f64),
        grad_b2: start.grad_b2.mapv(|v| v as f32 as f64),
    };
    let emulation = CwtEmulation { options: GradOptions { scale, accumulate: true }, chunk_limit: Some(16) };
    for mode in [Mode::ForwardBackward, Mode::Backward { upstream: 0.5 }] {
        let up = if let Mode::Backward { upstream } = mode { upstream as f64 } else { 1.0 };
        let reference = inputs.reference::<f32>(config, up * scale);
        // The loss is never scaled.
        let reference = CwtOutput { loss: inputs.reference::<f32>(config, 1.0).loss, ..reference };
        for gpu in [GPU, FUSED_GPU] {
            let got = inputs.emulate_on::<f32>(gpu, config, mode, emulation, Some(&initial));
            compare(&format!("accumulate {mode:?} sms {}", gpu.sm_count), &got, &reference, mode, Some(&base));
        }
    }
}

#[test]
fn bitwise_deterministic() {
    let inputs = Inputs::for_kernels(6, [2, 9, 7, 11], CwtShapes { cs: 9, ch: 20, ct: 6 }, true);
    let config = CwtConfig { loss_weight: 1.0, normalize: CwtNormalize::Batch };
    let emulation = CwtEmulation { chunk_limit: Some(50), ..CwtEmulation::default() };
    fn same<T: KdFloat>(a: CwtEmulated<T>, b: CwtEmulated<T>) {
        assert_eq!(a.loss.unwrap().to_bits(), b.loss.unwrap().to_bits());
        let (ga, gb) = (a.grads.unwrap(), b.grads.unwrap());
        assert!(ga.student.iter().zip(&gb.student).all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits()));
        for (x, y) in [(&ga.w1, &gb.w1), (&ga.b1, &gb.b1), (&ga.w2, &gb.w2), (&ga.b2, &gb.b2)] {
            assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
    for gpu in [GPU, FUSED_GPU] {
        let run = |g| inputs.emulate_on::<bf16>(g, config, Mode::ForwardBackward, emulation, None);
        same(run(gpu), run(gpu));
        let run = |g| inputs.emulate_on::<f32>(g, config, Mode::ForwardBackward, emulation, None);
        same(run(gpu), run(gpu));
    }
}

/// The 16-bit paths keep fp32 accuracy (the bf16 pairs of cwt.cu) where a single bf16 rounding of the
/// weights and the hidden layer would not: the loss of a student close to its teacher is a small difference,
/// checked against the f64 reference at the loss tolerance on several seeds.
#[test]
fn tensor_core_tiles_keep_fp32_accuracy() {
    let config = CwtConfig { loss_weight: 1.0, normalize: CwtNormalize::Mean };
    for seed in 20..24 {
        let mut inputs = Inputs::for_kernels(seed, [1, 33, 3, 29], CwtShapes { cs: 33, ch: 70, ct: 31 }, true);
        // The teacher = the MLP's own output (on the student as bf16 reads it), plus a little: (Y - T) is small
        // against Y, so the loss is sensitive to every rounding of Y.
        let s: Vec<f64> = widen(&to_dtype::<bf16>(&inputs.student));
        let CwtShapes { cs, ch, ct } = inputs.shapes;
        let [n, _, h, w] = inputs.dims;
        let plane = h * w;
        let mut teacher = inputs.teacher.clone();
        for b in 0..n {
            for q in 0..plane {
                let z: Vec<f64> = (0..ch)
                    .map(|j| {
                        let a: f64 = (0..cs).map(|c| inputs.w1[j * cs + c] as f64 * s[(b * cs + c) * plane + q]).sum();
                        (a + inputs.b1[j] as f64).max(0.0)
                    })
                    .collect();
                for o in 0..ct {
                    let y: f64 =
                        (0..ch).map(|j| inputs.w2[o * ch + j] as f64 * z[j]).sum::<f64>() + inputs.b2[o] as f64;
                    let t = &mut teacher[(b * ct + o) * plane + q];
                    *t = (y + 0.05 * *t as f64) as f32;
                }
            }
        }
        inputs.teacher = teacher;
        for gpu in [GPU, FUSED_GPU] {
            let reference = inputs.reference::<bf16>(config, 1.0);
            let got = inputs.emulate_on::<bf16>(gpu, config, Mode::ForwardBackward, CwtEmulation::default(), None);
            compare(
                &format!("close teacher seed {seed} sms {}", gpu.sm_count),
                &got,
                &reference,
                Mode::ForwardBackward,
                None,
            );
            let got = inputs.emulate_on::<f16>(gpu, config, Mode::Forward, CwtEmulation::default(), None);
            compare(
                &format!("close teacher f16 seed {seed}"),
                &got,
                &inputs.reference::<f16>(config, 1.0),
                Mode::Forward,
                None,
            );
        }
    }
}

#[test]
fn errors_before_any_launch() {
    let inputs = Inputs::for_kernels(7, [2, 4, 3, 3], CwtShapes { cs: 4, ch: 5, ct: 3 }, true);
    let config = CwtConfig::default();
    let s = inputs.student.clone();
    let t = inputs.teacher.clone();
    let run = |shapes: CwtShapes, dims: &[usize], params: HostParams<'_>| {
        emulate::cwt::<f32>(
            &config,
            &shapes,
            dims,
            &s,
            &t,
            params,
            Mode::ForwardBackward,
            GPU,
            CwtEmulation::default(),
            None,
        )
    };
    // Student channels that do not match W1.
    assert!(matches!(
        run(CwtShapes { cs: 3, ch: 5, ct: 3 }, &[2, 4, 3, 3], inputs.host()),
        Err(KdError::ShapeMismatch { what: "student", .. })
    ));
    // A zero dimension.
    assert!(matches!(run(inputs.shapes, &[2, 4, 0, 3], inputs.host()), Err(KdError::EmptyInput { .. })));
    assert!(matches!(
        run(CwtShapes { cs: 4, ch: 0, ct: 3 }, &[2, 4, 3, 3], inputs.host()),
        Err(KdError::EmptyInput { .. })
    ));
    // Parameter buffers too small for the shapes.
    let short = HostParams { w1: &inputs.w1[..10], ..inputs.host() };
    assert!(matches!(run(inputs.shapes, &[2, 4, 3, 3], short), Err(KdError::BufferTooSmall { .. })));
    // A bad GradOptions::scale.
    let bad = CwtEmulation { options: GradOptions { scale: f64::INFINITY, accumulate: false }, chunk_limit: None };
    assert!(matches!(
        emulate::cwt::<f32>(
            &config,
            &inputs.shapes,
            &[2, 4, 3, 3],
            &s,
            &t,
            inputs.host(),
            Mode::ForwardBackward,
            GPU,
            bad,
            None
        ),
        Err(KdError::InvalidParameter { .. })
    ));
}

/// The recorded fixtures (PyTorch's values) through the emulated kernels: the GPU path against the
/// reference implementation itself, not only against the crate's CPU reference.
#[test]
fn fixtures_through_the_emulated_kernels() {
    use safetensors::{Dtype, SafeTensors};
    let mut seen = 0;
    for path in common::fixture_files() {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !name.starts_with("cwt_") {
            continue;
        }
        seen += 1;
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let f64s = |n: &str| -> (Vec<usize>, Vec<f64>) {
            let t = st.tensor(n).unwrap();
            let d = t.data();
            let v = match t.dtype() {
                Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::F16 => d.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
                Dtype::BF16 => d.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
                other => panic!("{name}: {n} is {other:?}"),
            };
            (t.shape().to_vec(), v)
        };
        let f32s = |n: &str| f64s(n).1.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        let (sdims, student) = f64s("student");
        let (_, teacher) = f64s("teacher");
        let (w1_shape, _) = f64s("mlp.linear1.weight");
        let (w2_shape, _) = f64s("mlp.linear2.weight");
        let shapes = CwtShapes { cs: w1_shape[1], ch: w1_shape[0], ct: w2_shape[0] };
        let normalize = CwtNormalize::parse(meta.get("normalize").map_or("batch", |s| s.as_str())).unwrap();
        let loss_weight: f64 = meta.get("loss_weight").map_or(2e-5, |s| s.parse().unwrap());
        let config = CwtConfig { loss_weight, normalize };
        let (w1, b1, w2, b2) = (
            f32s("mlp.linear1.weight"),
            f32s("mlp.linear1.bias"),
            f32s("mlp.linear2.weight"),
            f32s("mlp.linear2.bias"),
        );
        let params = HostParams { w1: &w1, b1: &b1, w2: &w2, b2: &b2 };
        let dtype = st.tensor("student").unwrap().dtype();
        let got: (f32, Vec<f64>, [Vec<f32>; 4]) = match dtype {
            Dtype::F32 => run_fixture::<f32>(&config, &shapes, &sdims, &student, &teacher, params),
            Dtype::F16 => run_fixture::<f16>(&config, &shapes, &sdims, &student, &teacher, params),
            Dtype::BF16 => run_fixture::<bf16>(&config, &shapes, &sdims, &student, &teacher, params),
            other => panic!("{name}: student is {other:?}"),
        };
        let kd_dtype = match dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            _ => DType::BF16,
        };
        check(&format!("{name} loss"), &[got.0 as f64], &f64s("loss").1, tolerance(kd_dtype, OutputKind::Loss));
        check(
            &format!("{name} grad.student"),
            &got.1,
            &f64s("grad.student").1,
            tolerance(kd_dtype, OutputKind::Tensor),
        );
        for (i, n) in
            ["grad.mlp.linear1.weight", "grad.mlp.linear1.bias", "grad.mlp.linear2.weight", "grad.mlp.linear2.bias"]
                .into_iter()
                .enumerate()
        {
            let g: Vec<f64> = got.2[i].iter().map(|&v| v as f64).collect();
            check(&format!("{name} {n}"), &g, &f64s(n).1, tolerance(DType::F32, OutputKind::Tensor));
        }
    }
    assert!(seen > 0, "no cwt fixture");
}

fn run_fixture<T: KdFloat>(
    config: &CwtConfig,
    shapes: &CwtShapes,
    dims: &[usize],
    student: &[f64],
    teacher: &[f64],
    params: HostParams<'_>,
) -> (f32, Vec<f64>, [Vec<f32>; 4]) {
    let s: Vec<T> = student.iter().map(|&v| T::from_f64(v)).collect();
    let t: Vec<T> = teacher.iter().map(|&v| T::from_f64(v)).collect();
    let out =
        emulate::cwt(config, shapes, dims, &s, &t, params, Mode::ForwardBackward, GPU, CwtEmulation::default(), None)
            .unwrap();
    let g = out.grads.unwrap();
    (out.loss.unwrap(), widen(&g.student), [g.w1, g.b1, g.w2, g.b2])
}
