//! CIRKD has its CPU reference only (no CUDA kernels yet): no GPU test. `verify` reports its fixtures as
//! skipped on the GPU, and the fixtures test leaves them out.

use crate::harness::TestFn;

pub(crate) const TESTS: &[(&str, TestFn)] = &[];
