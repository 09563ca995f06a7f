//! Pixel-KD benchmarks: `PixelKdCuda::forward_backward` (the training call, one launch) on the GPU and the f64
//! CPU reference's `forward_backward`, on `common::SHAPES` in f32 and bf16, with the setting
//! `python-reference/bench_torch.py` times for PyTorch (tau 1, `mean` reduction, no tau^2, weight 1).
//!
//! ```text
//! cargo bench --bench losses -- pixel_kd
//! cargo bench --bench losses -- pixel_kd_f32/gpu_forward_backward/8x19x64x128 --quick
//! bench-losses --bench pixel_kd   # the compiled bench executable, as the GPU host runs it from the repo root
//! ```
//!
//! Besides criterion's report, prints the CUDA-event kernel time, GB/s and share of the copy bandwidth of
//! every GPU case, and appends them as JSON lines to `$OUT/bench_results.jsonl` (or
//! `target/bench_results.jsonl`).

use crate::common::{PairBench, Pass};
use kd_kernels::pixel_kd::{PixelKd, PixelKdConfig, PixelKdPath, Reduction};

pub fn run() {
    // bench_torch.py's `pixel_kd_bench_loss` (the weight does not change the work done); the per-pixel kernel
    // is measured beside the default path.
    let config = PixelKdConfig { tau: 1.0, loss_weight: 1.0, reduction: Reduction::Mean, scale_tau2: false };
    let gpu_passes =
        vec![(Pass::ForwardBackward, PixelKdPath::Auto), (Pass::PerPixelForwardBackward, PixelKdPath::PerPixel)];
    PairBench::<PixelKd> { gpu_passes, ..PairBench::new(config) }.run();
}
