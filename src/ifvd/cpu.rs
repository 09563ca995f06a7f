//! The CPU reference of IFVD (`docs/losses.md §11`): f64 throughout, written to be obviously correct.

use std::collections::HashMap;

use ndarray::{Array3, Array4, ArrayView3, ArrayView4, Axis};

use super::labels::{check_shapes, nearest_source, IfvdShapes};
use super::{IfvdConfig, COS_EPS, COUNT_EPS};
use crate::cpu::HostFloat;
use crate::error::Result;

/// What [`IfvdCpu`] returns.
#[derive(Debug, Clone)]
pub struct IfvdCpuOutput {
    /// The loss.
    pub loss: f64,
    /// d loss / d student (times the upstream gradient for `backward`); all dimensions 0 for `forward`.
    pub grad_student: Array4<f64>,
    /// The student's cosine map `[N, H, W]`.
    pub cos_student: Array3<f64>,
    /// The teacher's cosine map `[N, H, W]`.
    pub cos_teacher: Array3<f64>,
}

/// One image's features, channel-major (`[C, P]`), and what the forward pass derives from them.
struct Image {
    c: usize,
    p: usize,
    feat: Vec<f64>,
    /// The class slot of each pixel (an index into `proto`), `None` for an ignored pixel.
    slot: Vec<Option<usize>>,
    /// `count + 1e-6` per slot.
    denom: Vec<f64>,
    /// The prototypes, `[slots, C]`.
    proto: Vec<f64>,
}

impl Image {
    fn new(feat: Vec<f64>, c: usize, p: usize, classes: &[Option<usize>]) -> Self {
        // Only the classes present get a slot: `num_classes` may be large and most classes absent.
        let mut slots: HashMap<usize, usize> = HashMap::new();
        let slot: Vec<Option<usize>> = classes
            .iter()
            .map(|k| {
                k.map(|k| {
                    let next = slots.len();
                    *slots.entry(k).or_insert(next)
                })
            })
            .collect();
        let mut count = vec![0.0; slots.len()];
        let mut proto = vec![0.0; slots.len() * c];
        for (pix, s) in slot.iter().enumerate() {
            if let Some(s) = *s {
                count[s] += 1.0;
                for ch in 0..c {
                    proto[s * c + ch] += feat[ch * p + pix];
                }
            }
        }
        let denom: Vec<f64> = count.iter().map(|n| n + COUNT_EPS).collect();
        for (s, d) in denom.iter().enumerate() {
            for v in &mut proto[s * c..(s + 1) * c] {
                *v /= d;
            }
        }
        Image { c, p, feat, slot, denom, proto }
    }

    fn feature(&self, pix: usize) -> Vec<f64> {
        (0..self.c).map(|ch| self.feat[ch * self.p + pix]).collect()
    }

    /// The prototype pixel `pix` is compared with: its class's, or its own feature where it is ignored.
    fn partner(&self, pix: usize) -> Vec<f64> {
        match self.slot[pix] {
            Some(s) => self.proto[s * self.c..(s + 1) * self.c].to_vec(),
            None => self.feature(pix),
        }
    }

    fn cosines(&self) -> Vec<f64> {
        (0..self.p).map(|pix| cosine(&self.feature(pix), &self.partner(pix)).0).collect()
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// PyTorch's `cosine_similarity(a, b)`: `a . b / (max(|a|, eps) * max(|b|, eps))`; also the two norms.
fn cosine(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let (na, nb) = (norm(a), norm(b));
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    (dot / (na.max(COS_EPS) * nb.max(COS_EPS)), na, nb)
}

/// d cos / d a of [`cosine`], as PyTorch's autograd computes it: the clamp is applied without recording, so
/// the norm's own derivative `a / |a|` (0 at `a = 0`) is used even where the clamp is active.
fn dcos_da(a: &[f64], b: &[f64], cos: f64, na: f64, nb: f64) -> Vec<f64> {
    let (ca, cb) = (na.max(COS_EPS), nb.max(COS_EPS));
    let radial = if na > 0.0 { cos / (ca * na) } else { 0.0 };
    a.iter().zip(b).map(|(x, y)| y / (ca * cb) - radial * x).collect()
}

/// The class of each pixel of the `H x W` grid, per image: the nearest-resized label if it is in
/// `[0, num_classes)`, else `None`.
fn pixel_classes(labels: ArrayView3<'_, i64>, shapes: &IfvdShapes, num_classes: usize) -> Vec<Vec<Option<usize>>> {
    let s = &shapes.student;
    (0..s.n)
        .map(|n| {
            let mut out = Vec::with_capacity(s.plane());
            for h in 0..s.h {
                let hs = nearest_source(h, shapes.hl, s.h);
                for w in 0..s.w {
                    let v = labels[[n, hs, nearest_source(w, shapes.wl, s.w)]];
                    out.push(usize::try_from(v).ok().filter(|&k| k < num_classes));
                }
            }
            out
        })
        .collect()
}

fn image<T: HostFloat>(x: &ArrayView4<'_, T>, n: usize, classes: &[Option<usize>]) -> Image {
    let (c, h, w) = (x.shape()[1], x.shape()[2], x.shape()[3]);
    let feat: Vec<f64> = x.index_axis(Axis(0), n).iter().map(|v| v.to_f64()).collect();
    Image::new(feat, c, h * w, classes)
}

crate::cpu::reference_config! {
    /// IFVD on the CPU.
    pub struct IfvdCpu { config: IfvdConfig }
}

impl IfvdCpu {
    /// The loss and the cosine maps, no gradient. `student` `[N, Cs, H, W]`, `teacher` `[N, Ct, H, W]`,
    /// `labels` `[N, Hl, Wl]` (any resolution; resized by `nearest`).
    pub fn forward<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        labels: ArrayView3<'_, i64>,
    ) -> Result<IfvdCpuOutput> {
        self.compute(student, teacher, labels, 1.0, false)
    }

    /// Loss, cosine maps and d loss / d student (directly and through the student's prototypes).
    pub fn forward_backward<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        labels: ArrayView3<'_, i64>,
    ) -> Result<IfvdCpuOutput> {
        self.compute(student, teacher, labels, 1.0, true)
    }

