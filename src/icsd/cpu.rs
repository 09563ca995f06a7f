//! The CPU reference of ICSD (`docs/losses.md §3.4-§3.8`): f64 throughout, written to be obviously correct.

use ndarray::{Array2, Array4, ArrayView4};

use super::{IcsdConfig, IcsdVariant};
use crate::cpu::HostFloat;
use crate::cpu::{check_pair, log_softmax, PairCall};
use crate::error::Result;
use crate::shape::Nchw;

const EPS: f64 = 1e-12;

/// What [`IcsdCpu`] returns.
#[derive(Debug, Clone)]
pub struct IcsdCpuOutput {
    /// `L_ICS`.
    pub loss: f64,
    /// d loss / d student (times the upstream gradient for `backward`); all dimensions 0 for `forward`.
    pub grad_student: Array4<f64>,
    /// `Mh_S`, the student's row-normalised `C x C` matrix.
    pub sim_student: Array2<f64>,
    /// `Mh_T`, the teacher's.
    pub sim_teacher: Array2<f64>,
}

/// `log P` of every element, per softmax group of the variant.
fn log_probs<T: HostFloat>(x: ArrayView4<'_, T>, shape: &Nchw, config: &IcsdConfig) -> Array4<f64> {
    let mut out = Array4::<f64>::zeros(shape.dims());
    for b in 0..shape.n {
        for c in 0..shape.c {
            match config.variant {
                IcsdVariant::Official => {
                    for w in 0..shape.w {
                        let z: Vec<f64> = (0..shape.h).map(|h| x[[b, c, h, w]].to_f64() / config.tau).collect();
                        for (h, v) in log_softmax(&z).into_iter().enumerate() {
                            out[[b, c, h, w]] = v;
                        }
                    }
                }
                IcsdVariant::Paper => {
                    let z: Vec<f64> =
                        x.slice(ndarray::s![b, c, .., ..]).iter().map(|v| v.to_f64() / config.tau).collect();
                    for (l, v) in log_softmax(&z).into_iter().enumerate() {
                        out[[b, c, l / shape.w, l % shape.w]] = v;
                    }
                }
            }
        }
    }
    out
}

/// The unnormalised matrix `M` (§3.5 or §3.7).
fn matrix(logp: &Array4<f64>, shape: &Nchw, variant: IcsdVariant) -> Array2<f64> {
    let (bn, cn) = (shape.n, shape.c);
    let p = logp.mapv(f64::exp);
    let inv_b = 1.0 / bn as f64;
    let mut ent = vec![0.0; cn]; // sum P_k log P_k
    let mut cross = Array2::<f64>::zeros((cn, cn)); // official: sum P_i P_j; paper: sum log P_i P_j
    for b in 0..bn {
        for h in 0..shape.h {
            for w in 0..shape.w {
                for i in 0..cn {
                    let (pi, li) = (p[[b, i, h, w]], logp[[b, i, h, w]]);
                    ent[i] += pi * li;
                    let left = if variant == IcsdVariant::Official { pi } else { li };
                    for j in 0..cn {
                        cross[[i, j]] += left * p[[b, j, h, w]];
                    }
                }
            }
        }
    }
    Array2::from_shape_fn((cn, cn), |(i, j)| match variant {
        IcsdVariant::Official => (ent[i.max(j)] - cross[[i, j]]) * inv_b,
        IcsdVariant::Paper if i == j => 0.0,
        IcsdVariant::Paper => (ent[j] - cross[[i, j]]) * inv_b,
    })
}

fn row_norms(m: &Array2<f64>) -> Vec<f64> {
    m.rows().into_iter().map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt()).collect()
}

fn normalise(m: &Array2<f64>) -> Array2<f64> {
    let norms = row_norms(m);
    Array2::from_shape_fn(m.dim(), |(i, j)| m[[i, j]] / norms[i].max(EPS))
}

crate::cpu::reference_config! {
    /// ICSD on the CPU, with the same surface as [`super::IcsdCuda`].
    pub struct IcsdCpu { config: IcsdConfig }
}

