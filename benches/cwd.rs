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

use common::{Harness, PairLoss, Pass};
use kd_kernels::cudarc::driver::CudaSlice;
use kd_kernels::cwd::{CwdConfig, CwdCpu, CwdCuda, CwdPath};
use kd_kernels::ndarray::ArrayView4;
use kd_kernels::{CpuOutput, KdFloat};

struct Cwd(CwdCpu);

/// The default path and the two-pass kernels.
struct CwdGpu {
    default: CwdCuda,
    two_pass: CwdCuda,
}

impl PairLoss for Cwd {
    type Gpu = CwdGpu;
    const GPU_PASSES: &'static [Pass] = &[Pass::ForwardBackward, Pass::TwoPassForwardBackward, Pass::Forward];

    fn gpu_call<T: KdFloat>(
        gpu: &mut CwdGpu,
        pass: Pass,
        shape: &[usize; 4],
        s: &CudaSlice<T>,
        t: &CudaSlice<T>,
        loss: &mut CudaSlice<f32>,
        grad: &mut CudaSlice<T>,
    ) -> kd_kernels::Result<()> {
        match pass {
            Pass::ForwardBackward => gpu.default.forward_backward(shape, s, t, loss, grad),
            Pass::TwoPassForwardBackward => gpu.two_pass.forward_backward(shape, s, t, loss, grad),
            Pass::Forward => gpu.default.forward(shape, s, t, loss),
            Pass::PerPixelForwardBackward => unreachable!("not in GPU_PASSES"),
        }
    }

    fn cpu_call<T: KdFloat>(&self, s: ArrayView4<'_, T>, t: ArrayView4<'_, T>) -> kd_kernels::Result<CpuOutput> {
        self.0.forward_backward(s, t)
    }
}

fn main() {
    // tau 4, loss weight 3: the paper's Cityscapes setting, and bench_torch.py's.
    let config = CwdConfig::default();
    let mut h = Harness::new("cwd");
    let gpu = h.open_gpu(|stream| {
        let two_pass = CwdCuda::new(stream.clone(), config)?.with_path(CwdPath::TwoPass);
        Ok(CwdGpu { default: CwdCuda::new(stream, config)?, two_pass })
    });
    let cpu = CwdCpu::new(config).expect("the default configuration is valid");
    common::bench_pair_loss(h, &Cwd(cpu), gpu);
}
