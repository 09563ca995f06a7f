//! What the pixel-relation losses (SKD `docs/losses.md §9`, CIRKD §10) share: a (student, teacher) pair whose
//! channel counts may differ, the pooling in front of the relations (max or average, `ceil_mode`), the
//! per-pixel L2 normalisation over channels (`F.normalize`), and the backward of both.
//!
//! A relation loss compares pixels with pixels through dot products of normalised feature vectors, so the
//! pixel count `P` after pooling is what its cost grows with, and a `P x P` matrix is what the official code
//! builds. The references here never build one: they work on [`PixelFeatures`], one image's normalised
//! features `[C, P]`.

pub(crate) mod fixture;

use ndarray::ArrayView4;

use crate::cpu::HostFloat;
use crate::error::{KdError, Result};
use crate::family::PairShape;
use crate::shape::Nchw;

/// `F.normalize`'s floor under each pixel's norm.
pub const NORM_EPS: f64 = 1e-12;

/// The checked shapes of a relation loss's call: the student and the teacher's channel count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelationShapes {
    /// The student `[N, Cs, H, W]`.
    pub student: Nchw,
    /// The teacher's channel count `Ct` (its `N`, `H`, `W` are the student's).
    pub ct: usize,
}

impl RelationShapes {
    /// The teacher `[N, Ct, H, W]`.
    pub fn teacher(&self) -> Nchw {
        Nchw { c: self.ct, ..self.student }
    }

    /// The same shapes, checked again (their fields are public, so a caller may have built them by hand).
    pub(crate) fn checked(&self) -> Result<RelationShapes> {
        check_shapes(&self.student.dims(), &self.teacher().dims())
    }
}

impl PairShape for RelationShapes {
    fn numels(&self) -> Result<(usize, usize)> {
        let shapes = self.checked()?;
        Ok((shapes.student.numel(), shapes.teacher().numel()))
    }

    fn with_pair<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&Self) -> Result<R>) -> Result<R> {
        f(&check_shapes(student, teacher)?)
    }
}

/// Checks the student `[N, Cs, H, W]` and the teacher `[N, Ct, H, W]`: ranks, no zero dimension, sizes that fit
/// the index arithmetic, and the same `N`, `H`, `W` (the channels may differ: only pixel relations are
/// compared).
pub fn check_shapes(student: &[usize], teacher: &[usize]) -> Result<RelationShapes> {
    let s = Nchw::from_dims("student", student)?;
    let t = Nchw::from_dims("teacher", teacher)?;
    if (t.n, t.h, t.w) != (s.n, s.h, s.w) {
        return Err(KdError::ShapeMismatch {
            what: "teacher (N, H and W must be the student's; its channel count may differ)",
            expected: vec![s.n, t.c, s.h, s.w],
            got: teacher.to_vec(),
        });
    }
    Ok(RelationShapes { student: s, ct: t.c })
}

/// How a window of the pooling combines its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    /// The largest value; its gradient goes to the first maximum in row-major order (PyTorch's choice).
    Max,
    /// The mean of the values inside the input (`ceil_mode` edge windows are smaller; no padding counted).
    Avg,
}

/// A `k x k`, stride `k` pooling with `ceil_mode=True` (edge windows keep what lies inside the input); `k = 1`
/// is the identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pooling {
    pub window: Window,
    pub k: usize,
}

impl Pooling {
    pub(crate) const NONE: Pooling = Pooling { window: Window::Avg, k: 1 };

    /// `(H', W')`: `ceil(H / k)`, `ceil(W / k)` (with stride = kernel and no padding, PyTorch's `ceil_mode`
    /// output size, every window starting inside the input).
    pub(crate) fn pooled(&self, h: usize, w: usize) -> (usize, usize) {
        (h.div_ceil(self.k), w.div_ceil(self.k))
    }

    /// The input rows (or columns) of output row (column) `o` along a side of length `len`.
    fn span(&self, o: usize, len: usize) -> std::ops::Range<usize> {
        o * self.k..((o + 1) * self.k).min(len)
    }
}

/// One image's features after pooling and normalisation, channel-major `[C, P]`, with what the backward needs.
pub(crate) struct PixelFeatures {
    pub c: usize,
    pub p: usize,
    /// `x / max(|x|, 1e-12)` per pixel, `[C, P]`.
    pub hat: Vec<f64>,
    /// The pooled features before normalisation, `[C, P]`.
    pooled: Vec<f64>,
    /// `|x|` per pixel.
    norms: Vec<f64>,
    /// Max pooling: the source pixel (`h * W + w`) of each pooled value, `[C, P]`; empty otherwise.
    argmax: Vec<usize>,
    pooling: Pooling,
    h: usize,
    w: usize,
}

