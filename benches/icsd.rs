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

use common::{Harness, PairLoss, Pass};
use kd_kernels::cudarc::driver::CudaSlice;
use kd_kernels::icsd::{IcsdConfig, IcsdCpu, IcsdCuda};
use kd_kernels::ndarray::ArrayView4;
use kd_kernels::{CpuOutput, DType, KdFloat};

/// The small shape first: test mode runs only the first.
const SHAPES: [[usize; 4]; 3] = [[2, 21, 65, 65], [6, 21, 513, 513], [8, 19, 512, 1024]];

struct Icsd(IcsdCpu);

impl PairLoss for Icsd {
    type Gpu = IcsdCuda;
    const GPU_PASSES: &'static [Pass] = &[Pass::ForwardBackward, Pass::Forward];
    const SHAPES: &'static [[usize; 4]] = &SHAPES;

    fn prepare_gpu(gpu: &mut IcsdCuda, shape: &[usize; 4], dtype: DType) -> kd_kernels::Result<()> {
        gpu.reserve(shape, dtype)
    }

    fn gpu_call<T: KdFloat>(
        gpu: &mut IcsdCuda,
        pass: Pass,
        shape: &[usize; 4],
        s: &CudaSlice<T>,
        t: &CudaSlice<T>,
        loss: &mut CudaSlice<f32>,
        grad: &mut CudaSlice<T>,
    ) -> kd_kernels::Result<()> {
        match pass {
            Pass::ForwardBackward => gpu.forward_backward(shape, s, t, loss, grad),
            Pass::Forward => gpu.forward(shape, s, t, loss),
            Pass::TwoPassForwardBackward | Pass::PerPixelForwardBackward => unreachable!("not in GPU_PASSES"),
        }
    }

    /// The small shape only: the reference is O(N C^2) with a large constant.
    fn cpu_on(shape: &[usize; 4]) -> bool {
        *shape == SHAPES[0]
    }

    fn cpu_call<T: KdFloat>(&self, s: ArrayView4<'_, T>, t: ArrayView4<'_, T>) -> kd_kernels::Result<CpuOutput> {
        let r = self.0.forward_backward(s, t)?;
        Ok(CpuOutput { loss: r.loss, grad_student: r.grad_student, grad_teacher: None })
    }
}

fn main() {
    let config = IcsdConfig::default();
    let mut h = Harness::new("icsd");
    let gpu = h.open_gpu(|stream| IcsdCuda::new(stream, config));
    let cpu = IcsdCpu::new(config).expect("the default configuration is valid");
    common::bench_pair_loss(h, &Icsd(cpu), gpu);
}
