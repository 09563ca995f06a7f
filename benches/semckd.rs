//! SemCKD benchmarks: the whole call (Grams, MLPs, attention, pooled MSE of every pair, every gradient) on
//! CIFAR resnet32x4 -> resnet8x4 shapes (B = 64, 3 x 3 pairs) and an ImageNet-like 4 x 4 layout (B = 32), on
//! the GPU (`SemckdCuda::forward_backward`, f32 and bf16) when one is present, and the f64 CPU reference on
//! the CIFAR layout. `python-reference/bench_semckd_cwt.py` times PyTorch on the same shapes.
//!
//! ```text
//! cargo bench --bench losses -- semckd
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use kd_kernels::half::bf16;
use kd_kernels::ndarray::{ArrayView1, ArrayView2, ArrayView4};
use kd_kernels::semckd::{
    EmbedParamGrads, EmbedParams, EmbedWeights, SemckdConfig, SemckdCpu, SemckdCpuInputs, SemckdCuda, SemckdGrads,
    SemckdInputs, SemckdLayers,
};
use kd_kernels::{GradOptions, KdFloat};

/// resnet32x4 -> resnet8x4 (losses.md §4.1): both [64, 32, 32], [128, 16, 16], [256, 8, 8].
fn cifar() -> SemckdLayers {
    let maps = vec![[64, 32, 32], [128, 16, 16], [256, 8, 8]];
    SemckdLayers { batch: 64, embed_dim: 16, student: maps.clone(), teacher: maps }
}

/// ResNet-18 <- ResNet-34 stage outputs at 224 x 224.
fn imagenet() -> SemckdLayers {
    let maps = vec![[64, 56, 56], [128, 28, 28], [256, 14, 14], [512, 7, 7]];
    SemckdLayers { batch: 32, embed_dim: 8, student: maps.clone(), teacher: maps }
}

struct Data {
    student: Vec<Vec<f32>>,
    teacher: Vec<Vec<f32>>,
    proj: Vec<Vec<f32>>,
    query: Vec<[Vec<f32>; 4]>,
    key: Vec<[Vec<f32>; 4]>,
}

fn data(l: &SemckdLayers) -> Data {
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    };
    let t = l.teachers();
    let numels = l.embed_numels();
    let mut mlp = || [0, 1, 2, 3].map(|k| next(numels[k], 0.1));
    let query = (0..l.students()).map(|_| mlp()).collect();
    let key = (0..t).map(|_| mlp()).collect();
    Data {
        student: (0..l.students()).map(|i| next(l.student_shape(i).iter().product(), 1.0)).collect(),
        teacher: (0..t).map(|j| next(l.teacher_shape(j).iter().product(), 1.0)).collect(),
        proj: (0..l.students() * t).map(|p| next(l.pair_numel(p / t, p % t), 1.0)).collect(),
        query,
        key,
    }
}

fn time(name: &str, iters: u32, mut f: impl FnMut()) {
    f();
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    let per = start.elapsed() / iters;
    println!("{name}: {:.3} ms", per.as_secs_f64() * 1e3);
    black_box(per);
}

fn weights<'a>(l: &SemckdLayers, m: &'a [Vec<f32>; 4]) -> EmbedWeights<'a> {
    let [w1, b1, w2, b2] = l.embed_shapes();
    EmbedWeights {
        linear1_weight: ArrayView2::from_shape((w1[0], w1[1]), &m[0]).unwrap(),
        linear1_bias: ArrayView1::from_shape(b1[0], &m[1]).unwrap(),
        linear2_weight: ArrayView2::from_shape((w2[0], w2[1]), &m[2]).unwrap(),
        linear2_bias: ArrayView1::from_shape(b2[0], &m[3]).unwrap(),
    }
}

fn cpu(name: &str, l: &SemckdLayers, d: &Data) {
    let t = l.teachers();
    let v4 = view4;
    let inputs = SemckdCpuInputs {
        student: (0..l.students()).map(|i| v4(l.student_shape(i), &d.student[i])).collect(),
        teacher: (0..t).map(|j| v4(l.teacher_shape(j), &d.teacher[j])).collect(),
        proj: (0..l.students()).map(|i| (0..t).map(|j| v4(l.pair_shape(i, j), &d.proj[i * t + j])).collect()).collect(),
        query: d.query.iter().map(|m| weights(l, m)).collect(),
        key: d.key.iter().map(|m| weights(l, m)).collect(),
    };
    let cpu = SemckdCpu::new(SemckdConfig::default()).unwrap();
    time(&format!("semckd/cpu/f64/forward_backward/{name}"), 3, || {
        black_box(cpu.forward_backward(&inputs).unwrap());
    });
}

