//! The CPU reference of CIRKD (`docs/losses.md §10`): f64, every ordered pair of images in turn, the logits
//! computed one `ROW_TILE x COL_TILE` tile at a time, an online row softmax in the forward and a backward that
//! recomputes the tiles (never a `P x P` matrix).

use std::ops::Range;

use ndarray::{Array4, ArrayView4};

use super::CirkdConfig;
use crate::cpu::{CpuOutput, HostFloat, PairCall};
use crate::error::{KdError, Result};
use crate::relation::{check_shapes, PixelFeatures, RelationShapes};

/// Rows of one logit tile.
const ROW_TILE: usize = 32;
/// Columns of one logit tile.
const COL_TILE: usize = 256;

crate::cpu::pair_reference_calls! {
    /// CIRKD (mini-batch pixel relations) on the CPU.
    pub struct CirkdCpu { config: CirkdConfig } relation
}

/// One row's running statistics over the columns seen so far: for the student's and the teacher's logits,
/// the largest value and the sum of `e^(x - max)`; and `sum e^(t - max_t) (t - s)`, which over the whole row,
/// divided by the teacher's sum, is `sum_q pt (t - s)`.
#[derive(Debug, Clone, Copy)]
struct RowStats {
    max_s: f64,
    sum_s: f64,
    max_t: f64,
    sum_t: f64,
    cross: f64,
}

impl RowStats {
    const EMPTY: RowStats =
        RowStats { max_s: f64::NEG_INFINITY, sum_s: 0.0, max_t: f64::NEG_INFINITY, sum_t: 0.0, cross: 0.0 };

    /// Takes in the next columns of the row: the running sums are rescaled to the new maxima first.
    fn push(&mut self, s: &[f64], t: &[f64]) {
        let max_s = s.iter().copied().fold(self.max_s, f64::max);
        let max_t = t.iter().copied().fold(self.max_t, f64::max);
        // exp(-inf) = 0 on the first tile.
        self.sum_s *= (self.max_s - max_s).exp();
        let rescale_t = (self.max_t - max_t).exp();
        self.sum_t *= rescale_t;
        self.cross *= rescale_t;
        for (&sv, &tv) in s.iter().zip(t) {
            self.sum_s += (sv - max_s).exp();
            let et = (tv - max_t).exp();
            self.sum_t += et;
            self.cross += et * (tv - sv);
        }
        (self.max_s, self.max_t) = (max_s, max_t);
    }

    fn lse_s(&self) -> f64 {
        self.max_s + self.sum_s.ln()
    }

    fn lse_t(&self) -> f64 {
        self.max_t + self.sum_t.ln()
    }

    /// `sum_q pt (log pt - log ps) = sum_q pt (t - s) - LSE(t) + LSE(s)`. With the student's logits equal to
    /// the teacher's every operation above ran on equal values: `cross` is 0 and the two LSEs are equal, so
    /// this is exactly 0.
    fn divergence(&self) -> f64 {
        (self.cross / self.sum_t - self.lse_t()) + self.lse_s()
    }
}

/// The normalised features of one image, student and teacher.
struct Image {
    s: PixelFeatures,
    t: PixelFeatures,
}

/// One ordered pair `(i, j)`: the rows are image `i`'s pixels, the columns image `j`'s.
struct Pair<'a> {
    rows: &'a Image,
    cols: &'a Image,
    tau: f64,
}

/// Reusable tile buffers.
struct Tiles {
    s: Vec<f64>,
    t: Vec<f64>,
}

impl Tiles {
    fn new() -> Self {
        Tiles { s: vec![0.0; ROW_TILE * COL_TILE], t: vec![0.0; ROW_TILE * COL_TILE] }
    }
}

/// `x_a^T y_b / tau` for rows `a` in `rows` of `x` and columns `b` in `cols` of `y` into `tile`, row-major with
/// stride `COL_TILE`.
fn logits(x: &PixelFeatures, y: &PixelFeatures, rows: &Range<usize>, cols: &Range<usize>, tau: f64, tile: &mut [f64]) {
    for r in 0..rows.len() {
        tile[r * COL_TILE..r * COL_TILE + cols.len()].iter_mut().for_each(|v| *v = 0.0);
    }
    for ch in 0..x.c {
        let (xc, yc) = (x.channel(ch), &y.channel(ch)[cols.clone()]);
        for (r, &a) in xc[rows.clone()].iter().enumerate() {
            for (v, &b) in tile[r * COL_TILE..r * COL_TILE + cols.len()].iter_mut().zip(yc) {
                *v += a * b;
            }
        }
    }
    for r in 0..rows.len() {
        tile[r * COL_TILE..r * COL_TILE + cols.len()].iter_mut().for_each(|v| *v /= tau);
    }
}

