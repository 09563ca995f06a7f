//! The same losses written in burn's own tensor operations, differentiated by burn's autograd: the oracle
//! the tests hold [`super::cwd_loss`] and [`super::pixel_kd_loss`] to, and the baseline of the bench.
//!
//! They follow `docs/losses.md` as the CPU reference does (`log p = z - LSE(z)` through burn's
//! `log_softmax`), take already checked configurations, and are as fast as burn makes them: several
//! passes over the logits, each materialised.
//!
//! Temperatures multiply by `1 / tau` rather than divide by `tau`: burn 0.22's autodiff rounds the
//! reciprocal of a scalar divisor to f32 in the backward of `div_scalar`, which would leave f64 gradients
//! with f32 accuracy.

use ::burn::tensor::activation::{log_softmax, relu, softmax};
use ::burn::tensor::module::adaptive_avg_pool2d;
use ::burn::tensor::ops::PadMode;
use ::burn::tensor::{Int, Tensor, TensorData};

use super::{CwtMlp, SemckdMlp};
use kd_kernels::cirkd::{CirkdConfig, CirkdPool, AUTO_POOL_MIN_SIDE, AUTO_POOL_WINDOW};
use kd_kernels::cwd::CwdConfig;
use kd_kernels::cwt::{CwtConfig, CwtNormalize};
use kd_kernels::dist::DistConfig;
use kd_kernels::icsd::{IcsdConfig, IcsdVariant};
use kd_kernels::ifvd::{nearest_source, IfvdConfig, COS_EPS, COUNT_EPS};
use kd_kernels::pixel_kd::PixelKdConfig;
use kd_kernels::pkd::{PkdConfig, PKD_EPS};
use kd_kernels::semckd::SemckdConfig;
use kd_kernels::shape::Nchw;
use kd_kernels::skd::{SkdConfig, NORM_EPS};

/// CWD (`docs/losses.md` §1.3): a softmax over the H·W positions of each (n, c) row of `x / tau`;
/// `loss_weight * tau^2 / (N*C) * sum_rows KL(pT || pS)`.
pub fn cwd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &CwdConfig) -> Tensor<1> {
    let [n, c, h, w] = student.dims();
    let rows = |x: Tensor<4>| log_softmax(x.reshape([n * c, h * w]) * (1.0 / config.tau), 1);
    let (log_ps, log_pt) = (rows(student), rows(teacher));
    let kl = (log_pt.clone().exp() * (log_pt - log_ps)).sum();
    kl * (config.loss_weight * config.tau * config.tau / (n * c) as f64)
}

/// Pixel KD (`docs/losses.md` §2): a softmax over the C channels of each pixel of `x / tau`;
/// `loss_weight * [tau^2] / divisor * sum_pixels KL(pT || pS)`.
pub fn pixel_kd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &PixelKdConfig) -> Tensor<1> {
    let [n, c, h, w] = student.dims();
    let shape = Nchw { n, c, h, w };
    let log_ps = log_softmax(student * (1.0 / config.tau), 1);
    let log_pt = log_softmax(teacher * (1.0 / config.tau), 1);
    let kl = (log_pt.clone().exp() * (log_pt - log_ps)).sum();
    let tau2 = if config.scale_tau2 { config.tau * config.tau } else { 1.0 };
    kl * (config.loss_weight * tau2 / config.reduction.divisor(&shape))
}

