//! IFVD's shapes and labels: the three input shapes and their checks, the label dtypes, and PyTorch's
//! `nearest` resize of the labels to the feature resolution.

pub use crate::dtype::LabelDType;
use crate::error::{KdError, Result};
use crate::shape::Nchw;

/// The checked shapes of one IFVD call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfvdShapes {
    /// The student `[N, Cs, H, W]`.
    pub student: Nchw,
    /// The teacher's channel count `Ct` (its `N`, `H`, `W` are the student's).
    pub ct: usize,
    /// The label height `Hl`.
    pub hl: usize,
    /// The label width `Wl`.
    pub wl: usize,
}

impl IfvdShapes {
    /// The teacher `[N, Ct, H, W]`.
    pub fn teacher(&self) -> Nchw {
        Nchw { c: self.ct, ..self.student }
    }

    /// `N*H*W`: the number of cosines averaged.
    pub fn pixels(&self) -> usize {
        self.student.n * self.student.plane()
    }

    /// `[N, Hl, Wl]`.
    pub fn label_dims(&self) -> [usize; 3] {
        [self.student.n, self.hl, self.wl]
    }
}

/// Checks the student `[N, Cs, H, W]`, the teacher `[N, Ct, H, W]` (the same `N`, `H`, `W`; resize one of
/// them first if the networks' feature maps differ) and the labels `[N, Hl, Wl]` (any resolution): ranks, no
/// zero dimension, sizes that fit the index arithmetic.
pub fn check_shapes(student: &[usize], teacher: &[usize], labels: &[usize]) -> Result<IfvdShapes> {
    let s = Nchw::from_dims("student", student)?;
    let t = Nchw::from_dims("teacher", teacher)?;
    if (t.n, t.h, t.w) != (s.n, s.h, s.w) {
        return Err(KdError::ShapeMismatch {
            what: "teacher (N, H and W must be the student's; resize the features first)",
            expected: vec![s.n, t.c, s.h, s.w],
            got: teacher.to_vec(),
        });
    }
    let &[ln, hl, wl] = labels else {
        return Err(KdError::ShapeMismatch {
            what: "labels (expected rank 3, [N, Hl, Wl])",
            expected: vec![s.n, s.h, s.w],
            got: labels.to_vec(),
        });
    };
    if ln != s.n {
        return Err(KdError::ShapeMismatch {
            what: "labels (one label map per image)",
            expected: vec![s.n, hl, wl],
            got: labels.to_vec(),
        });
    }
    if hl == 0 || wl == 0 {
        return Err(KdError::EmptyInput { what: "labels", shape: labels.to_vec() });
    }
    if hl.checked_mul(wl).and_then(|p| p.checked_mul(ln)).is_none_or(|n| n > i64::MAX as usize) {
        return Err(KdError::TooLarge { what: "labels", detail: format!("{labels:?} has more than 2^63 elements") });
    }
    Ok(IfvdShapes { student: s, ct: t.c, hl, wl })
}

/// The source index of output index `dst` when PyTorch's `nearest` mode resizes `input` to `output` elements
/// (`nn.Upsample(size, mode='nearest')`, no scale factor given): the identity when the sizes agree, `dst / 2`
/// when the output is twice the input, else `min(floor(dst * s), input - 1)` with `s = input / output`, all in
/// f32 as PyTorch computes it (the rounding of `s` decides some indices, so f64 would differ).
pub fn nearest_source(dst: usize, input: usize, output: usize) -> usize {
    if output == input {
        dst
    } else if output == 2 * input {
        dst >> 1
    } else {
        let scale = input as f32 / output as f32;
        ((dst as f32 * scale).floor() as usize).min(input - 1)
    }
}
