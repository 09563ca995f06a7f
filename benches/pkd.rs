//! PKD benchmarks: every level of a RetinaNet / RTMDet feature pyramid in one call (8 images of 800 x 1216,
//! 256 channels, strides 8 to 128: 100x152, 50x76, 25x38, 13x19, 7x10), on the GPU (`PkdCuda`, f32 and bf16:
//! `forward_backward` and `forward`) when one is present, and the f64 CPU reference on the same pyramid at
//! 2 images and 64 channels. `python-reference/bench_pkd.py` times PyTorch (mmrazor's `PKDLoss`, eager and
//! `torch.compile`) on the same shapes.
//!
//! ```text
//! cargo bench --bench losses -- pkd
//! ```
//!
//! `gbps` counts minimal traffic: student and teacher read once and the gradient written once (3 tensors);
//! the kernels read both inputs twice (the statistics over the whole batch come first), so 5 tensors move.

use std::hint::black_box;
use std::time::Instant;

use kd_kernels::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use kd_kernels::half::bf16;
use kd_kernels::ndarray::ArrayView4;
use kd_kernels::pkd::{PkdConfig, PkdCpu, PkdCuda, PkdLevels};
use kd_kernels::testing::SplitMix64;
use kd_kernels::KdFloat;

/// Strides 8, 16, 32, 64 and 128 of an 800 x 1216 input (mmdet's padded size of 800 x 1333 images).
const PLANES: [[usize; 2]; 5] = [[100, 152], [50, 76], [25, 38], [13, 19], [7, 10]];

fn pyramid(images: usize, channels: usize) -> Vec<[usize; 4]> {
    PLANES.iter().map(|&[h, w]| [images, channels, h, w]).collect()
}

/// Teacher features ~ N(0, 1) plus a per-channel offset; the student correlated with it (r about 0.8).
fn features(dims: &[[usize; 4]]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut rng = SplitMix64::new(1);
    let mut student = Vec::new();
    let mut teacher = Vec::new();
    for &[n, c, h, w] in dims {
        let offset: Vec<f64> = (0..c).map(|_| rng.normal()).collect();
        let t: Vec<f32> = (0..n * c * h * w).map(|i| (rng.normal() + offset[(i / (h * w)) % c]) as f32).collect();
        student.push(t.iter().map(|&v| (0.8 * v as f64 + 0.6 * rng.normal()) as f32).collect());
        teacher.push(t);
    }
    (student, teacher)
}

fn gpu<T: KdFloat>(
    name: &str,
    levels: &PkdLevels,
    s: &[Vec<f32>],
    t: &[Vec<f32>],
) -> Result<(), Box<dyn std::error::Error>> {
    let stream = kd_kernels::cuda::default_stream(0)?;
    let up = |v: &Vec<f32>| stream.clone_htod(&v.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>());
    let s_dev = s.iter().map(up).collect::<Result<Vec<_>, _>>()?;
    let t_dev = t.iter().map(up).collect::<Result<Vec<_>, _>>()?;
    let mut g_dev: Vec<CudaSlice<T>> = s.iter().map(|v| stream.alloc_zeros::<T>(v.len())).collect::<Result<_, _>>()?;
    let mut loss = stream.alloc_zeros::<f32>(1)?;
    let sr: Vec<&dyn DevicePtr<T>> = s_dev.iter().map(|x| x as _).collect();
    let tr: Vec<&dyn DevicePtr<T>> = t_dev.iter().map(|x| x as _).collect();
    let mut pkd = PkdCuda::new(stream.clone(), PkdConfig { loss_weight: 6.0 })?;
    pkd.reserve(levels, T::DTYPE)?;
    let numel: usize = levels.shapes().iter().map(|l| l.numel()).sum();
    let bytes = 3.0 * (numel * T::DTYPE.size()) as f64;
    let iters = 50;
    for forward_only in [false, true] {
        let mut call = |loss: &mut CudaSlice<f32>, g: &mut Vec<CudaSlice<T>>| -> kd_kernels::Result<()> {
            if forward_only {
                pkd.forward(levels, &sr, &tr, loss)
            } else {
                let grads: Vec<&mut dyn DevicePtrMut<T>> = g.iter_mut().map(|x| x as _).collect();
                pkd.forward_backward(levels, &sr, &tr, loss, grads)
            }
        };
        call(&mut loss, &mut g_dev)?;
        stream.synchronize()?;
        let start = Instant::now();
        for _ in 0..iters {
            call(&mut loss, &mut g_dev)?;
        }
        stream.synchronize()?;
        let ms = start.elapsed().as_secs_f64() * 1e3 / iters as f64;
        let pass = if forward_only { "forward" } else { "forward_backward" };
        let traffic = if forward_only { 2.0 / 3.0 * bytes } else { bytes };
        println!(
            "pkd/cuda/{}/{pass}/{name}: {ms:.3} ms, {:.0} GB/s minimal traffic",
            T::DTYPE,
            traffic / (ms * 1e-3) / 1e9
        );
    }
    Ok(())
}

fn cpu(name: &str, dims: &[[usize; 4]]) {
    let (s, t) = features(dims);
    fn view<'a>(v: &'a [Vec<f32>], dims: &[[usize; 4]]) -> Vec<ArrayView4<'a, f32>> {
        v.iter().zip(dims).map(|(x, d)| ArrayView4::from_shape(*d, &x[..]).unwrap()).collect()
    }
    let (sv, tv) = (view(&s, dims), view(&t, dims));
    let cpu = PkdCpu::new(PkdConfig { loss_weight: 6.0 }).unwrap();
    let start = Instant::now();
    black_box(cpu.forward_backward(&sv, &tv).unwrap());
    println!("pkd/cpu/f64/forward_backward/{name}: {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
}

pub fn run() {
    let name = "fpn_8x256_800x1216";
    let dims = pyramid(8, 256);
    if kd_kernels::cuda::gpu_present() {
        let levels = PkdLevels::same(&dims).unwrap();
        let (s, t) = features(&dims);
        for r in [gpu::<f32>(name, &levels, &s, &t), gpu::<bf16>(name, &levels, &s, &t)] {
            if let Err(e) = r {
                println!("pkd/cuda/{name}: {e}");
            }
        }
    } else {
        println!("pkd/cuda/{name}: skipped (no GPU)");
    }
    cpu("fpn_2x64_800x1216", &pyramid(2, 64));
}
