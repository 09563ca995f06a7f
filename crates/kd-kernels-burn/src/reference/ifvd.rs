//! IFVD's reference.

use ::burn::tensor::{Int, Tensor, TensorData};

use kd_kernels::ifvd::{nearest_source, IfvdConfig, COS_EPS, COUNT_EPS};

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
