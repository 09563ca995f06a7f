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

use crate::common::{numel, shape_name, Harness, Inputs, Pass};
use kd_kernels::half::bf16;
use kd_kernels::ndarray::Array4;
use kd_kernels::skd::{check_shapes, RelationShapes, SkdConfig, SkdCpu, SkdCuda, SkdPool};
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

fn bench_gpu<T: KdFloat>(h: &mut Harness, skd: &mut SkdCuda, student: &Array4<T>, teacher: &Array4<T>) {
    let shape = GPU_SHAPE;
    if !h.wants("gpu", Pass::ForwardBackward, &shape, T::DTYPE) {
        return;
    }
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
            bench_gpu::<f32>(&mut h, skd, &inputs.student, &inputs.teacher);
            let (student, teacher) = inputs.to_dtype::<bf16>();
            drop(inputs);
            bench_gpu::<bf16>(&mut h, skd, &student, &teacher);
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
