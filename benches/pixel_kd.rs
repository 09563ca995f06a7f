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

use common::{Harness, PairLoss, Pass};
use kd_kernels::cudarc::driver::CudaSlice;
use kd_kernels::ndarray::ArrayView4;
use kd_kernels::pixel_kd::{PixelKdConfig, PixelKdCpu, PixelKdCuda, PixelKdPath, Reduction};
use kd_kernels::{CpuOutput, KdFloat};

struct PixelKd(PixelKdCpu);

/// The default path and the per-pixel kernel.
struct PixelKdGpu {
    default: PixelKdCuda,
    per_pixel: PixelKdCuda,
}

impl PairLoss for PixelKd {
    type Gpu = PixelKdGpu;
    const GPU_PASSES: &'static [Pass] = &[Pass::ForwardBackward, Pass::PerPixelForwardBackward];

    fn gpu_call<T: KdFloat>(
        gpu: &mut PixelKdGpu,
        pass: Pass,
        shape: &[usize; 4],
        s: &CudaSlice<T>,
        t: &CudaSlice<T>,
        loss: &mut CudaSlice<f32>,
        grad: &mut CudaSlice<T>,
    ) -> kd_kernels::Result<()> {
        match pass {
            Pass::ForwardBackward => gpu.default.forward_backward(shape, s, t, loss, grad),
            Pass::PerPixelForwardBackward => gpu.per_pixel.forward_backward(shape, s, t, loss, grad),
            Pass::TwoPassForwardBackward | Pass::Forward => unreachable!("not in GPU_PASSES"),
        }
    }

    fn cpu_call<T: KdFloat>(&self, s: ArrayView4<'_, T>, t: ArrayView4<'_, T>) -> kd_kernels::Result<CpuOutput> {
        self.0.forward_backward(s, t)
    }
}

fn main() {
    // bench_torch.py's `pixel_kd_bench_loss`. The weight does not change the work done.
    let config = PixelKdConfig { tau: 1.0, loss_weight: 1.0, reduction: Reduction::Mean, scale_tau2: false };
    let mut h = Harness::new("pixel_kd");
    let gpu = h.open_gpu(|stream| {
        let per_pixel = PixelKdCuda::new(stream.clone(), config)?.with_path(PixelKdPath::PerPixel);
        Ok(PixelKdGpu { default: PixelKdCuda::new(stream, config)?, per_pixel })
    });
    let cpu = PixelKdCpu::new(config).expect("a valid configuration");
    common::bench_pair_loss(h, &PixelKd(cpu), gpu);
}