    /// The gradient of [`Self::forward_backward`] times `upstream` (d total / d loss); the loss is filled too.
    pub fn backward<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        labels: ArrayView3<'_, i64>,
        upstream: f64,
    ) -> Result<IfvdCpuOutput> {
        self.compute(student, teacher, labels, upstream, true)
    }

    fn compute<T: HostFloat>(
        &self,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
        labels: ArrayView3<'_, i64>,
        upstream: f64,
        want_grad: bool,
    ) -> Result<IfvdCpuOutput> {
        let shapes = check_shapes(student.shape(), teacher.shape(), labels.shape())?;
        let s = shapes.student;
        let classes = pixel_classes(labels, &shapes, self.config.num_classes);
        let scale = self.config.loss_scale(shapes.pixels());
        let mut cos_student = Array3::<f64>::zeros((s.n, s.h, s.w));
        let mut cos_teacher = Array3::<f64>::zeros((s.n, s.h, s.w));
        let mut grad = Array4::<f64>::zeros(if want_grad { s.dims() } else { [0; 4] });
        let mut sum_sq = 0.0;
        for (n, classes) in classes.iter().enumerate() {
            let img_s = image(&student, n, classes);
            let cs = img_s.cosines();
            let ct = image(&teacher, n, classes).cosines();
            for pix in 0..s.plane() {
                cos_student[[n, pix / s.w, pix % s.w]] = cs[pix];
                cos_teacher[[n, pix / s.w, pix % s.w]] = ct[pix];
                sum_sq += (cs[pix] - ct[pix]).powi(2);
            }
            if want_grad {
                let g = image_grad(&img_s, &cs, &ct, upstream * 2.0 * scale);
                for ch in 0..s.c {
                    for pix in 0..s.plane() {
                        grad[[n, ch, pix / s.w, pix % s.w]] = g[ch * s.plane() + pix];
                    }
                }
            }
        }
        Ok(IfvdCpuOutput { loss: scale * sum_sq, grad_student: grad, cos_student, cos_teacher })
    }
}

/// d loss / d features of one student image, `[C, P]`, with `gscale * (cos_S - cos_T)` the loss's derivative
/// in each cosine: the direct term of each pixel, then each class's prototype gradient spread over its pixels
/// (`d c_k / d F_p = 1 / (count_k + 1e-6)` for every pixel `p` of class `k`).
fn image_grad(img: &Image, cs: &[f64], ct: &[f64], gscale: f64) -> Vec<f64> {
    let (c, p) = (img.c, img.p);
    let mut grad = vec![0.0; c * p];
    let mut grad_proto = vec![0.0; img.proto.len()];
    for pix in 0..p {
        let g = gscale * (cs[pix] - ct[pix]);
        let (f, q) = (img.feature(pix), img.partner(pix));
        let (cos, nf, nq) = cosine(&f, &q);
        let df = dcos_da(&f, &q, cos, nf, nq);
        let dq = dcos_da(&q, &f, cos, nq, nf);
        for ch in 0..c {
            grad[ch * p + pix] += g * df[ch];
        }
        match img.slot[pix] {
            Some(s) => {
                for ch in 0..c {
                    grad_proto[s * c + ch] += g * dq[ch];
                }
            }
            // An ignored pixel is its own prototype: both arguments of the cosine are its feature.
            None => {
                for ch in 0..c {
                    grad[ch * p + pix] += g * dq[ch];
                }
            }
        }
    }
    for pix in 0..p {
        if let Some(s) = img.slot[pix] {
            for ch in 0..c {
                grad[ch * p + pix] += grad_proto[s * c + ch] / img.denom[s];
            }
        }
    }
    grad
}
