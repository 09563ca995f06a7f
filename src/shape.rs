//! NCHW shapes and their validation, shared by every loss.

use crate::error::{KdError, Result};

/// The shape of a contiguous NCHW tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nchw {
    /// Batch.
    pub n: usize,
    /// Channels (classes, for logits).
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Nchw {
    /// Validates a shape given as a slice: rank 4, every dimension at least 1, element count representable.
    pub fn from_dims(what: &'static str, dims: &[usize]) -> Result<Self> {
        let &[n, c, h, w] = dims else {
            return Err(KdError::WrongRank { what, expected: 4, got: dims.len() });
        };
        let shape = Nchw { n, c, h, w };
        shape.validate(what)?;
        Ok(shape)
    }

    /// Checks that no dimension is zero and that the element count fits in `i64` (the kernels' index type).
    pub fn validate(&self, what: &'static str) -> Result<()> {
        if self.n == 0 || self.c == 0 || self.h == 0 || self.w == 0 {
            return Err(KdError::EmptyInput { what, shape: self.dims().to_vec() });
        }
        let numel = [self.c, self.h, self.w].iter().try_fold(self.n, |acc, &d| acc.checked_mul(d));
        match numel {
            Some(n) if n <= i64::MAX as usize => Ok(()),
            _ => Err(KdError::TooLarge { what, detail: format!("{:?} has more than 2^63 elements", self.dims()) }),
        }
    }

    /// `[n, c, h, w]`.
    pub fn dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    /// `n * c * h * w`.
    pub fn numel(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// `h * w`: the length of one channel plane.
    pub fn plane(&self) -> usize {
        self.h * self.w
    }

    /// Checks that `other` is the same shape; `what` names `other` in the error.
    pub fn expect_same(&self, what: &'static str, other: &[usize]) -> Result<()> {
        if other != self.dims() {
            return Err(KdError::ShapeMismatch { what, expected: self.dims().to_vec(), got: other.to_vec() });
        }
        Ok(())
    }
}

impl std::fmt::Display for Nchw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}x{}", self.n, self.c, self.h, self.w)
    }
}