fn gpu<T: KdFloat>(name: &str, l: &SemckdLayers, d: &Data) -> Result<(), Box<dyn std::error::Error>> {
    let stream = kd_kernels::cuda::default_stream(0)?;
    let conv = |v: &Vec<f32>| v.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>();
    let up = |v: &Vec<f32>| stream.clone_htod(&conv(v));
    let upf = |v: &Vec<f32>| stream.clone_htod(v);
    let s = d.student.iter().map(up).collect::<Result<Vec<_>, _>>()?;
    let t = d.teacher.iter().map(up).collect::<Result<Vec<_>, _>>()?;
    let p = d.proj.iter().map(up).collect::<Result<Vec<_>, _>>()?;
    let q = d.query.iter().map(|m| m.iter().map(upf).collect::<Result<Vec<_>, _>>()).collect::<Result<Vec<_>, _>>()?;
    let k = d.key.iter().map(|m| m.iter().map(upf).collect::<Result<Vec<_>, _>>()).collect::<Result<Vec<_>, _>>()?;
    let zeros_like = |v: &Vec<f32>| stream.alloc_zeros::<T>(v.len());
    let zeros_f = |v: &Vec<f32>| stream.alloc_zeros::<f32>(v.len());
    let mut gs = d.student.iter().map(zeros_like).collect::<Result<Vec<_>, _>>()?;
    let mut gp = d.proj.iter().map(zeros_like).collect::<Result<Vec<_>, _>>()?;
    let mut gq =
        d.query.iter().map(|m| m.iter().map(zeros_f).collect::<Result<Vec<_>, _>>()).collect::<Result<Vec<_>, _>>()?;
    let mut gk =
        d.key.iter().map(|m| m.iter().map(zeros_f).collect::<Result<Vec<_>, _>>()).collect::<Result<Vec<_>, _>>()?;
    let mut loss = stream.alloc_zeros::<f32>(1)?;

    let sr: Vec<&dyn kd_kernels::cudarc::driver::DevicePtr<T>> = s.iter().map(|x| x as _).collect();
    let tr: Vec<&dyn kd_kernels::cudarc::driver::DevicePtr<T>> = t.iter().map(|x| x as _).collect();
    let pr: Vec<&dyn kd_kernels::cudarc::driver::DevicePtr<T>> = p.iter().map(|x| x as _).collect();
    let qp: Vec<EmbedParams<'_>> = q.iter().map(|v| embed_params(v)).collect();
    let kp: Vec<EmbedParams<'_>> = k.iter().map(|v| embed_params(v)).collect();
    let inputs = SemckdInputs { student: &sr, teacher: &tr, proj: &pr, query: &qp, key: &kp };

    let mut grads = SemckdGrads {
        student: gs.iter_mut().map(|x| x as &mut dyn kd_kernels::cudarc::driver::DevicePtrMut<T>).collect(),
        proj: gp.iter_mut().map(|x| x as &mut dyn kd_kernels::cudarc::driver::DevicePtrMut<T>).collect(),
        query: gq.iter_mut().map(|v| embed_grads(v)).collect(),
        key: gk.iter_mut().map(|v| embed_grads(v)).collect(),
    };
    let mut semckd = SemckdCuda::new(stream.clone(), SemckdConfig::default())?;
    semckd.reserve(l, T::DTYPE)?;
    let iters = 50;
    semckd.forward_backward(l, &inputs, &mut loss, None, Some(&mut grads), GradOptions::OVERWRITE)?;
    stream.synchronize()?;
    let start = Instant::now();
    for _ in 0..iters {
        semckd.forward_backward(l, &inputs, &mut loss, None, Some(&mut grads), GradOptions::OVERWRITE)?;
    }
    stream.synchronize()?;
    let per: Duration = start.elapsed() / iters;
    println!("semckd/cuda/{}/forward_backward/{name}: {:.3} ms", T::DTYPE, per.as_secs_f64() * 1e3);
    Ok(())
}

pub fn run() {
    for (name, layers) in [("cifar_b64_3x3", cifar()), ("imagenet_b32_4x4", imagenet())] {
        let d = data(&layers);
        if kd_kernels::cuda::gpu_present() {
            for r in [gpu::<f32>(name, &layers, &d), gpu::<bf16>(name, &layers, &d)] {
                if let Err(e) = r {
                    println!("semckd/cuda/{name}: {e}");
                }
            }
        } else {
            println!("semckd/cuda/{name}: skipped (no GPU)");
        }
        if name.starts_with("cifar") {
            cpu(name, &layers, &d);
        }
    }
}

fn view4(s: [usize; 4], v: &[f32]) -> ArrayView4<'_, f32> {
    ArrayView4::from_shape(s, v).unwrap()
}

fn embed_params(v: &[kd_kernels::cudarc::driver::CudaSlice<f32>]) -> EmbedParams<'_> {
    EmbedParams { linear1_weight: &v[0], linear1_bias: &v[1], linear2_weight: &v[2], linear2_bias: &v[3] }
}

fn embed_grads(v: &mut [kd_kernels::cudarc::driver::CudaSlice<f32>]) -> EmbedParamGrads<'_> {
    let [a, b, c, d] = v else { unreachable!("four parameters") };
    EmbedParamGrads { linear1_weight: a, linear1_bias: b, linear2_weight: c, linear2_bias: d }
}
