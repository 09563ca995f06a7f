//! The CPU reference of SemCKD: f64 throughout, written to follow `docs/losses.md §4.2`-`§4.4` line by line.

use ndarray::{Array1, Array2, Array3, Array4, ArrayView1, ArrayView2, ArrayView4};

use super::layers::SemckdLayers;
use super::pool::adaptive_avg_pool;
use super::SemckdConfig;
use crate::dtype::HostFloat;
use crate::error::{KdError, Result};

/// One embedding MLP's parameters (`MLPEmbed`: Linear B -> 2d, ReLU, Linear 2d -> d, L2 normalisation), f32.
#[derive(Debug, Clone, Copy)]
pub struct EmbedWeights<'a> {
    /// `[2d, B]`.
    pub linear1_weight: ArrayView2<'a, f32>,
    /// `[2d]`.
    pub linear1_bias: ArrayView1<'a, f32>,
    /// `[d, 2d]`.
    pub linear2_weight: ArrayView2<'a, f32>,
    /// `[d]`.
    pub linear2_bias: ArrayView1<'a, f32>,
}

/// The inputs of one call: feature maps, regressor outputs `proj[i][j]` (`[B, Ct_j, h, h]`), and the
/// query (one per student layer) and key (one per teacher layer) MLPs.
#[derive(Debug, Clone)]
pub struct SemckdCpuInputs<'a, T> {
    /// `S` maps `[B, Cs_i, Hs_i, Ws_i]`.
    pub student: Vec<ArrayView4<'a, T>>,
    /// `T` maps `[B, Ct_j, Ht_j, Wt_j]`.
    pub teacher: Vec<ArrayView4<'a, T>>,
    /// `S` rows of `T` regressor outputs.
    pub proj: Vec<Vec<ArrayView4<'a, T>>>,
    /// `S` query MLPs.
    pub query: Vec<EmbedWeights<'a>>,
    /// `T` key MLPs.
    pub key: Vec<EmbedWeights<'a>>,
}

/// Gradients of one MLP's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedGrads {
    /// `[2d, B]`.
    pub linear1_weight: Array2<f64>,
    /// `[2d]`.
    pub linear1_bias: Array1<f64>,
    /// `[d, 2d]`.
    pub linear2_weight: Array2<f64>,
    /// `[d]`.
    pub linear2_bias: Array1<f64>,
}

/// What the CPU reference returns (gradients empty for `forward`).
#[derive(Debug, Clone)]
pub struct SemckdCpuOutput {
    /// The loss.
    pub loss: f64,
    /// `alpha`, `[B, S, T]`.
    pub attention: Array3<f64>,
    /// The per-sample MSE `l[b, i, j]`, `[B, S, T]`.
    pub mse: Array3<f64>,
    /// d loss / d student map `i`, the Gram/attention path only.
    pub grad_student: Vec<Array4<f64>>,
    /// d loss / d `proj[i][j]`.
    pub grad_proj: Vec<Vec<Array4<f64>>>,
    /// Query MLP gradients.
    pub grad_query: Vec<EmbedGrads>,
    /// Key MLP gradients.
    pub grad_key: Vec<EmbedGrads>,
}

struct Mlp {
    u: Array2<f64>,     // [B, 2d] pre-ReLU
    y: Array2<f64>,     // [B, d] normalised
    denom: Array1<f64>, // [B]
    clamped: Vec<bool>,
}

fn mismatch(what: &'static str, expected: &[usize], got: &[usize]) -> KdError {
    KdError::ShapeMismatch { what, expected: expected.to_vec(), got: got.to_vec() }
}

crate::cpu::reference_config! {
    /// SemCKD on the CPU.
    pub struct SemckdCpu { config: SemckdConfig }
}

impl SemckdCpu {
    /// Checks every input's shape and returns the layout.
    pub fn layers<T>(&self, inputs: &SemckdCpuInputs<'_, T>) -> Result<SemckdLayers> {
        let s: Vec<&[usize]> = inputs.student.iter().map(|x| x.shape()).collect();
        let t: Vec<&[usize]> = inputs.teacher.iter().map(|x| x.shape()).collect();
        let mut layers = SemckdLayers::from_shapes(&s, &t)?;
        let d = inputs.query.first().map_or(0, |q| q.linear2_bias.len());
        layers.embed_dim = d;
        layers.validate()?;
        check_mlps(&layers, &inputs.query, &inputs.key)?;
        if inputs.proj.len() != layers.students() {
            return Err(mismatch("proj (rows, one per student layer)", &[layers.students()], &[inputs.proj.len()]));
        }
        for (i, row) in inputs.proj.iter().enumerate() {
            if row.len() != layers.teachers() {
                return Err(mismatch("proj (pairs per student layer)", &[layers.teachers()], &[row.len()]));
            }
            for (j, p) in row.iter().enumerate() {
                if p.shape() != layers.pair_shape(i, j) {
                    return Err(mismatch("proj[i][j]", &layers.pair_shape(i, j), p.shape()));
                }
            }
        }
        Ok(layers)
    }

