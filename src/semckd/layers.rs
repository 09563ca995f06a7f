//! The shapes of one SemCKD call: batch, embedding width, per-layer maps, and the pairs' compared sizes.

use crate::error::{KdError, Result};

/// The most student layers, and the most teacher layers, one call takes (so at most 8 x 8 pairs): their
/// addresses and sizes travel inside the kernels' parameter block (`kernels/params.h`).
pub const MAX_LAYERS: usize = 8;

/// Per-layer shapes of a SemCKD call (`docs/losses.md §4.1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemckdLayers {
    /// `B`: the batch, also the MLPs' input width.
    pub batch: usize,
    /// `d`: the embedding width (hidden width `2d`); `floor(B / 4)` officially.
    pub embed_dim: usize,
    /// `[Cs_i, Hs_i, Ws_i]` of every student map.
    pub student: Vec<[usize; 3]>,
    /// `[Ct_j, Ht_j, Wt_j]` of every teacher map.
    pub teacher: Vec<[usize; 3]>,
}

impl SemckdLayers {
    /// From full `[B, C, H, W]` shapes with the official `d = floor(B / 4)`; every map must have one batch.
    pub fn from_shapes(student: &[&[usize]], teacher: &[&[usize]]) -> Result<Self> {
        let first = student.first().ok_or(KdError::EmptyInput { what: "student layers", shape: vec![0] })?;
        let batch = *first.first().unwrap_or(&0);
        let mut layers = SemckdLayers { batch, embed_dim: batch / 4, student: Vec::new(), teacher: Vec::new() };
        for (what, shapes) in [("student", student), ("teacher", teacher)] {
            for s in shapes {
                if s.len() != 4 {
                    return Err(KdError::WrongRank { what, expected: 4, got: s.len() });
                }
                if s[0] != batch {
                    return Err(KdError::ShapeMismatch {
                        what: "batch of a feature map",
                        expected: vec![batch],
                        got: vec![s[0]],
                    });
                }
                let dims = [s[1], s[2], s[3]];
                if what == "student" {
                    layers.student.push(dims)
                } else {
                    layers.teacher.push(dims)
                }
            }
        }
        layers.validate()?;
        Ok(layers)
    }

    /// Checks counts, sizes and the embedding width.
    pub fn validate(&self) -> Result<()> {
        for (what, list) in [("student layers", &self.student), ("teacher layers", &self.teacher)] {
            if list.is_empty() {
                return Err(KdError::EmptyInput { what, shape: vec![0] });
            }
            if list.len() > MAX_LAYERS {
                return Err(KdError::TooLarge {
                    what,
                    detail: format!("{} layers; at most {MAX_LAYERS} per side", list.len()),
                });
            }
            for d in list {
                if d.contains(&0) {
                    return Err(KdError::EmptyInput { what, shape: vec![self.batch, d[0], d[1], d[2]] });
                }
            }
        }
        if self.batch == 0 || self.embed_dim == 0 {
            return Err(KdError::InvalidParameter {
                name: "batch / embed_dim",
                value: format!("B = {}, d = {}", self.batch, self.embed_dim),
                requirement: "B >= 1 and d >= 1 (d = floor(B / 4) needs B >= 4)",
            });
        }
        let too_big = |n: usize| n > i32::MAX as usize;
        if too_big(self.batch * self.batch) || self.student.iter().chain(&self.teacher).any(|d| too_big(d[1].max(d[2])))
        {
            return Err(KdError::TooLarge { what: "semckd", detail: "a size beyond 2^31 - 1".into() });
        }
        Ok(())
    }

    /// `S`.
    pub fn students(&self) -> usize {
        self.student.len()
    }

    /// `T`.
    pub fn teachers(&self) -> usize {
        self.teacher.len()
    }

    /// `[B, Cs, Hs, Ws]` of student map `i`.
    pub fn student_shape(&self, i: usize) -> [usize; 4] {
        let [c, h, w] = self.student[i];
        [self.batch, c, h, w]
    }

    /// `[B, Ct, Ht, Wt]` of teacher map `j`.
    pub fn teacher_shape(&self, j: usize) -> [usize; 4] {
        let [c, h, w] = self.teacher[j];
        [self.batch, c, h, w]
    }

    /// `h_ij = min(Hs_i, Ht_j)`.
    pub fn compared_size(&self, i: usize, j: usize) -> usize {
        self.student[i][1].min(self.teacher[j][1])
    }

    /// `[B, Ct_j, h, h]`: the shape of the regressor output `Shat_ij` and its gradient.
    pub fn pair_shape(&self, i: usize, j: usize) -> [usize; 4] {
        let h = self.compared_size(i, j);
        [self.batch, self.teacher[j][0], h, h]
    }

    /// Elements of a pair's regressor output.
    pub fn pair_numel(&self, i: usize, j: usize) -> usize {
        self.pair_shape(i, j).iter().product()
    }

    /// The shapes of one MLP's parameters: `[2d, B]`, `[2d]`, `[d, 2d]`, `[d]`.
    pub fn embed_shapes(&self) -> [Vec<usize>; 4] {
        let (b, d) = (self.batch, self.embed_dim);
        [vec![2 * d, b], vec![2 * d], vec![d, 2 * d], vec![d]]
    }

    /// Element counts of one MLP's parameters.
    pub fn embed_numels(&self) -> [usize; 4] {
        let (b, d) = (self.batch, self.embed_dim);
        [2 * d * b, 2 * d, 2 * d * d, d]
    }
}
