//! DIST benchmarks: `DistCuda::forward_backward` and `forward` (DIST_KD's defaults: tau 1, both weights 1) on
//! the GPU, and the f64 CPU reference's `forward_backward`, on DIST_KD's Cityscapes logits at 1/8
//! resolution of a 1024x2048 crop (8x19x128x256) and a small 2x19x33x65, in f32 and bf16, the setting
//! `python-reference/bench_dist.py` times for PyTorch (mmrazor's `DISTLoss` on the flattened pixels).
//!
//! ```text
//! cargo bench --bench losses -- dist
//! cargo bench --bench losses -- dist_f32/gpu_forward_backward/8x19x128x256 --quick
//! ```
//!
//! The GPU part is skipped without a GPU. Minimal traffic counts 3 tensors for the training call, as for the
//! other losses; the kernels read the student and the teacher twice (kernels/dist.cu: the intra-class term
//! needs every pixel before any gradient).

use crate::common::PairBench;
use kd_kernels::dist::{Dist, DistConfig};

pub fn run() {
    // DIST_KD's defaults; the small shape first: test mode runs only the first.
    PairBench::<Dist> { shapes: &[[2, 19, 33, 65], [8, 19, 128, 256]], ..PairBench::new(DistConfig::default()) }.run();
}