/// `0..len` in blocks of `block`.
fn blocks(len: usize, block: usize) -> impl Iterator<Item = Range<usize>> {
    (0..len.div_ceil(block)).map(move |b| b * block..((b + 1) * block).min(len))
}

impl Pair<'_> {
    fn tiles(&self, rows: &Range<usize>, cols: &Range<usize>, tiles: &mut Tiles) {
        logits(&self.rows.s, &self.cols.s, rows, cols, self.tau, &mut tiles.s);
        logits(&self.rows.t, &self.cols.t, rows, cols, self.tau, &mut tiles.t);
    }

    /// The statistics of rows `rows` over every column.
    fn row_stats(&self, rows: Range<usize>, tiles: &mut Tiles) -> Vec<RowStats> {
        let p = self.cols.s.p;
        let mut stats = vec![RowStats::EMPTY; rows.len()];
        for block in blocks(rows.len(), ROW_TILE) {
            let block_rows = rows.start + block.start..rows.start + block.end;
            for cols in blocks(p, COL_TILE) {
                self.tiles(&block_rows, &cols, tiles);
                for (r, st) in stats[block.clone()].iter_mut().enumerate() {
                    let at = r * COL_TILE..r * COL_TILE + cols.len();
                    st.push(&tiles.s[at.clone()], &tiles.t[at]);
                }
            }
        }
        stats
    }

    /// Adds `d loss / d F_S` of this pair to `d_rows` (image `i`'s, `[Cs, P]`) and `d_cols` (image `j`'s),
    /// with `coef` the loss's factor on `(ps - pt)` divided by `tau` (the logits' own factor). The logits are
    /// recomputed tile by tile; `stats` are every row's.
    fn backward(&self, stats: &[RowStats], coef: f64, d_rows: &mut [f64], d_cols: &mut [f64], tiles: &mut Tiles) {
        let (fi, fj) = (&self.rows.s, &self.cols.s);
        let (c, p) = (fi.c, fi.p);
        let mut g = vec![0.0; ROW_TILE * COL_TILE];
        for rows in blocks(p, ROW_TILE) {
            for cols in blocks(p, COL_TILE) {
                self.tiles(&rows, &cols, tiles);
                for (r, row) in rows.clone().enumerate() {
                    let (lse_s, lse_t) = (stats[row].lse_s(), stats[row].lse_t());
                    let at = r * COL_TILE..r * COL_TILE + cols.len();
                    for ((gv, &sv), &tv) in g[at.clone()].iter_mut().zip(&tiles.s[at.clone()]).zip(&tiles.t[at]) {
                        *gv = coef * ((sv - lse_s).exp() - (tv - lse_t).exp());
                    }
                }
                for ch in 0..c {
                    let (xi, xj) = (&fi.channel(ch)[rows.clone()], &fj.channel(ch)[cols.clone()]);
                    let (di, dj) = (&mut d_rows[ch * p..(ch + 1) * p], &mut d_cols[ch * p..(ch + 1) * p]);
                    for (r, &a) in xi.iter().enumerate() {
                        let grow = &g[r * COL_TILE..r * COL_TILE + cols.len()];
                        di[rows.start + r] += grow.iter().zip(xj).map(|(gv, b)| gv * b).sum::<f64>();
                        for (d, gv) in dj[cols.clone()].iter_mut().zip(grow) {
                            *d += gv * a;
                        }
                    }
                }
            }
        }
    }
}

impl CirkdCpu {
    /// The features of image `n`, student and teacher.
    fn image<T: HostFloat>(
        &self,
        student: &ArrayView4<'_, T>,
        teacher: &ArrayView4<'_, T>,
        shapes: &RelationShapes,
        n: usize,
    ) -> Image {
        let pooling = self.config.pool.pooling(shapes.student.h, shapes.student.w);
        Image { s: PixelFeatures::new(student, n, pooling), t: PixelFeatures::new(teacher, n, pooling) }
    }

