//! ICSD benchmarks: `IcsdCuda::forward_backward` and `forward` (official variant, tau 1, weight 9500) on the
//! GPU, and the f64 CPU reference's `forward_backward`, on Pascal VOC's full-resolution logits (6x21x513x513),
//! Cityscapes' (8x19x512x1024) and a small 2x21x65x65, in f32 and bf16.
//!
//! ```text
//! cargo bench --bench icsd
//! cargo bench --bench icsd -- 6x21x513x513 --quick
//! ```
//!
//! The GPU part is skipped without a GPU. The CPU reference runs on the small shape only (it is O(N C^2) with
//! a large constant). Minimal traffic counts 3 tensors for the training call, as for the other losses; the
//! ICSD kernels read the student four times and the teacher twice (see kernels/icsd.cu).

mod common;

use common::{Harness, Inputs, Pass};
use kd_kernels::half::bf16;
use kd_kernels::icsd::{IcsdConfig, IcsdCpu, IcsdCuda};
use kd_kernels::ndarray::Array4;
use kd_kernels::{CpuOutput, KdFloat};

const GPU_PASSES: [Pass; 2] = [Pass::ForwardBackward, Pass::Forward];
/// The small shape first: test mode runs only the first.
const SHAPES: [[usize; 4]; 3] = [[2, 21, 65, 65], [6, 21, 513, 513], [8, 19, 512, 1024]];

fn main() {
    let config = IcsdConfig::default();
    let mut h = Harness::new("icsd");
    let mut cuda = h.open_gpu(|stream| IcsdCuda::new(stream, config));
    let cpu = IcsdCpu::new(config).expect("the default configuration is valid");
    let shapes: &[[usize; 4]] = if h.args.bench || h.args.list { &SHAPES } else { &SHAPES[..1] };
    for &shape in shapes {
        if !h.wants_shape(&shape, &GPU_PASSES) {
            continue;
        }
        let inputs = Inputs::generate(shape);
        run::<f32>(&mut h, cuda.as_mut(), &cpu, shape, &inputs.student, &inputs.teacher);
        let (student, teacher) = inputs.to_dtype::<bf16>();
        drop(inputs);
        run::<bf16>(&mut h, cuda.as_mut(), &cpu, shape, &student, &teacher);
    }
    h.finish();
}

fn run<T: KdFloat>(
    h: &mut Harness,
    cuda: Option<&mut IcsdCuda>,
    cpu: &IcsdCpu,
    shape: [usize; 4],
    student: &Array4<T>,
    teacher: &Array4<T>,
) {
    if let Some(cuda) = cuda {
        if let Err(e) = run_gpu(h, cuda, shape, student, teacher) {
            println!("icsd {} {}: GPU benches failed: {e}", T::DTYPE, common::shape_name(&shape));
        }
    }
    if shape == SHAPES[0] {
        h.cpu_bench(shape, student, teacher, |s, t| {
            let r = cpu.forward_backward(s, t)?;
            Ok(CpuOutput { loss: r.loss, grad_student: r.grad_student, grad_teacher: None })
        });
    }
}

fn run_gpu<T: KdFloat>(
    h: &mut Harness,
    cuda: &mut IcsdCuda,
    shape: [usize; 4],
    student: &Array4<T>,
    teacher: &Array4<T>,
) -> common::Res<()> {
    if !GPU_PASSES.iter().any(|&p| h.wants("gpu", p, &shape, T::DTYPE)) {
        return Ok(());
    }
    let stream = h.stream().expect("an IcsdCuda exists only with a GPU").clone();
    let s = stream.clone_htod(student.as_slice().expect("standard layout"))?;
    let t = stream.clone_htod(teacher.as_slice().expect("standard layout"))?;
    let mut grad = stream.alloc_zeros::<T>(s.len())?;
    let mut loss = stream.alloc_zeros::<f32>(1)?;
    cuda.reserve(&shape, T::DTYPE)?;
    h.gpu_bench::<T>(Pass::ForwardBackward, shape, || cuda.forward_backward(&shape, &s, &t, &mut loss, &mut grad));
    h.gpu_bench::<T>(Pass::Forward, shape, || cuda.forward(&shape, &s, &t, &mut loss));
    stream.synchronize()?;
    Ok(())
}
