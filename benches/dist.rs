//! DIST benchmarks: `DistCuda::forward_backward` and `forward` (DIST_KD's defaults: tau 1, both weights 1) on
//! the GPU, and the f64 CPU reference's `forward_backward`, on DIST_KD's Cityscapes logits at 1/8
//! resolution of a 1024x2048 crop (8x19x128x256) and a small 2x19x33x65, in f32 and bf16, the setting
//! `python-reference/bench_dist.py` times for PyTorch (mmrazor's `DISTLoss` on the flattened pixels).
//!
//! ```text
//! cargo bench --bench dist
//! cargo bench --bench dist -- 8x19x128x256 --quick
//! ```
//!
//! The GPU part is skipped without a GPU. Minimal traffic counts 3 tensors for the training call, as for the
//! other losses; the kernels read the student and the teacher twice (kernels/dist.cu: the intra-class term
//! needs every pixel before any gradient).

mod common;

use common::{Harness, PairLoss, Pass};
use kd_kernels::cudarc::driver::CudaSlice;
use kd_kernels::dist::{DistConfig, DistCpu, DistCuda};
use kd_kernels::ndarray::ArrayView4;
use kd_kernels::{CpuOutput, DType, KdFloat};

/// The small shape first: test mode runs only the first.
const SHAPES: [[usize; 4]; 2] = [[2, 19, 33, 65], [8, 19, 128, 256]];

struct Dist(DistCpu);

impl PairLoss for Dist {
    type Gpu = DistCuda;
    const GPU_PASSES: &'static [Pass] = &[Pass::ForwardBackward, Pass::Forward];
    const SHAPES: &'static [[usize; 4]] = &SHAPES;

    fn prepare_gpu(gpu: &mut DistCuda, shape: &[usize; 4], dtype: DType) -> kd_kernels::Result<()> {
        gpu.reserve(shape, dtype)
    }

    fn gpu_call<T: KdFloat>(
        gpu: &mut DistCuda,
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

    fn cpu_call<T: KdFloat>(&self, s: ArrayView4<'_, T>, t: ArrayView4<'_, T>) -> kd_kernels::Result<CpuOutput> {
        self.0.forward_backward(s, t)
    }
}

fn main() {
    let config = DistConfig::default();
    let mut h = Harness::new("dist");
    let gpu = h.open_gpu(|stream| DistCuda::new(stream, config));
    let cpu = DistCpu::new(config).expect("the default configuration is valid");
    common::bench_pair_loss(h, &Dist(cpu), gpu);
}
