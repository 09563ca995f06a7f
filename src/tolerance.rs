//! The tolerance table: how far a backend's output may be from a reference, per storage dtype.
//!
//! An output passes when `max_rel_err = max_abs_err / max(ref_max_abs, TINY) <= tolerance`, the error
//! measure of `docs/fixtures.md`: the largest absolute error, relative to the largest reference
//! magnitude of that output. Reference outputs are fp32 (PyTorch) or f64 (our CPU reference) computed from
//! the stored (already rounded) inputs, so the input dtype does not enter the loss's tolerance. Gradients
//! on the GPU are stored in the input dtype, so their tolerance is the dtype's rounding (half an ulp
//! relative: 2^-11 for f16, 2^-8 for bf16) with a margin for fp32 accumulation.
//!
//! | dtype | loss | gradients | why |
//! |---|---|---|---|
//! | f32  | 1e-4 | 1e-4 | fp32 reductions over up to 2^19 terms, and PyTorch's own fp32 rounding |
//! | f16  | 1e-4 | 2e-3 | gradient stored in f16: 4.9e-4 rounding |
//! | bf16 | 1e-4 | 1e-2 | gradient stored in bf16: 3.9e-3 rounding |
//!
//! The verifier and the tests use this table as is; nothing loosens it at run time.

use crate::dtype::DType;

/// The floor under `ref_max_abs` in the relative error, so an all-zero reference compares absolutely.
pub const TINY: f64 = 1e-30;

/// Which kind of output is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A scalar loss, always f32 on the GPU.
    Loss,
    /// A gradient or other tensor output, stored in the input dtype on the GPU.
    Tensor,
}

/// The largest `max_rel_err` allowed for `kind` when the inputs are stored as `dtype`.
pub fn tolerance(dtype: DType, kind: OutputKind) -> f64 {
    match (kind, dtype) {
        (OutputKind::Loss, _) => 1e-4,
        (OutputKind::Tensor, DType::F32) => 1e-4,
        (OutputKind::Tensor, DType::F16) => 2e-3,
        (OutputKind::Tensor, DType::BF16) => 1e-2,
    }
}

/// The error of `got` against `reference`, as the verifier reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// `max |got - reference|` (NaN anywhere makes it NaN).
    pub max_abs_err: f64,
    /// `max_abs_err / max(ref_max_abs, TINY)`.
    pub max_rel_err: f64,
    /// `max |reference|`.
    pub ref_max_abs: f64,
}

impl Comparison {
    /// Compares element by element; the slices must have one length.
    pub fn of(got: impl IntoIterator<Item = f64>, reference: impl IntoIterator<Item = f64>) -> Self {
        let mut max_abs_err: f64 = 0.0;
        let mut ref_max_abs: f64 = 0.0;
        for (g, r) in got.into_iter().zip(reference) {
            let err = (g - r).abs();
            // NaN must not hide behind max(): propagate it explicitly.
            max_abs_err = if err.is_nan() || max_abs_err.is_nan() { f64::NAN } else { max_abs_err.max(err) };
            ref_max_abs = ref_max_abs.max(r.abs());
        }
        Comparison { max_abs_err, max_rel_err: max_abs_err / ref_max_abs.max(TINY), ref_max_abs }
    }

    /// Whether the error is within `tolerance` (false for NaN).
    pub fn passes(&self, tolerance: f64) -> bool {
        self.max_rel_err <= tolerance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_never_passes() {
        let c = Comparison::of([1.0, f64::NAN], [1.0, 2.0]);
        assert!(c.max_abs_err.is_nan());
        assert!(!c.passes(1.0));
    }

    #[test]
    fn relative_to_largest_reference() {
        let c = Comparison::of([1.0, 10.5], [1.0, 10.0]);
        assert_eq!(c.max_abs_err, 0.5);
        assert_eq!(c.ref_max_abs, 10.0);
        assert!((c.max_rel_err - 0.05).abs() < 1e-15);
        assert!(c.passes(0.05) && !c.passes(0.049));
    }

    #[test]
    fn looser_for_narrower_gradients() {
        assert!(tolerance(DType::F32, OutputKind::Tensor) < tolerance(DType::F16, OutputKind::Tensor));
        assert!(tolerance(DType::F16, OutputKind::Tensor) < tolerance(DType::BF16, OutputKind::Tensor));
    }
}