impl PixelFeatures {
    /// Image `n` of `x` pooled by `pooling` and normalised per pixel.
    pub(crate) fn new<T: HostFloat>(x: &ArrayView4<'_, T>, n: usize, pooling: Pooling) -> Self {
        let (c, h, w) = (x.shape()[1], x.shape()[2], x.shape()[3]);
        let (ph, pw) = pooling.pooled(h, w);
        let p = ph * pw;
        let mut pooled = vec![0.0; c * p];
        let mut argmax = if pooling.window == Window::Max { vec![0; c * p] } else { Vec::new() };
        for ch in 0..c {
            for oh in 0..ph {
                for ow in 0..pw {
                    let out = ch * p + oh * pw + ow;
                    let (rows, cols) = (pooling.span(oh, h), pooling.span(ow, w));
                    match pooling.window {
                        Window::Max => {
                            let (mut best, mut at) = (f64::NEG_INFINITY, rows.start * w + cols.start);
                            for ih in rows {
                                for iw in cols.clone() {
                                    let v = x[[n, ch, ih, iw]].to_f64();
                                    // Strictly greater: a tie keeps the first maximum in row-major order.
                                    if v > best {
                                        (best, at) = (v, ih * w + iw);
                                    }
                                }
                            }
                            pooled[out] = best;
                            argmax[out] = at;
                        }
                        Window::Avg => {
                            let count = (rows.len() * cols.len()) as f64;
                            let mut sum = 0.0;
                            for ih in rows {
                                for iw in cols.clone() {
                                    sum += x[[n, ch, ih, iw]].to_f64();
                                }
                            }
                            pooled[out] = sum / count;
                        }
                    }
                }
            }
        }
        let mut norms = vec![0.0; p];
        for ch in 0..c {
            for (norm, v) in norms.iter_mut().zip(&pooled[ch * p..(ch + 1) * p]) {
                *norm += v * v;
            }
        }
        norms.iter_mut().for_each(|n| *n = n.sqrt());
        let mut hat = pooled.clone();
        for ch in 0..c {
            for (v, norm) in hat[ch * p..(ch + 1) * p].iter_mut().zip(&norms) {
                *v /= norm.max(NORM_EPS);
            }
        }
        PixelFeatures { c, p, hat, pooled, norms, argmax, pooling, h, w }
    }

    /// Channel `ch` of the normalised features, `P` values.
    pub(crate) fn channel(&self, ch: usize) -> &[f64] {
        &self.hat[ch * self.p..(ch + 1) * self.p]
    }

    /// d loss / d image from `d_hat` (d loss / d normalised features, `[C, P]`), written into `grad`, the image's
    /// `[C, H, W]` gradient flattened (every element is overwritten).
    ///
    /// Through the normalisation as PyTorch's autograd of `x / clamp_min(|x|, eps)` differentiates it: where
    /// `|x| >= eps`, `d x = g / |x| - x (x . g) / |x|^3`; below, the clamp is constant and `d x = g / eps`. Then
    /// through the pooling: a max window's gradient to its recorded maximum, an average window's spread evenly
    /// over the values it averaged.
    pub(crate) fn backward(&self, d_hat: &[f64], grad: &mut [f64]) {
        let (c, p) = (self.c, self.p);
        let mut d_pooled = vec![0.0; c * p];
        for q in 0..p {
            let norm = self.norms[q];
            if norm >= NORM_EPS {
                let dot: f64 = (0..c).map(|ch| self.pooled[ch * p + q] * d_hat[ch * p + q]).sum();
                let radial = dot / (norm * norm * norm);
                for ch in 0..c {
                    d_pooled[ch * p + q] = d_hat[ch * p + q] / norm - self.pooled[ch * p + q] * radial;
                }
            } else {
                for ch in 0..c {
                    d_pooled[ch * p + q] = d_hat[ch * p + q] / NORM_EPS;
                }
            }
        }
        grad.iter_mut().for_each(|g| *g = 0.0);
        let (h, w) = (self.h, self.w);
        let (ph, pw) = self.pooling.pooled(h, w);
        for ch in 0..c {
            let plane = &mut grad[ch * h * w..(ch + 1) * h * w];
            for oh in 0..ph {
                for ow in 0..pw {
                    let at = ch * p + oh * pw + ow;
                    match self.pooling.window {
                        Window::Max => plane[self.argmax[at]] += d_pooled[at],
                        Window::Avg => {
                            let (rows, cols) = (self.pooling.span(oh, h), self.pooling.span(ow, w));
                            let share = d_pooled[at] / (rows.len() * cols.len()) as f64;
                            for ih in rows {
                                for iw in cols.clone() {
                                    plane[ih * w + iw] += share;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
