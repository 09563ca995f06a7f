//! IFVD benchmarks: `IfvdCuda::forward_backward` and `forward` on the GPU in f32 and bf16, on Cityscapes-like
//! features (8x256x64x128, student and teacher, the labels at the 512x1024 crop, 19 classes) and ADE20K's 150
//! classes on the same features; the f64 CPU reference's `forward_backward` on a small shape.
//!
//! ```text
//! cargo bench --bench losses -- ifvd
//! cargo bench --bench losses -- ifvd_bf16/gpu_forward_backward
//! ```
//!
//! Minimal traffic for a forward + backward is the student and the teacher read once and the gradient
//! written once; the kernels read the teacher twice and the student three times (`docs/losses.md` §11.7).
//! The PyTorch baselines of the same shapes are `python-reference/bench_ifvd.py`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use kd_kernels::half::bf16;
use kd_kernels::ifvd::{check_shapes, IfvdConfig, IfvdCpu, IfvdCuda, IfvdLabels, IfvdShapes};
use kd_kernels::ndarray::{ArrayView3, ArrayView4};
use kd_kernels::testing::SplitMix64;
use kd_kernels::KdFloat;

/// (name, student [N, Cs, H, W], teacher channels, labels [Hl, Wl], classes).
type Shape = (&'static str, [usize; 4], usize, [usize; 2], usize);
const SHAPES: [Shape; 2] = [
    ("cityscapes_8x256x64x128_k19", [8, 256, 64, 128], 256, [512, 1024], 19),
    ("ade20k_8x256x64x128_k150", [8, 256, 64, 128], 256, [512, 1024], 150),
];

fn normal(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// Labels in 16x32 patches (segmentation maps are piecewise constant), one patch in ten 255.
fn labels(rng: &mut SplitMix64, [n, h, w]: [usize; 3], classes: usize) -> Vec<i64> {
    let (rows, cols) = (h.div_ceil(16), w.div_ceil(32));
    let patch: Vec<i64> =
        (0..n * rows * cols).map(|_| if rng.below(10) == 0 { 255 } else { rng.below(classes) as i64 }).collect();
    (0..n * h * w).map(|i| patch[((i / (h * w)) * rows + (i / w) % h / 16) * cols + i % w / 32]).collect()
}

pub fn run() {
    let mut c = Criterion::default().configure_from_args();
    let stream = match kd_kernels::cuda::default_stream(0) {
        Ok(s) => Some(s),
        Err(e) => {
            println!("ifvd: GPU benches skipped: {e}");
            None
        }
    };
    for (name, dims, ct, [hl, wl], classes) in SHAPES {
        let shapes = check_shapes(&dims, &[dims[0], ct, dims[2], dims[3]], &[dims[0], hl, wl]).expect("valid shapes");
        let mut rng = SplitMix64::new(19);
        let s = normal(&mut rng, shapes.student.numel());
        let t = normal(&mut rng, shapes.teacher().numel());
        let l = labels(&mut rng, shapes.label_dims(), classes);
        if let Some(stream) = &stream {
            let config = IfvdConfig::new(classes);
            if let Err(e) = gpu::<f32>(&mut c, stream, config, name, &shapes, (&s, &t, &l)) {
                println!("ifvd f32 {name}: GPU bench failed: {e}");
            }
            if let Err(e) = gpu::<bf16>(&mut c, stream, config, name, &shapes, (&s, &t, &l)) {
                println!("ifvd bf16 {name}: GPU bench failed: {e}");
            }
        }
    }
    cpu(&mut c);
    c.final_summary();
}

fn gpu<T: KdFloat>(
    c: &mut Criterion,
    stream: &std::sync::Arc<kd_kernels::cudarc::driver::CudaStream>,
    config: IfvdConfig,
    name: &str,
    shapes: &IfvdShapes,
    (s, t, l): (&[f32], &[f32], &[i64]),
) -> Result<(), Box<dyn std::error::Error>> {
    let to_t = |v: &[f32]| v.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>();
    let (ds, dt) = (stream.clone_htod(&to_t(s))?, stream.clone_htod(&to_t(t))?);
    let dl = stream.clone_htod(l)?;
    let mut grad = stream.alloc_zeros::<T>(s.len())?;
    let mut loss = stream.alloc_zeros::<f32>(1)?;
    let mut ifvd = IfvdCuda::new(stream.clone(), config)?;
    ifvd.reserve(shapes, T::DTYPE)?;
    let bytes = |tensors: usize| (tensors * s.len() * std::mem::size_of::<T>()) as u64;
    let mut group = c.benchmark_group(format!("ifvd_{}", T::DTYPE));
    group.measurement_time(Duration::from_secs(3)).sample_size(20);
    group.throughput(Throughput::Bytes(bytes(3)));
    group.bench_function(BenchmarkId::new("gpu_forward_backward", name), |b| {
        b.iter(|| {
            ifvd.forward_backward(shapes, &ds, &dt, IfvdLabels::I64(&dl), &mut loss, &mut grad)
                .expect("forward_backward");
            stream.synchronize().expect("synchronize");
        })
    });
    group.throughput(Throughput::Bytes(bytes(2)));
    group.bench_function(BenchmarkId::new("gpu_forward", name), |b| {
        b.iter(|| {
            ifvd.forward(shapes, &ds, &dt, IfvdLabels::I64(&dl), &mut loss).expect("forward");
            stream.synchronize().expect("synchronize");
        })
    });
    group.finish();
    Ok(())
}

fn cpu(c: &mut Criterion) {
    let dims = [2, 64, 16, 32];
    let mut rng = SplitMix64::new(20);
    let n: usize = dims.iter().product();
    let (s, t) = (normal(&mut rng, n), normal(&mut rng, n));
    let l = labels(&mut rng, [2, 16, 32], 19);
    let cpu = IfvdCpu::new(IfvdConfig::new(19)).expect("valid configuration");
    let mut group = c.benchmark_group("ifvd_f32");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    group.bench_function(BenchmarkId::new("cpu_forward_backward", "2x64x16x32_k19"), |b| {
        b.iter(|| {
            cpu.forward_backward(
                ArrayView4::from_shape(dims, &s[..]).expect("shape"),
                ArrayView4::from_shape(dims, &t[..]).expect("shape"),
                ArrayView3::from_shape([2, 16, 32], &l[..]).expect("shape"),
            )
            .expect("CPU reference")
        })
    });
    group.finish();
}