    /// The KL divergence of rows `rows` of the ordered pair `(i, j)`, `sum_q pt (log pt - log ps)` per row
    /// (rows and columns index the pixels after pooling, `P = H' * W'` of [`CirkdConfig::pooled_dims`]),
    /// computed by the same tiled pass as the loss, which is `loss_weight / (P B^2)` times the sum of every
    /// pair's rows. Only images `i` and `j` are read: a check of some rows costs `O(rows * P * C)`, however
    /// large the map.
    pub fn row_divergences<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        (i, j): (usize, usize),
        rows: Range<usize>,
    ) -> Result<Vec<f64>> {
        let shapes = check_shapes(student.shape(), teacher.shape())?;
        let b = shapes.student.n;
        if i >= b || j >= b {
            return Err(KdError::InvalidParameter {
                name: "(i, j)",
                value: format!("({i}, {j})"),
                requirement: "image indices below the batch size B",
            });
        }
        let (ph, pw) = self.config.pooled_dims(shapes.student.h, shapes.student.w);
        if rows.start > rows.end || rows.end > ph * pw {
            return Err(KdError::InvalidParameter {
                name: "rows",
                value: format!("{rows:?} (P = {})", ph * pw),
                requirement: "a range within 0..P, P the pixels per image after pooling",
            });
        }
        let row_image = self.image(&student, &teacher, &shapes, i);
        let col_image = if j == i { None } else { Some(self.image(&student, &teacher, &shapes, j)) };
        let pair = Pair { rows: &row_image, cols: col_image.as_ref().unwrap_or(&row_image), tau: self.config.tau };
        let stats = pair.row_stats(rows, &mut Tiles::new());
        Ok(stats.iter().map(RowStats::divergence).collect())
    }

    fn compute_pair<T: HostFloat>(&self, call: PairCall<'_, T, RelationShapes>) -> Result<CpuOutput> {
        let PairCall { student, teacher, shape: shapes, upstream, want_grad } = call;
        let (b, cs) = (shapes.student.n, shapes.student.c);
        let images: Vec<Image> = (0..b).map(|n| self.image(&student, &teacher, &shapes, n)).collect();
        let p = images[0].s.p;
        let scale = self.config.loss_weight / (p as f64 * (b * b) as f64);
        let coef = upstream * scale / self.config.tau;
        let mut d_hat = if want_grad { vec![0.0; b * cs * p] } else { Vec::new() };
        let (mut d_rows, mut d_cols) = (vec![0.0; cs * p], vec![0.0; cs * p]);
        let mut tiles = Tiles::new();
        let mut total = 0.0;
        for i in 0..b {
            for j in 0..b {
                let pair = Pair { rows: &images[i], cols: &images[j], tau: self.config.tau };
                let stats = pair.row_stats(0..p, &mut tiles);
                total += stats.iter().map(RowStats::divergence).sum::<f64>();
                if want_grad {
                    d_rows.iter_mut().chain(d_cols.iter_mut()).for_each(|v| *v = 0.0);
                    pair.backward(&stats, coef, &mut d_rows, &mut d_cols, &mut tiles);
                    let image = |n: usize| n * cs * p..(n + 1) * cs * p;
                    d_hat[image(i)].iter_mut().zip(&d_rows).for_each(|(d, v)| *d += v);
                    d_hat[image(j)].iter_mut().zip(&d_cols).for_each(|(d, v)| *d += v);
                }
            }
        }
        let mut grad = Array4::<f64>::zeros(if want_grad { shapes.student.dims() } else { [0; 4] });
        if want_grad {
            let image_len = cs * shapes.student.plane();
            let out = grad.as_slice_mut().expect("a new array is contiguous");
            for (n, img) in images.iter().enumerate() {
                img.s.backward(&d_hat[n * cs * p..(n + 1) * cs * p], &mut out[n * image_len..(n + 1) * image_len]);
            }
        }
        Ok(CpuOutput { loss: scale * total, grad_student: grad, grad_teacher: None })
    }
}
