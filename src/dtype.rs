//! The element types the kernels read and write: `f32`, `half::f16`, `half::bf16`.

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use std::fmt;

/// A storage dtype, as named in fixtures and kernel entry points (`cwd_stats_bf16`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// The lower-case suffix of kernel names and of the verifier's JSON (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// An element type the kernels are instantiated for. Computation is always fp32 (GPU) or f64 (CPU
/// reference), whatever the storage type; gradients are rounded to the storage type on the GPU.
pub trait KdFloat: sealed::Sealed + DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static {
    /// The dtype tag.
    const DTYPE: DType;
    /// Widens exactly.
    fn to_f64(self) -> f64;
    /// Rounds to nearest.
    fn from_f64(v: f64) -> Self;
    /// Rounds to nearest.
    fn from_f32(v: f32) -> Self;
}

impl KdFloat for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl KdFloat for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl KdFloat for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// An element type the CPU references read: every [`KdFloat`] type, and `f64`, so that a caller holding
/// double-precision tensors (a finite-difference gradient check, PyTorch's `gradcheck`) gets the reference's
/// f64 arithmetic without a rounding to f32 on the way in. The GPU kernels take only [`KdFloat`] types.
pub trait HostFloat: Copy + Send + Sync + 'static {
    /// Widens exactly.
    fn to_f64(self) -> f64;
}

impl<T: KdFloat> HostFloat for T {
    fn to_f64(self) -> f64 {
        KdFloat::to_f64(self)
    }
}

impl HostFloat for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

/// Code generic over the element type, run for a dtype known only at run time: [`dispatch`] calls
/// `run::<f32>`, `run::<f16>` or `run::<bf16>`.
pub(crate) trait PerDtype {
    type Out;
    fn run<T: KdFloat>(self) -> Self::Out;
}

/// Runs `job` for the element type of `dtype`.
pub(crate) fn dispatch<P: PerDtype>(dtype: DType, job: P) -> P::Out {
    match dtype {
        DType::F32 => job.run::<f32>(),
        DType::F16 => job.run::<f16>(),
        DType::BF16 => job.run::<bf16>(),
    }
}
