//! Random SemCKD layouts shared by the SemCKD tests.
#![allow(dead_code)]

use kd_kernels::semckd::{EmbedWeights, SemckdCpuInputs, SemckdLayers};
use kd_kernels::KdFloat;
use ndarray::{ArrayView1, ArrayView2, ArrayView4};

use crate::common::{quantize, SplitMix64};

/// One random case: data quantized to multiples of 2^-10 (exact in every dtype's range used).
pub struct Case<T> {
    pub layers: SemckdLayers,
    pub student: Vec<Vec<T>>,
    pub teacher: Vec<Vec<T>>,
    /// Pair (i, j) at i * T + j.
    pub proj: Vec<Vec<T>>,
    pub query: Vec<[Vec<f32>; 4]>,
    pub key: Vec<[Vec<f32>; 4]>,
}

fn values<T: KdFloat>(rng: &mut SplitMix64, n: usize, scale: f64) -> Vec<T> {
    (0..n).map(|_| T::from_f64(quantize(scale * (2.0 * rng.uniform() - 1.0)))).collect()
}

impl<T: KdFloat> Case<T> {
    /// `student`, `teacher`: `[C, H, W]` per layer.
    pub fn new(seed: u64, batch: usize, student: &[[usize; 3]], teacher: &[[usize; 3]]) -> Self {
        let mut rng = SplitMix64::new(seed);
        let layers = SemckdLayers { batch, embed_dim: batch / 4, student: student.to_vec(), teacher: teacher.to_vec() };
        let s: Vec<Vec<T>> =
            (0..student.len()).map(|i| values(&mut rng, layers.student_shape(i).iter().product(), 1.0)).collect();
        let t: Vec<Vec<T>> =
            (0..teacher.len()).map(|j| values(&mut rng, layers.teacher_shape(j).iter().product(), 1.0)).collect();
        let mut proj = Vec::new();
        for i in 0..student.len() {
            for j in 0..teacher.len() {
                proj.push(values(&mut rng, layers.pair_numel(i, j), 1.0));
            }
        }
        let numels = layers.embed_numels();
        let b = batch as f64;
        let hidden = (2 * layers.embed_dim) as f64;
        let mlp = |rng: &mut SplitMix64| {
            let bounds = [1.0 / b.sqrt(), 1.0 / b.sqrt(), 1.0 / hidden.sqrt(), 1.0 / hidden.sqrt()];
            [0, 1, 2, 3].map(|k| values::<f32>(rng, numels[k], bounds[k]))
        };
        let query = (0..student.len()).map(|_| mlp(&mut rng)).collect();
        let key = (0..teacher.len()).map(|_| mlp(&mut rng)).collect();
        Case { layers, student: s, teacher: t, proj, query, key }
    }

    pub fn cpu_inputs(&self) -> SemckdCpuInputs<'_, T> {
        let l = &self.layers;
        let tn = l.teachers();
        let v4 = view4::<T>;
        let mlp = |m| weights(l, m);
        SemckdCpuInputs {
            student: (0..l.students()).map(|i| v4(l.student_shape(i), &self.student[i])).collect(),
            teacher: (0..tn).map(|j| v4(l.teacher_shape(j), &self.teacher[j])).collect(),
            proj: (0..l.students())
                .map(|i| (0..tn).map(|j| v4(l.pair_shape(i, j), &self.proj[i * tn + j])).collect())
                .collect(),
            query: self.query.iter().map(mlp).collect(),
            key: self.key.iter().map(mlp).collect(),
        }
    }
}

fn view4<T>(shape: [usize; 4], data: &[T]) -> ArrayView4<'_, T> {
    ArrayView4::from_shape(shape, data).unwrap()
}

fn weights<'a>(l: &SemckdLayers, m: &'a [Vec<f32>; 4]) -> EmbedWeights<'a> {
    let [w1, b1, w2, b2] = l.embed_shapes();
    EmbedWeights {
        linear1_weight: ArrayView2::from_shape((w1[0], w1[1]), &m[0]).unwrap(),
        linear1_bias: ArrayView1::from_shape(b1[0], &m[1]).unwrap(),
        linear2_weight: ArrayView2::from_shape((w2[0], w2[1]), &m[2]).unwrap(),
        linear2_bias: ArrayView1::from_shape(b2[0], &m[3]).unwrap(),
    }
}