    /// Loss, attention and MSE.
    pub fn forward<T: HostFloat>(&self, inputs: &SemckdCpuInputs<'_, T>) -> Result<SemckdCpuOutput> {
        self.compute(inputs, 1.0, false)
    }

    /// Loss, attention and every gradient.
    pub fn forward_backward<T: HostFloat>(&self, inputs: &SemckdCpuInputs<'_, T>) -> Result<SemckdCpuOutput> {
        self.compute(inputs, 1.0, true)
    }

    /// Every gradient times `upstream` (d total / d loss); the loss is filled too.
    pub fn backward<T: HostFloat>(&self, inputs: &SemckdCpuInputs<'_, T>, upstream: f64) -> Result<SemckdCpuOutput> {
        self.compute(inputs, upstream, true)
    }

    fn compute<T: HostFloat>(
        &self,
        inputs: &SemckdCpuInputs<'_, T>,
        upstream: f64,
        want_grad: bool,
    ) -> Result<SemckdCpuOutput> {
        let layers = self.layers(inputs)?;
        let (b_n, s_n, t_n) = (layers.batch, layers.students(), layers.teachers());
        let w = self.config.loss_weight;
        let eps = self.config.eps;
        let grams_s: Vec<Array2<f64>> = inputs.student.iter().map(|x| gram(*x)).collect();
        let grams_t: Vec<Array2<f64>> = inputs.teacher.iter().map(|x| gram(*x)).collect();
        let mlp_s: Vec<Mlp> = grams_s.iter().zip(&inputs.query).map(|(g, p)| mlp_forward(g, p, eps)).collect();
        let mlp_t: Vec<Mlp> = grams_t.iter().zip(&inputs.key).map(|(g, p)| mlp_forward(g, p, eps)).collect();
        let mut alpha = Array3::<f64>::zeros((b_n, s_n, t_n));
        for b in 0..b_n {
            for i in 0..s_n {
                let e: Vec<f64> = (0..t_n).map(|j| mlp_s[i].y.row(b).dot(&mlp_t[j].y.row(b))).collect();
                let m = e.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = e.iter().map(|v| (v - m).exp()).sum();
                for j in 0..t_n {
                    alpha[[b, i, j]] = (e[j] - m).exp() / z;
                }
            }
        }
        // Pooled targets and per-sample MSE.
        let mut mse = Array3::<f64>::zeros((b_n, s_n, t_n));
        let mut diffs: Vec<Vec<Array4<f64>>> = Vec::new();
        for i in 0..s_n {
            let mut row = Vec::new();
            for j in 0..t_n {
                let [_, c, h, _] = layers.pair_shape(i, j);
                let t = inputs.teacher[j];
                let p = inputs.proj[i][j];
                let pooled = adaptive_avg_pool(t, h, h)?;
                let diff = Array4::from_shape_fn((b_n, c, h, h), |at| p[at].to_f64() - pooled[at]);
                let dij = (c * h * h) as f64;
                for b in 0..b_n {
                    mse[[b, i, j]] = diff.index_axis(ndarray::Axis(0), b).iter().map(|v| v * v).sum::<f64>() / dij;
                }
                row.push(diff);
            }
            diffs.push(row);
        }
        let norm = w / (b_n * s_n) as f64;
        let loss = norm * (&alpha * &mse).sum();
        let mut out = SemckdCpuOutput {
            loss,
            attention: alpha.clone(),
            mse: mse.clone(),
            grad_student: Vec::new(),
            grad_proj: Vec::new(),
            grad_query: Vec::new(),
            grad_key: Vec::new(),
        };
        if !want_grad {
            return Ok(out);
        }
        let gscale = norm * upstream;
        // d loss / d Shat.
        for i in 0..s_n {
            let mut row = Vec::new();
            for j in 0..t_n {
                let diff = &diffs[i][j];
                let dij = diff.len() as f64 / b_n as f64;
                let mut g = diff.clone();
                for ((b, _, _, _), v) in g.indexed_iter_mut() {
                    *v *= gscale * alpha[[b, i, j]] * 2.0 / dij;
                }
                row.push(g);
            }
            out.grad_proj.push(row);
        }
        // Softmax backward.
        let mut de = Array3::<f64>::zeros((b_n, s_n, t_n));
        for b in 0..b_n {
            for i in 0..s_n {
                let g: Vec<f64> = (0..t_n).map(|j| gscale * mse[[b, i, j]]).collect();
                let gbar: f64 = (0..t_n).map(|j| alpha[[b, i, j]] * g[j]).sum();
                for j in 0..t_n {
                    de[[b, i, j]] = alpha[[b, i, j]] * (g[j] - gbar);
                }
            }
        }
        let d = layers.embed_dim;
        for i in 0..s_n {
            let mut dy = Array2::<f64>::zeros((b_n, d));
            for b in 0..b_n {
                for j in 0..t_n {
                    dy.row_mut(b).scaled_add(de[[b, i, j]], &mlp_t[j].y.row(b));
                }
            }
            let (grads, dgram) = mlp_backward(&dy, &grams_s[i], &inputs.query[i], &mlp_s[i]);
            out.grad_query.push(grads);
            // dX = (dGr + dGr^T) X.
            let x = inputs.student[i];
            let shape = x.raw_dim();
            let xm = Array2::from_shape_vec((b_n, x.len() / b_n), x.iter().map(|v| v.to_f64()).collect())
                .expect("contiguous");
            let sym = &dgram + &dgram.t();
            let dx = sym.dot(&xm);
            out.grad_student.push(dx.into_shape_with_order(shape).expect("same size"));
        }
        for j in 0..t_n {
            let mut dy = Array2::<f64>::zeros((b_n, d));
            for b in 0..b_n {
                for i in 0..s_n {
                    dy.row_mut(b).scaled_add(de[[b, i, j]], &mlp_s[i].y.row(b));
                }
            }
            out.grad_key.push(mlp_backward(&dy, &grams_t[j], &inputs.key[j], &mlp_t[j]).0);
        }
        Ok(out)
    }
}

