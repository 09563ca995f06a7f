//! ICSD benchmarks: `IcsdCuda::forward_backward` and `forward` (official variant, tau 1, weight 9500) on the
//! GPU, and the f64 CPU reference's `forward_backward`, on Pascal VOC's full-resolution logits (6x21x513x513),
//! Cityscapes' (8x19x512x1024) and a small 2x21x65x65, in f32 and bf16.
//!
//! ```text
//! cargo bench --bench losses -- icsd
//! cargo bench --bench losses -- icsd_f32/gpu_forward_backward/6x21x513x513 --quick
//! ```
//!
//! The GPU part is skipped without a GPU. The CPU reference runs on the small shape only (it is O(N C^2) with
//! a large constant). Minimal traffic counts 3 tensors for the training call, as for the other losses; the
//! ICSD kernels read the student four times and the teacher twice (see kernels/icsd.cu).

use crate::common::PairBench;
use kd_kernels::icsd::{Icsd, IcsdConfig};

/// The small shape first: test mode runs only the first.
const SHAPES: [[usize; 4]; 3] = [[2, 21, 65, 65], [6, 21, 513, 513], [8, 19, 512, 1024]];

pub fn run() {
    PairBench::<Icsd> {
        shapes: &SHAPES,
        // The small shape only: the reference is O(N C^2) with a large constant.
        cpu_on: |shape| *shape == SHAPES[0],
        ..PairBench::new(IcsdConfig::default())
    }
    .run();
}