/// DIST (`docs/losses.md` §8): per pixel a softmax over the C classes of `x / tau`; `loss_weight * tau^2 *
/// (beta * (1 - mean Pearson correlation across the classes of each pixel) + gamma * (1 - mean correlation
/// across the pixels of each class))`, eps 1e-8 added to the product of the norms.
pub fn dist_loss(student: Tensor<4>, teacher: Tensor<4>, config: &DistConfig) -> Tensor<1> {
    let [n, c, h, w] = student.dims();
    let rows = |x: Tensor<4>| softmax(x * (1.0 / config.tau), 1).permute([0, 2, 3, 1]).reshape([n * h * w, c]);
    // 1 - the mean over the rows of the correlation of a's and b's rows.
    let one_minus_pearson = |a: Tensor<2>, b: Tensor<2>| -> Tensor<1> {
        let a = a.clone() - a.mean_dim(1);
        let b = b.clone() - b.mean_dim(1);
        let dot = (a.clone() * b.clone()).sum_dim(1);
        let den = (a.clone() * a).sum_dim(1).sqrt() * (b.clone() * b).sum_dim(1).sqrt() + 1e-8;
        (dot / den).mean().neg() + 1.0
    };
    let (ps, pt) = (rows(student), rows(teacher));
    let inter = one_minus_pearson(ps.clone(), pt.clone());
    let intra = one_minus_pearson(ps.transpose(), pt.transpose());
    let scale = config.loss_weight * config.tau * config.tau;
    inter * (scale * config.beta) + intra * (scale * config.gamma)
}

/// PKD (`docs/losses.md` §7): per level, each channel standardised over its `N*H*W` values (unbiased
/// standard deviation, `+ 1e-6`); `loss_weight * sum_l 0.5 * mean (S_hat - T_hat)^2`. A constant channel's
/// gradient is NaN here (burn's `sqrt` at 0), where the crate's is finite: compare on varying channels.
pub fn pkd_loss(student: &[Tensor<4>], teacher: &[Tensor<4>], config: &PkdConfig) -> Tensor<1> {
    let standardised = |x: Tensor<4>| -> Tensor<2> {
        let [n, c, h, w] = x.dims();
        let m = n * h * w;
        let x = x.swap_dims(0, 1).reshape([c, m]);
        let centred = x.clone() - x.mean_dim(1);
        let std = ((centred.clone() * centred.clone()).sum_dim(1) * (1.0 / (m as f64 - 1.0))).sqrt();
        centred / (std + PKD_EPS)
    };
    let level = |(s, t): (&Tensor<4>, &Tensor<4>)| {
        let d = standardised(s.clone()) - standardised(t.clone());
        (d.clone() * d).mean() * 0.5
    };
    let total = student.iter().zip(teacher).map(level).reduce(|a, b| a + b).expect("at least one level");
    total * config.loss_weight
}

/// IFVD (`docs/losses.md` §11), as the official code computes it: the labels resized to `H x W` by
/// `nearest`; per image and present class `k` the prototype `sum_{y = k} F / (count + 1e-6)`; each pixel's
/// cosine with its class prototype (with itself where its label is not a class); `loss_weight * mean
/// (cos_S - cos_T)^2`. The class masks are built on the host from the labels (they carry no gradient).
pub fn ifvd_loss(student: Tensor<4>, teacher: Tensor<4>, labels: Tensor<3, Int>, config: &IfvdConfig) -> Tensor<1> {
    let [n, _, h, w] = student.dims();
    let [_, hl, wl] = labels.dims();
    let values = labels.into_data().convert::<i64>().try_to_vec::<i64>().expect("integer labels");
    let class_of = |b: usize, y: usize, x: usize| {
        let v = values[(b * hl + nearest_source(y, hl, h)) * wl + nearest_source(x, wl, w)];
        usize::try_from(v).ok().filter(|&k| k < config.num_classes)
    };
    let classes: Vec<Option<usize>> = (0..n)
        .flat_map(|b| (0..h).flat_map(move |y| (0..w).map(move |x| (b, y, x))))
        .map(|(b, y, x)| class_of(b, y, x))
        .collect();
    let mut present: Vec<usize> = classes.iter().flatten().copied().collect();
    present.sort_unstable();
    present.dedup();
    let (device, dtype) = (student.device(), student.dtype());
    let mask = |class: Option<usize>| -> Tensor<4> {
        let ones: Vec<f64> = classes.iter().map(|&k| f64::from(u8::from(k == class))).collect();
        Tensor::from_data(TensorData::new(ones, [n, 1, h, w]), (&device, dtype))
    };
    let masks: Vec<Tensor<4>> = present.iter().map(|&k| mask(Some(k))).collect();
    let ignored = mask(None);
    let cosines = |f: Tensor<4>| -> Tensor<4> {
        let mut q = f.clone() * ignored.clone();
        for m in &masks {
            let count = m.clone().sum_dim(2).sum_dim(3);
            let proto = (f.clone() * m.clone()).sum_dim(2).sum_dim(3) / (count + COUNT_EPS);
            q = q + m.clone() * proto;
        }
        let norm = |x: Tensor<4>| (x.clone() * x).sum_dim(1).sqrt().clamp_min(COS_EPS);
        (f.clone() * q.clone()).sum_dim(1) / (norm(f) * norm(q))
    };
    let d = cosines(student) - cosines(teacher);
    (d.clone() * d).mean() * config.loss_weight
}

