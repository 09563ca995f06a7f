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
    pub trait SealedLabel {}
    impl SealedLabel for u8 {}
    impl SealedLabel for i32 {}
    impl SealedLabel for i64 {}
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

/// The two 16-bit types convert through the `half` crate's own (round-to-nearest) conversions.
macro_rules! half_float {
    ($ty:ident, $dtype:ident) => {
        impl KdFloat for $ty {
            const DTYPE: DType = DType::$dtype;
            fn to_f64(self) -> f64 {
                $ty::to_f64(self)
            }
            fn from_f64(v: f64) -> Self {
                $ty::from_f64(v)
            }
            fn from_f32(v: f32) -> Self {
                $ty::from_f32(v)
            }
        }
    };
}
half_float!(f16, F16);
half_float!(bf16, BF16);

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

/// The integer dtypes labels may have (a segmentation loader's `long`, an `int32` copy, or raw `uint8` PNG
/// values with 255 as ignore).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelDType {
    /// `uint8`.
    U8,
    /// `int32`.
    I32,
    /// `int64` (PyTorch's `long`, what segmentation data loaders return).
    I64,
}

impl LabelDType {
    /// Parses the safetensors spelling (`U8`, `I32`, `I64`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "U8" => Some(LabelDType::U8),
            "I32" => Some(LabelDType::I32),
            "I64" => Some(LabelDType::I64),
            _ => None,
        }
    }

    /// The safetensors spelling.
    pub fn name(self) -> &'static str {
        match self {
            LabelDType::U8 => "U8",
            LabelDType::I32 => "I32",
            LabelDType::I64 => "I64",
        }
    }

    /// Bytes per element (also what the IFVD kernels are told).
    pub fn size(self) -> usize {
        match self {
            LabelDType::U8 => 1,
            LabelDType::I32 => 4,
            LabelDType::I64 => 8,
        }
    }

    /// Little-endian bytes to `i64`, exactly; `None` when the length is not a whole number of elements.
    pub fn decode_le(self, bytes: &[u8]) -> Option<Vec<i64>> {
        if bytes.len() % self.size() != 0 {
            return None;
        }
        Some(match self {
            LabelDType::U8 => bytes.iter().map(|&b| i64::from(b)).collect(),
            LabelDType::I32 => {
                bytes.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
            }
            LabelDType::I64 => bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        })
    }
}

impl fmt::Display for LabelDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A host integer type labels may have ([`LabelDType`]): `u8`, `i32`, `i64`.
pub trait LabelInt: sealed::SealedLabel + DeviceRepr + Copy + Send + Sync + 'static {
    /// The label dtype.
    const LABEL_DTYPE: LabelDType;
}

impl LabelInt for u8 {
    const LABEL_DTYPE: LabelDType = LabelDType::U8;
}
impl LabelInt for i32 {
    const LABEL_DTYPE: LabelDType = LabelDType::I32;
}
impl LabelInt for i64 {
    const LABEL_DTYPE: LabelDType = LabelDType::I64;
}
