//! CWD benchmarks: `CwdCuda::forward_backward` (the training call; also on the two-pass kernels, for
//! comparison with the default single pass) and `forward` on the GPU, and the f64 CPU
//! reference's `forward_backward`, on `common::SHAPES` in f32 and bf16, with the paper's setting (tau 4,
//! loss weight 3) that `python-reference/bench_torch.py` times for PyTorch.
//!
//! ```text
//! cargo bench --bench losses -- cwd                       # everything
//! cargo bench --bench losses -- cwd_f32/gpu_forward_backward/8x19x64x128 --quick
//! bench-losses --bench cwd   # the compiled bench executable, as the GPU host runs it from the repo root
//! ```
//!
//! Besides criterion's report, prints the CUDA-event kernel time, GB/s and share of the copy bandwidth of
//! every GPU case, and appends them as JSON lines to `$OUT/bench_results.jsonl` (or
//! `target/bench_results.jsonl`).

use crate::common::{PairBench, Pass};
use kd_kernels::cwd::{Cwd, CwdConfig, CwdPath};

pub fn run() {
    // tau 4, loss weight 3: the paper's Cityscapes setting, and bench_torch.py's. The two-pass kernels are
    // measured beside the default path.
    let gpu_passes = vec![
        (Pass::ForwardBackward, CwdPath::Auto),
        (Pass::TwoPassForwardBackward, CwdPath::TwoPass),
        (Pass::Forward, CwdPath::Auto),
    ];
    PairBench::<Cwd> { gpu_passes, ..PairBench::new(CwdConfig::default()) }.run();
}