/// CWT (`docs/losses.md` §5): per pixel `Y = W2 ReLU(W1 x + b1) + b2`;
/// `loss_weight * sum (Y - F_t)^2 / D`, `D = N` or `N*Ct*H*W`.
pub fn cwt_loss(student: Tensor<4>, teacher: Tensor<4>, mlp: &CwtMlp, config: &CwtConfig) -> Tensor<1> {
    let [n, cs, h, w] = student.dims();
    let ct = teacher.dims()[1];
    let pixels = |x: Tensor<4>, c: usize| x.permute([0, 2, 3, 1]).reshape([n * h * w, c]);
    let hidden = relu(pixels(student, cs).matmul(mlp.w1.clone().transpose()) + mlp.b1.clone().unsqueeze::<2>());
    let y = hidden.matmul(mlp.w2.clone().transpose()) + mlp.b2.clone().unsqueeze::<2>();
    let e = y - pixels(teacher, ct);
    let divisor = match config.normalize {
        CwtNormalize::Batch => n,
        CwtNormalize::Mean => n * ct * h * w,
    } as f64;
    (e.clone() * e).sum() * (config.loss_weight / divisor)
}

/// ICSD's `L_ICS` (`docs/losses.md` §3.4 to §3.7): per class map a softmax (official: along H, per column;
/// paper: over H·W), the `C x C` matrix `M` (official: `A_max(i,j) - G`; paper: the pairwise KL), rows L2
/// normalised (eps 1e-12), `loss_weight / (C^2 B) * sum (Mh_S - Mh_T)^2`.
pub fn icsd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &IcsdConfig) -> Tensor<1> {
    let [b, c, _, _] = student.dims();
    let (mh_s, mh_t) = (icsd_matrix(student, config), icsd_matrix(teacher, config));
    let d = mh_s - mh_t;
    (d.clone() * d).sum() * (config.loss_weight / ((c * c) as f64 * b as f64))
}

/// The row-normalised matrix `Mh` of one side.
fn icsd_matrix(x: Tensor<4>, config: &IcsdConfig) -> Tensor<2> {
    let [b, c, h, w] = x.dims();
    let device = x.device();
    let inv_b = 1.0 / b as f64;
    // Class maps as rows: [C, B*H*W].
    let rows = |t: Tensor<4>| t.permute([1, 0, 2, 3]).reshape([c, b * h * w]);
    let m = match config.variant {
        IcsdVariant::Official => {
            let log_p = log_softmax(x * (1.0 / config.tau), 2);
            let p = log_p.clone().exp();
            let a = rows(p.clone() * log_p).sum_dim(1) * inv_b; // [C, 1]: A_k
            let pm = rows(p);
            let g = pm.clone().matmul(pm.transpose()) * inv_b;
            // A_max(i,j): A_j on and above the diagonal (j >= i), A_i below.
            let upper: Vec<f64> = (0..c * c).map(|k| if k % c >= k / c { 1.0 } else { 0.0 }).collect();
            let upper = Tensor::<2>::from_data(TensorData::new(upper, [c, c]), (&device, a.dtype()));
            let (a_i, a_j) = (a.clone().expand([c, c]), a.transpose().expand([c, c]));
            upper.clone() * a_j + (upper.neg() + 1.0) * a_i - g
        }
        IcsdVariant::Paper => {
            let log_p = log_softmax((x * (1.0 / config.tau)).reshape([b, c, h * w]), 2).reshape([b, c, h, w]);
            let p = log_p.clone().exp();
            // M[i, j] = (1/B) sum P_j log P_j - (1/B) sum log P_i P_j.
            let e = rows(p.clone() * log_p.clone()).sum_dim(1).transpose() * inv_b; // [1, C]: E_j
            let cross = rows(log_p).matmul(rows(p).transpose()) * inv_b;
            e.expand([c, c]) - cross
        }
    };
    let norms = (m.clone() * m.clone()).sum_dim(1).sqrt().clamp_min(1e-12);
    m / norms
}

