//! SKD benchmarks: `SkdCuda::forward_backward` on the issue's size, 8 images of 512 student and 512 teacher
//! channels at 64 x 128, with the official 2x2 max pool (`skd`) and without pooling (`skd_pool1`), in f32 and
//! bf16 on the GPU when one is present (skipped without one), and the f64 CPU reference's `forward_backward`
//! on a small 2x64x32x48. Each configuration first prints the device workspace a call needs (what
//! `SkdCuda::reserve` allocates, `SkdConfig::workspace_bytes`) beside the inputs' size: the workspace is the
//! Gram matrices and their chunk partials, `O(N R^2)`, plus one float per pooled pixel and side
//! (`docs/losses.md §9.5`).
//!
//! ```text
//! cargo bench --bench losses -- skd
//! cargo bench --bench losses -- skd_f32/gpu_forward_backward/8x512x64x128 --quick
//! ```
//!
//! Minimal traffic counts 3 tensors for the training call, as for the other losses. The Gram form reads the
//! inputs several times (the norms, the Grams, then the gradient, which pools and normalises again).
//!
//! Each GPU configuration prints its Gram path (`skd::gram_path`): f32 runs the CUDA-core Gram, bf16 (these
//! shapes have `Cs = Ct`) the tensor-core Gram on split-f16 pairs, three MMA products per product. For the
//! tensor-core path it also prints the MMA FLOPs per call, `3 * 2 * N * R^2 * P` (`R = 3 C` stacked rows,
//! `P` pooled pixels), and that count over the whole call's median time: a lower bound on the Gram kernel's
//! tensor-core rate, to be divided by the device's dense bf16/f16 peak (989 TFLOP/s on an H100 SXM).

use crate::common::{numel, shape_name, Harness, Inputs, Pass};
use kd_kernels::half::bf16;
use kd_kernels::ndarray::Array4;
use kd_kernels::skd::{check_shapes, gram_path, GramPath, RelationShapes, SkdConfig, SkdCpu, SkdCuda, SkdPool};
use kd_kernels::KdFloat;

/// Student and teacher `[8, 512, 64, 128]`, the size `python-reference/bench_skd_cirkd.py` times PyTorch at.
const GPU_SHAPE: [usize; 4] = [8, 512, 64, 128];
/// The CPU reference's (test mode runs it once).
const CPU_SHAPE: [usize; 4] = [2, 64, 32, 48];

fn relation(shape: &[usize; 4]) -> RelationShapes {
    check_shapes(shape, shape).expect("the bench's shapes are valid")
}

/// Prints the workspace of a call on `shape` next to the size of one input in f32 and bf16.
fn print_workspace(loss: &str, config: &SkdConfig, shape: &[usize; 4]) {
    let mib = |bytes: usize| bytes as f64 / (1u64 << 20) as f64;
    match config.workspace_bytes(&relation(shape)) {
        Ok(bytes) => println!(
            "{loss} {}: workspace {bytes} bytes ({:.2} MiB); one input {:.2} MiB in f32, {:.2} MiB in bf16",
            shape_name(shape),
            mib(bytes),
            mib(4 * numel(shape)),
            mib(2 * numel(shape)),
        ),
        Err(e) => println!("{loss} {}: workspace: {e}", shape_name(shape)),
    }
}

/// The tensor-core Gram's MMA FLOPs of one call: three products (lo*hi, hi*lo, hi*hi) of the stacked Gram.
fn tensor_core_flops(config: &SkdConfig, shape: &[usize; 4]) -> f64 {
    let (ph, pw) = config.pooled_dims(shape[2], shape[3]);
    let rows = 3.0 * shape[1] as f64;
    3.0 * 2.0 * shape[0] as f64 * rows * rows * (ph * pw) as f64
}

fn bench_gpu<T: KdFloat>(
    h: &mut Harness,
    config: &SkdConfig,
    skd: &mut SkdCuda,
    student: &Array4<T>,
    teacher: &Array4<T>,
) {
    let shape = GPU_SHAPE;
    if !h.wants("gpu", Pass::ForwardBackward, &shape, T::DTYPE) {
        return;
    }
    let path = gram_path(&relation(&shape), T::DTYPE);
    println!("{} {} {}: Gram path {path:?}", h.loss, T::DTYPE, shape_name(&shape));
    let run = |h: &mut Harness, skd: &mut SkdCuda| -> crate::common::Res<()> {
        let stream = h.stream().expect("the GPU object exists only with a GPU").clone();
        let s = stream.clone_htod(student.as_slice().expect("standard layout"))?;
        let t = stream.clone_htod(teacher.as_slice().expect("standard layout"))?;
        let mut grad = stream.alloc_zeros::<T>(s.len())?;
        let mut loss = stream.alloc_zeros::<f32>(1)?;
        let shapes = relation(&shape);
        skd.reserve(&shapes, T::DTYPE)?;
        h.gpu_bench::<T>(Pass::ForwardBackward, shape, || skd.forward_backward(&shapes, &s, &t, &mut loss, &mut grad));
        stream.synchronize()?;
        Ok(())
    };
    if let Err(e) = run(h, skd) {
        println!("{} {} {}: GPU bench failed: {e}", h.loss, T::DTYPE, shape_name(&shape));
        return;
    }
    if path == GramPath::TensorCores {
        let flops = tensor_core_flops(config, &shape);
        let record = h.last_record().filter(|r| r.dtype == T::DTYPE && r.shape == shape);
        let rate = record.map(|r| flops / (r.timing.median_ms * 1e-3) / 1e12);
        println!(
            "{} {} {}: tensor-core Gram {:.3e} MMA FLOPs per call{}",
            h.loss,
            T::DTYPE,
            shape_name(&shape),
            flops,
            rate.map_or(String::new(), |t| format!(", {t:.1} TFLOP/s over the whole call")),
        );
    }
}

fn bench(loss: &'static str, pool: SkdPool) {
    let config = SkdConfig { pool, ..SkdConfig::default() };
    print_workspace(loss, &config, &GPU_SHAPE);
    print_workspace(loss, &config, &CPU_SHAPE);
    let mut h = Harness::new(loss);
    let mut gpu = h.open_gpu(|stream| SkdCuda::new(stream, config));
    if let Some(skd) = gpu.as_mut() {
        if h.wants_shape(&GPU_SHAPE, &[Pass::ForwardBackward]) {
            let inputs = Inputs::generate(GPU_SHAPE);
            bench_gpu::<f32>(&mut h, &config, skd, &inputs.student, &inputs.teacher);
            let (student, teacher) = inputs.to_dtype::<bf16>();
            drop(inputs);
            bench_gpu::<bf16>(&mut h, &config, skd, &student, &teacher);
        }
    }
    if h.wants_shape(&CPU_SHAPE, &[]) {
        let inputs = Inputs::generate(CPU_SHAPE);
        let cpu = SkdCpu::new(config).expect("the configuration is valid");
        h.cpu_bench::<f32>(CPU_SHAPE, &inputs.student, &inputs.teacher, |s, t| cpu.forward_backward(s, t));
    }
    h.finish();
}

pub fn run() {
    bench("skd", SkdPool::Max2x2);
    bench("skd_pool1", SkdPool::None);
}
