//! # kd-kernels
//!
//! Fused CUDA kernels, with forward and backward passes, for the knowledge-distillation losses of dense
//! prediction (semantic segmentation, detection), wrapped in safe Rust on [`cudarc`] buffers, and a CPU
//! reference in f64 with the same surface.
//!
//! | loss | GPU | CPU reference | spec |
//! |---|---|---|---|
//! | channel-wise distillation (CWD) | [`cwd::CwdCuda`] | [`cwd::CwdCpu`] | `docs/losses.md` §1 |
//! | pixel-wise KD | [`pixel_kd::PixelKdCuda`] | [`pixel_kd::PixelKdCpu`] | `docs/losses.md` §2 |
//! | ICSD / AICSD | [`icsd::IcsdCuda`], [`icsd::AicsdCuda`] | [`icsd::IcsdCpu`], [`icsd::AicsdCpu`] | `docs/losses.md` §3 |
//! | SemCKD | [`semckd::SemckdCuda`] | [`semckd::SemckdCpu`] | `docs/losses.md` §4 |
//! | channel-wise transformation (CWT) | [`cwt::CwtCuda`] | [`cwt::CwtCpu`] | `docs/losses.md` §5 |
//! | intra-class feature variation distillation (IFVD) | [`ifvd::IfvdCuda`] | [`ifvd::IfvdCpu`] | `docs/losses.md` §11 |
//! | pair-wise similarity distillation (SKD) | (not yet) | [`skd::SkdCpu`] | `docs/losses.md` §9 |
//! | cross-image pixel relations (CIRKD, mini-batch) | [`cirkd::CirkdCuda`] | [`cirkd::CirkdCpu`] | `docs/losses.md` §10 |
//!
//! GPU entry points work on caller-owned device buffers (`f32`, `half::f16`, `half::bf16`) in NCHW layout,
//! on the caller's stream, write the loss as a device f32 scalar and the gradients in the input dtype,
//! never synchronise with the host, and accumulate in fp32. They are deterministic: the same inputs on the
//! same device give bitwise identical outputs.
//!
//! Without nvcc at build time the crate is CPU-only and GPU constructors return
//! [`KdError::KernelsUnavailable`]; without a driver at run time they return [`KdError::CudaUnavailable`].
//! Nothing panics on bad input: see [`KdError`].
//!
//! Adapters are crates of their own in this workspace: `kd-kernels-candle` has the losses as candle ops with a
//! backward pass (feature `cuda`: on candle's CUDA device too), `kd-kernels-burn` as a burn backend extension
//! (NdArray, its `Autodiff` wrapper, and with feature `cuda` burn's CUDA backend). C, C++ and Python reach the
//! crate through the C ABI of `kd-kernels-capi` (`include/kd_kernels.h`) and the `kd_kernels` Python package
//! over it. What the adapters need beyond the typed API is public too (the raw-pointer layers and
//! [`cuda::probe`]), documented for them.
//!
//! ```
//! use kd_kernels::cwd::{CwdConfig, CwdCpu};
//! use ndarray::Array4;
//!
//! let student = Array4::<f32>::from_shape_fn((2, 3, 4, 5), |(n, c, h, w)| (n + 2 * c + h * w) as f32 * 0.1);
//! let teacher = Array4::<f32>::from_shape_fn((2, 3, 4, 5), |(n, c, h, w)| (n + c * h + w) as f32 * 0.1);
//! let cwd = CwdCpu::new(CwdConfig { tau: 1.0, loss_weight: 1.0, teacher_grad: false })?;
//! let out = cwd.forward_backward(student.view(), teacher.view())?;
//! assert!(out.loss > 0.0);
//! # Ok::<(), kd_kernels::KdError>(())
//! ```
#![warn(missing_docs)]

// The README's examples are compiled (and its `no_run` blocks type-checked) with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

pub mod cirkd;
pub mod cpu;
pub mod cuda;
pub mod cwd;
pub mod cwt;
pub mod dist;
pub mod dtype;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod error;
mod families;
pub mod family;
mod ffi;
pub mod fixture;
pub mod grad;
mod hw;
pub mod icsd;
pub mod ifvd;
pub mod launch;
#[cfg(test)]
mod launch_limits;
pub mod pixel_kd;
pub mod pkd;
mod relation;
pub mod semckd;
pub mod shape;
pub mod skd;
#[doc(hidden)]
pub mod testing;
pub mod tolerance;
mod validate;
pub mod verify;

pub use cpu::CpuOutput;
pub use dtype::{DType, HostFloat, KdFloat};
pub use error::{KdError, Result};
pub use grad::GradOptions;
pub use shape::Nchw;

/// Re-exported so callers use the same version of the crates the API is written in.
pub use cudarc;
pub use half;
pub use ndarray;