/// SemCKD (`docs/losses.md` §4.2), the regressor outputs `proj[i][j]` given: per layer the batch Gram
/// `X X^T` of `X = reshape(F, [B, D])`, its rows through the layer's MLP (`W2 relu(W1 g + b1) + b2`,
/// L2-normalised: `z / ||z||`, or `z / max(||z||, eps)` with `config.eps`), the attention
/// `alpha[b, i, :] = softmax_j <q_i[b], k_j[b]>`, the per-sample MSE of `proj[i][j]` against
/// `adaptive_avg_pool2d(F^t_j, (h, h))`, and `loss_weight / (B * S) * sum alpha * l`.
///
/// The f32 MLP parameters are cast to the maps' dtype (exact for f64), so the f64 reference computes in
/// f64 throughout.
pub fn semckd_loss(
    student: &[Tensor<4>],
    teacher: &[Tensor<4>],
    proj: &[Vec<Tensor<4>>],
    query: &[SemckdMlp],
    key: &[SemckdMlp],
    config: &SemckdConfig,
) -> Tensor<1> {
    let batch = student[0].dims()[0];
    let dtype = student[0].dtype();
    let embed = |map: &Tensor<4>, mlp: &SemckdMlp| -> Tensor<2> {
        let [b, c, h, w] = map.dims();
        let x = map.clone().reshape([b, c * h * w]);
        let gram = x.clone().matmul(x.transpose());
        let linear = |input: Tensor<2>, weight: &Tensor<2>, bias: &Tensor<1>| {
            input.matmul(weight.clone().cast(dtype).transpose()) + bias.clone().cast(dtype).unsqueeze::<2>()
        };
        let hidden = relu(linear(gram, &mlp.linear1_weight, &mlp.linear1_bias));
        let z = linear(hidden, &mlp.linear2_weight, &mlp.linear2_bias);
        let norm = (z.clone() * z.clone()).sum_dim(1).sqrt();
        let norm = match config.eps {
            Some(eps) => norm.clamp_min(eps),
            None => norm,
        };
        z / norm
    };
    let q: Vec<Tensor<2>> = student.iter().zip(query).map(|(m, mlp)| embed(m, mlp)).collect();
    let k: Vec<Tensor<2>> = teacher.iter().zip(key).map(|(m, mlp)| embed(m, mlp)).collect();
    // e[b, i, j] = <q_i[b], k_j[b]>: [B, S, d] x [B, d, T].
    let scores = Tensor::stack::<3>(q, 1).matmul(Tensor::stack::<3>(k, 1).swap_dims(1, 2));
    let alpha = softmax(scores, 2);
    // l[b, i, j]: [B, S, T].
    let mse = Tensor::stack::<3>(
        proj.iter()
            .map(|row| {
                let per_teacher: Vec<Tensor<2>> = row
                    .iter()
                    .zip(teacher)
                    .map(|(shat, map)| {
                        let [b, c, h, _] = shat.dims();
                        let target = adaptive_avg_pool2d(map.clone(), [h, h]);
                        let diff = shat.clone() - target;
                        (diff.clone() * diff).reshape([b, c * h * h]).mean_dim(1)
                    })
                    .collect();
                Tensor::cat(per_teacher, 1)
            })
            .collect(),
        1,
    );
    (alpha * mse).sum() * (config.loss_weight / (batch * student.len()) as f64)
}

