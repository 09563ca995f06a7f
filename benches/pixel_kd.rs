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

use common::{PairBench, Pass};
use kd_kernels::pixel_kd::{PixelKd, PixelKdConfig, PixelKdPath, Reduction};

fn main() {
    // bench_torch.py's `pixel_kd_bench_loss` (the weight does not change the work done); the per-pixel kernel
    // is measured beside the default path.
    let config = PixelKdConfig { tau: 1.0, loss_weight: 1.0, reduction: Reduction::Mean, scale_tau2: false };
    let gpu_passes =
        vec![(Pass::ForwardBackward, PixelKdPath::Auto), (Pass::PerPixelForwardBackward, PixelKdPath::PerPixel)];
    PairBench::<PixelKd> { gpu_passes, ..PairBench::new(config) }.run();
}
