//! CWD benchmarks: `CwdCuda::forward_backward` (the training call; also on the two-pass kernels, for
//! comparison with the default single pass) and `forward` on the GPU, and the f64 CPU
//! reference's `forward_backward`, on `common::SHAPES` in f32 and bf16, with the paper's setting (tau 4,
//! loss weight 3) that `python-reference/bench_torch.py` times for PyTorch.
//!
//! ```text
//! cargo bench --bench cwd                       # everything
//! cargo bench --bench cwd -- 8x19x64x128 --quick
//! bench-cwd --bench     # the compiled bench executable, as the GPU host runs it from the repo root
//! ```
//!
//! Besides criterion's report, prints the CUDA-event kernel time, GB/s and share of the copy bandwidth of
//! every GPU case, and appends them as JSON lines to `$OUT/bench_results.jsonl` (or
//! `target/bench_results.jsonl`).

mod common;

use common::{Harness, Inputs, Pass};
use kd_kernels::cwd::{CwdConfig, CwdCpu, CwdCuda, CwdPath};
use kd_kernels::half::bf16;
use kd_kernels::ndarray::Array4;
use kd_kernels::KdFloat;

const GPU_PASSES: [Pass; 3] = [Pass::ForwardBackward, Pass::TwoPassForwardBackward, Pass::Forward];

fn main() {
    // tau 4, loss weight 3: the paper's Cityscapes setting, and bench_torch.py's.
    let config = CwdConfig::default();
    let mut h = Harness::new("cwd");
    let mut cuda = h.open_gpu(|stream| CwdCuda::new(stream, config));
    let mut two_pass = h.open_gpu(|stream| Ok(CwdCuda::new(stream, config)?.with_path(CwdPath::TwoPass)));
    let cpu = CwdCpu::new(config).expect("the default configuration is valid");
    for &shape in h.args.shapes() {
        if !h.wants_shape(&shape, &GPU_PASSES) {
            continue;
        }
        let inputs = Inputs::generate(shape);
        let (student, teacher) = (&inputs.student, &inputs.teacher);
        run::<f32>(&mut h, cuda.as_mut(), two_pass.as_mut(), &cpu, shape, student, teacher);
        let (student, teacher) = inputs.to_dtype::<bf16>();
        drop(inputs);
        run::<bf16>(&mut h, cuda.as_mut(), two_pass.as_mut(), &cpu, shape, &student, &teacher);
    }
    h.finish();
}

fn run<T: KdFloat>(
    h: &mut Harness,
    cuda: Option<&mut CwdCuda>,
    two_pass: Option<&mut CwdCuda>,
    cpu: &CwdCpu,
    shape: [usize; 4],
    student: &Array4<T>,
    teacher: &Array4<T>,
) {
    if let (Some(cuda), Some(two_pass)) = (cuda, two_pass) {
        if let Err(e) = run_gpu(h, cuda, two_pass, shape, student, teacher) {
            println!("cwd {} {}: GPU benches failed: {e}", T::DTYPE, common::shape_name(&shape));
        }
    }
    h.cpu_bench(shape, student, teacher, |s, t| cpu.forward_backward(s, t));
}

fn run_gpu<T: KdFloat>(
    h: &mut Harness,
    cuda: &mut CwdCuda,
    two_pass: &mut CwdCuda,
    shape: [usize; 4],
    student: &Array4<T>,
    teacher: &Array4<T>,
) -> common::Res<()> {
    if !GPU_PASSES.iter().any(|&p| h.wants("gpu", p, &shape, T::DTYPE)) {
        return Ok(());
    }
    let stream = h.stream().expect("a CwdCuda exists only with a GPU").clone();
    let s = stream.clone_htod(student.as_slice().expect("standard layout"))?;
    let t = stream.clone_htod(teacher.as_slice().expect("standard layout"))?;
    let mut grad = stream.alloc_zeros::<T>(s.len())?;
    let mut loss = stream.alloc_zeros::<f32>(1)?;
    h.gpu_bench::<T>(Pass::ForwardBackward, shape, || {
        cuda.forward_backward(&shape, &s, &t, &mut loss, &mut grad, None)
    });
    h.gpu_bench::<T>(Pass::TwoPassForwardBackward, shape, || {
        two_pass.forward_backward(&shape, &s, &t, &mut loss, &mut grad, None)
    });
    h.gpu_bench::<T>(Pass::Forward, shape, || cuda.forward(&shape, &s, &t, &mut loss));
    stream.synchronize()?;
    Ok(())
}