/// A `k x k`, stride `k` pooling with `ceil_mode` (an edge window takes what lies inside the map): the map padded
/// to whole windows, by repeating its edge for the max (which leaves every window's max and sends its gradient
/// to the edge value it copies), by zeros for the average, whose sums are divided by each window's part inside.
fn ceil_pool(x: Tensor<4>, k: usize, max: bool) -> Tensor<4> {
    if k == 1 {
        return x;
    }
    let [n, c, h, w] = x.dims();
    let (ph, pw) = (h.div_ceil(k), w.div_ceil(k));
    let pad = [(0, ph * k - h), (0, pw * k - w)];
    let windows = |x: Tensor<4>| x.reshape([n, c, ph, k, pw, k]);
    if max {
        return windows(x.pad(pad, PadMode::Edge)).max_dim(5).max_dim(3).reshape([n, c, ph, pw]);
    }
    let inside = |o: usize, len: usize| (len.min((o + 1) * k) - o * k) as f64;
    let counts: Vec<f64> = (0..ph * pw).map(|q| inside(q / pw, h) * inside(q % pw, w)).collect();
    let counts = Tensor::<4>::from_data(TensorData::new(counts, [1, 1, ph, pw]), (&x.device(), x.dtype()));
    windows(x.pad(pad, PadMode::Constant(0.0))).sum_dim(5).sum_dim(3).reshape([n, c, ph, pw]) / counts
}

/// Each pixel's channel vector `x / max(|x|, 1e-12)`, pixel-major: `[N, P, C]`.
fn normalised_pixels(x: Tensor<4>) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    let f = x.reshape([n, c, h * w]).swap_dims(1, 2);
    let norm = (f.clone() * f.clone()).sum_dim(2).sqrt().clamp_min(NORM_EPS);
    f / norm
}

/// SKD (`docs/losses.md` §9.1), with the `P x P` similarities formed: the pool (2x2 max, `ceil_mode`, or none),
/// per-pixel normalisation, `A = F^T F` per image and side, `loss_weight * mean (A_S - A_T)^2`.
pub fn skd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &SkdConfig) -> Tensor<1> {
    let k = config.pool.window();
    let similarities = |x: Tensor<4>| {
        let f = normalised_pixels(ceil_pool(x, k, true));
        f.clone().matmul(f.swap_dims(1, 2))
    };
    let d = similarities(student) - similarities(teacher);
    (d.clone() * d).mean() * config.loss_weight
}

/// CIRKD (`docs/losses.md` §10.1), with the `P x P` relations of every ordered pair of images formed: the pool
/// (average, `ceil_mode`; `auto` pools 4x4 when both sides are at least 256), per-pixel normalisation, for
/// images `(i, j)` the rows `F_i^T F_j / tau` of each side through a softmax, `KL(pt || ps)` summed over
/// every row, `loss_weight / (P B^2)` times that sum.
pub fn cirkd_loss(student: Tensor<4>, teacher: Tensor<4>, config: &CirkdConfig) -> Tensor<1> {
    let [b, _, h, w] = student.dims();
    let k = match config.pool {
        CirkdPool::Auto if h >= AUTO_POOL_MIN_SIDE && w >= AUTO_POOL_MIN_SIDE => AUTO_POOL_WINDOW,
        CirkdPool::Auto | CirkdPool::None => 1,
        CirkdPool::Avg(k) => k,
    };
    let p = h.div_ceil(k) * w.div_ceil(k);
    let log_relations = |x: Tensor<4>| {
        let f = normalised_pixels(ceil_pool(x, k, false));
        let c = f.dims()[2];
        let all = f.reshape([b * p, c]);
        let logits = (all.clone().matmul(all.transpose()) * (1.0 / config.tau)).reshape([b, p, b, p]);
        log_softmax(logits, 3)
    };
    let (log_ps, log_pt) = (log_relations(student), log_relations(teacher));
    let kl = (log_pt.clone().exp() * (log_pt - log_ps)).sum();
    kl * (config.loss_weight / (p * b * b) as f64)
}