impl IcsdCpu {
    /// The loss and the two matrices, no gradient.
    pub fn forward<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
    ) -> Result<IcsdCpuOutput> {
        self.compute(PairCall::new(student, teacher, 1.0, false)?)
    }

    /// Loss, matrices and d loss / d student.
    pub fn forward_backward<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
    ) -> Result<IcsdCpuOutput> {
        self.compute(PairCall::new(student, teacher, 1.0, true)?)
    }

    /// The gradient times `upstream` (d total / d loss); the loss is filled too.
    pub fn backward<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        upstream: f64,
    ) -> Result<IcsdCpuOutput> {
        self.compute(PairCall::new(student, teacher, upstream, true)?)
    }

    /// The unnormalised matrix `M` of `x` (§3.5 or §3.7), for tests and plots.
    pub fn raw_matrix<T: HostFloat>(&self, x: ArrayView4<'_, T>) -> Result<Array2<f64>> {
        let shape = check_pair(x, x)?;
        Ok(matrix(&log_probs(x, &shape, &self.config), &shape, self.config.variant))
    }

    fn compute<T: HostFloat>(&self, call: PairCall<'_, T>) -> Result<IcsdCpuOutput> {
        let PairCall { student, teacher, shape, upstream, want_grad } = call;
        let cfg = &self.config;
        let (bn, cn) = (shape.n, shape.c);
        let logp_s = log_probs(student, &shape, cfg);
        let m_s = matrix(&logp_s, &shape, cfg.variant);
        let m_t = matrix(&log_probs(teacher, &shape, cfg), &shape, cfg.variant);
        let mh_s = normalise(&m_s);
        let mh_t = normalise(&m_t);
        let loss = cfg.loss_scale(bn, cn) * mh_s.iter().zip(&mh_t).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
        let mut grad = Array4::<f64>::zeros(if want_grad { shape.dims() } else { [0; 4] });
        if want_grad {
            // §3.6: Gh, then U = dL/dM through the row normalisation.
            let gscale = upstream * 2.0 * cfg.loss_scale(bn, cn);
            let norms = row_norms(&m_s);
            let mut u = Array2::<f64>::zeros((cn, cn));
            for i in 0..cn {
                let gh: Vec<f64> = (0..cn).map(|j| gscale * (mh_s[[i, j]] - mh_t[[i, j]])).collect();
                let proj: f64 = (0..cn).map(|j| gh[j] * mh_s[[i, j]]).sum();
                for j in 0..cn {
                    u[[i, j]] = if norms[i] >= EPS { (gh[j] - proj * mh_s[[i, j]]) / norms[i] } else { gh[j] / EPS };
                }
            }
            let p = logp_s.mapv(f64::exp);
            let inv_b = 1.0 / bn as f64;
            let at = |t: &Array4<f64>, b: usize, k: usize, l: usize| t[[b, k, l / shape.w, l % shape.w]];
            match cfg.variant {
                IcsdVariant::Official => {
                    let a: Vec<f64> =
                        (0..cn).map(|k| u[[k, k]] + (0..k).map(|i| u[[i, k]] + u[[k, i]]).sum::<f64>()).collect();
                    for b in 0..bn {
                        for w in 0..shape.w {
                            for k in 0..cn {
                                let q: Vec<f64> = (0..shape.h)
                                    .map(|h| {
                                        let l = h * shape.w + w;
                                        inv_b
                                            * (a[k] * at(&logp_s, b, k, l)
                                                - (0..cn)
                                                    .map(|j| (u[[k, j]] + u[[j, k]]) * at(&p, b, j, l))
                                                    .sum::<f64>())
                                    })
                                    .collect();
                                let dot: f64 = (0..shape.h).map(|h| p[[b, k, h, w]] * q[h]).sum();
                                for h in 0..shape.h {
                                    grad[[b, k, h, w]] = p[[b, k, h, w]] * (q[h] - dot) / cfg.tau;
                                }
                            }
                        }
                    }
                }
                IcsdVariant::Paper => {
                    let col: Vec<f64> = (0..cn).map(|k| (0..cn).map(|i| u[[i, k]]).sum()).collect();
                    let row: Vec<f64> = (0..cn).map(|k| (0..cn).map(|j| u[[k, j]]).sum()).collect();
                    let plane = shape.plane();
                    for b in 0..bn {
                        for k in 0..cn {
                            let r: Vec<f64> = (0..plane)
                                .map(|l| {
                                    col[k] * at(&logp_s, b, k, l)
                                        - (0..cn).map(|i| u[[i, k]] * at(&logp_s, b, i, l)).sum::<f64>()
                                })
                                .collect();
                            let dot: f64 = (0..plane).map(|l| at(&p, b, k, l) * r[l]).sum();
                            for l in 0..plane {
                                let v: f64 = (0..cn).map(|j| u[[k, j]] * at(&p, b, j, l)).sum();
                                let pk = at(&p, b, k, l);
                                grad[[b, k, l / shape.w, l % shape.w]] =
                                    inv_b / cfg.tau * (pk * (r[l] - dot) - v + row[k] * pk);
                            }
                        }
                    }
                }
            }
        }
        Ok(IcsdCpuOutput { loss, grad_student: grad, sim_student: mh_s, sim_teacher: mh_t })
    }
}
