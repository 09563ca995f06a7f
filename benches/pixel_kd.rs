//! Pixel-KD benchmarks: `PixelKdCuda::forward_backward` (the training call, one launch) on the GPU and the f64
//! CPU reference's `forward_backward`, on `common::SHAPES` in f32 and bf16, with the setting
//! `python-reference/bench_torch.py` times for PyTorch (tau 1, `mean` reduction, no tau^2, weight 1).
//!
//! ```text
//! cargo bench --bench pixel_kd
//! cargo bench --bench pixel_kd -- 8x19x64x128 --quick
//! bench-pixel_kd --bench     # the compiled bench executable, as the GPU host runs it from the repo root
//! ```
//!
//! Besides criterion's report, prints the CUDA-event kernel time, GB/s and share of the copy bandwidth of
//! every GPU case, and appends them as JSON lines to `$OUT/bench_results.jsonl` (or
//! `target/bench_results.jsonl`).

mod common;

use common::{Harness, Inputs, Pass};
use kd_kernels::half::bf16;
use kd_kernels::ndarray::Array4;
use kd_kernels::pixel_kd::{PixelKdConfig, PixelKdCpu, PixelKdCuda, PixelKdPath, Reduction};
use kd_kernels::KdFloat;

const GPU_PASSES: [Pass; 2] = [Pass::ForwardBackward, Pass::PerPixelForwardBackward];

fn main() {
    // bench_torch.py's `pixel_kd_bench_loss`. The weight does not change the work done.
    let config = PixelKdConfig { tau: 1.0, loss_weight: 1.0, reduction: Reduction::Mean, scale_tau2: false };
    let mut h = Harness::new("pixel_kd");
    let mut cuda = h.open_gpu(|stream| PixelKdCuda::new(stream, config));
    let mut per_pixel = h.open_gpu(|stream| Ok(PixelKdCuda::new(stream, config)?.with_path(PixelKdPath::PerPixel)));
    let cpu = PixelKdCpu::new(config).expect("a valid configuration");
    for &shape in h.args.shapes() {
        if !h.wants_shape(&shape, &GPU_PASSES) {
            continue;
        }
        let inputs = Inputs::generate(shape);
        let (student, teacher) = (&inputs.student, &inputs.teacher);
        run::<f32>(&mut h, cuda.as_mut(), per_pixel.as_mut(), &cpu, shape, student, teacher);
        let (student, teacher) = inputs.to_dtype::<bf16>();
        drop(inputs);
        run::<bf16>(&mut h, cuda.as_mut(), per_pixel.as_mut(), &cpu, shape, &student, &teacher);
    }
    h.finish();
}

fn run<T: KdFloat>(
    h: &mut Harness,
    cuda: Option<&mut PixelKdCuda>,
    per_pixel: Option<&mut PixelKdCuda>,
    cpu: &PixelKdCpu,
    shape: [usize; 4],
    student: &Array4<T>,
    teacher: &Array4<T>,
) {
    if let (Some(cuda), Some(per_pixel)) = (cuda, per_pixel) {
        if let Err(e) = run_gpu(h, cuda, per_pixel, shape, student, teacher) {
            println!("pixel_kd {} {}: GPU benches failed: {e}", T::DTYPE, common::shape_name(&shape));
        }
    }
    h.cpu_bench(shape, student, teacher, |s, t| cpu.forward_backward(s, t));
}

fn run_gpu<T: KdFloat>(
    h: &mut Harness,
    cuda: &mut PixelKdCuda,
    per_pixel: &mut PixelKdCuda,
    shape: [usize; 4],
    student: &Array4<T>,
    teacher: &Array4<T>,
) -> common::Res<()> {
    if !GPU_PASSES.iter().any(|&p| h.wants("gpu", p, &shape, T::DTYPE)) {
        return Ok(());
    }
    let stream = h.stream().expect("a PixelKdCuda exists only with a GPU").clone();
    let s = stream.clone_htod(student.as_slice().expect("standard layout"))?;
    let t = stream.clone_htod(teacher.as_slice().expect("standard layout"))?;
    let mut grad = stream.alloc_zeros::<T>(s.len())?;
    let mut loss = stream.alloc_zeros::<f32>(1)?;
    h.gpu_bench::<T>(Pass::ForwardBackward, shape, || cuda.forward_backward(&shape, &s, &t, &mut loss, &mut grad));
    h.gpu_bench::<T>(Pass::PerPixelForwardBackward, shape, || {
        per_pixel.forward_backward(&shape, &s, &t, &mut loss, &mut grad)
    });
    stream.synchronize()?;
    Ok(())
}