fn check_mlps<'a>(layers: &SemckdLayers, query: &[EmbedWeights<'a>], key: &[EmbedWeights<'a>]) -> Result<()> {
    if query.len() != layers.students() {
        return Err(mismatch("query MLPs (one per student layer)", &[layers.students()], &[query.len()]));
    }
    if key.len() != layers.teachers() {
        return Err(mismatch("key MLPs (one per teacher layer)", &[layers.teachers()], &[key.len()]));
    }
    let want = layers.embed_shapes();
    for m in query.iter().chain(key) {
        let got = [m.linear1_weight.shape(), m.linear1_bias.shape(), m.linear2_weight.shape(), m.linear2_bias.shape()];
        for (what, (g, e)) in
            ["linear1.weight [2d, B]", "linear1.bias [2d]", "linear2.weight [d, 2d]", "linear2.bias [d]"]
                .into_iter()
                .zip(got.iter().zip(&want))
        {
            if *g != e.as_slice() {
                return Err(mismatch(what, e, g));
            }
        }
    }
    Ok(())
}

/// `X X^T` for `X = reshape(F, [B, D])`.
fn gram<T: HostFloat>(x: ArrayView4<'_, T>) -> Array2<f64> {
    let b = x.shape()[0];
    let xm = Array2::from_shape_vec((b, x.len() / b), x.iter().map(|v| v.to_f64()).collect()).expect("sizes");
    xm.dot(&xm.t())
}

fn to64_2(a: ArrayView2<'_, f32>) -> Array2<f64> {
    a.mapv(|v| v as f64)
}

fn mlp_forward(g: &Array2<f64>, p: &EmbedWeights<'_>, eps: Option<f64>) -> Mlp {
    let w1 = to64_2(p.linear1_weight);
    let w2 = to64_2(p.linear2_weight);
    let b1 = p.linear1_bias.mapv(|v| v as f64);
    let b2 = p.linear2_bias.mapv(|v| v as f64);
    let u = g.dot(&w1.t()) + &b1;
    let a = u.mapv(|v| v.max(0.0));
    let z = a.dot(&w2.t()) + &b2;
    let n = z.nrows();
    let mut y = z.clone();
    let mut denom = Array1::<f64>::zeros(n);
    let mut clamped = vec![false; n];
    for b in 0..n {
        let norm = z.row(b).dot(&z.row(b)).sqrt();
        let (dn, cl) = match eps {
            Some(e) if norm < e => (e, true),
            _ => (norm, false),
        };
        denom[b] = dn;
        clamped[b] = cl;
        y.row_mut(b).mapv_inplace(|v| v / dn);
    }
    Mlp { u, y, denom, clamped }
}

/// Returns the parameter gradients and dGr.
fn mlp_backward(dy: &Array2<f64>, g: &Array2<f64>, p: &EmbedWeights<'_>, m: &Mlp) -> (EmbedGrads, Array2<f64>) {
    let w1 = to64_2(p.linear1_weight);
    let w2 = to64_2(p.linear2_weight);
    let mut dz = dy.clone();
    for b in 0..dy.nrows() {
        let yb = m.y.row(b);
        let dot = if m.clamped[b] { 0.0 } else { dy.row(b).dot(&yb) };
        for (k, v) in dz.row_mut(b).iter_mut().enumerate() {
            *v = (dy[[b, k]] - dot * yb[k]) / m.denom[b];
        }
    }
    let a = m.u.mapv(|v| v.max(0.0));
    let dw2 = dz.t().dot(&a);
    let db2 = dz.sum_axis(ndarray::Axis(0));
    let da = dz.dot(&w2);
    let mask = m.u.mapv(|v| if v > 0.0 { 1.0 } else { 0.0 });
    let du = da * mask;
    let dw1 = du.t().dot(g);
    let db1 = du.sum_axis(ndarray::Axis(0));
    let dgram = du.dot(&w1);
    (EmbedGrads { linear1_weight: dw1, linear1_bias: db1, linear2_weight: dw2, linear2_bias: db2 }, dgram)
}
