//! What the CWT tests of every harness (the CPU reference, the emulated kernels, the GPU) share: one call's
//! inputs (a student, a teacher and the MLP's parameters, drawn in one order from one seed) and the f64
//! CPU reference on them as the kernels read them. Each harness's `cwt` module declares it and uses part of it.
#![allow(dead_code)]

use kd_kernels::cwt::{CwtConfig, CwtCpu, CwtOutput, CwtShapes, MlpParams};
use kd_kernels::KdFloat;
use ndarray::{ArrayView1, ArrayView2, ArrayView4};

use crate::common::{quantize, to_dtype, SplitMix64};

/// One CWT call's inputs in f32: the student `[N, Cs, H, W]` (`dims`), the teacher `[N, Ct, H, W]` and the
/// MLP `Cs -> Ch -> Ct`, in PyTorch's layouts.
#[derive(Clone)]
pub struct CwtInputs {
    pub dims: [usize; 4],
    pub shapes: CwtShapes,
    pub student: Vec<f32>,
    pub teacher: Vec<f32>,
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

impl CwtInputs {
    /// Values ~ N(0, scale^2), passed through `round`, drawn from `seed` in the order student, teacher, `w1`,
    /// `b1`, `w2`, `b2`; `scales` gives each tensor's standard deviation in that order.
    pub fn draw(seed: u64, dims: [usize; 4], shapes: CwtShapes, scales: [f64; 6], round: fn(f64) -> f64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut v = |n: usize, scale: f64| -> Vec<f32> { (0..n).map(|_| round(rng.normal() * scale) as f32).collect() };
        let [n, _, h, w] = dims;
        let CwtShapes { cs, ch, ct } = shapes;
        CwtInputs {
            dims,
            shapes,
            student: v(n * cs * h * w, scales[0]),
            teacher: v(n * ct * h * w, scales[1]),
            w1: v(ch * cs, scales[2]),
            b1: v(ch, scales[3]),
            w2: v(ct * ch, scales[4]),
            b2: v(ct, scales[5]),
        }
    }

    /// The kernel tests' inputs: unit inputs, weights of variance 1 / fan-in (the activations stay O(1) at
    /// any channel count), biases of 0.3; quantized (see [`quantize`]) where `quantized`.
    pub fn for_kernels(seed: u64, dims: [usize; 4], shapes: CwtShapes, quantized: bool) -> Self {
        let fan_in = |c: usize| 1.0 / (c as f64).sqrt();
        let scales = [1.0, 1.0, fan_in(shapes.cs), 0.3, fan_in(shapes.ch), 0.3];
        Self::draw(seed, dims, shapes, scales, if quantized { quantize } else { |x| x })
    }

    pub fn teacher_dims(&self) -> [usize; 4] {
        [self.dims[0], self.shapes.ct, self.dims[2], self.dims[3]]
    }

    /// The MLP's parameters as the CPU reference takes them.
    pub fn params(&self) -> MlpParams<'_> {
        let CwtShapes { cs, ch, ct } = self.shapes;
        MlpParams {
            w1: ArrayView2::from_shape((ch, cs), &self.w1).unwrap(),
            b1: ArrayView1::from(&self.b1),
            w2: ArrayView2::from_shape((ct, ch), &self.w2).unwrap(),
            b2: ArrayView1::from(&self.b2),
        }
    }

    /// The CPU reference's `backward(upstream)` on the inputs rounded to `T` (what the kernels read).
    pub fn reference<T: KdFloat>(&self, config: CwtConfig, upstream: f64) -> CwtOutput {
        let s: Vec<T> = to_dtype(&self.student);
        let t: Vec<T> = to_dtype(&self.teacher);
        let sv = ArrayView4::from_shape(self.dims, &s).unwrap();
        let tv = ArrayView4::from_shape(self.teacher_dims(), &t).unwrap();
        CwtCpu::new(config).unwrap().backward(sv, tv, &self.params(), upstream).unwrap()
    }
}

/// The reference's gradients, flattened and named as the fixtures name them: the student's first, then the
/// MLP's parameters' (f32 outputs of the kernels in every dtype, computed in fp32 from exactly the stored
/// inputs, so the f32 row of the tolerance table judges them).
pub fn gradients(reference: &CwtOutput) -> [(&'static str, Vec<f64>); 5] {
    [
        ("grad.student", reference.grad_student.iter().copied().collect()),
        ("grad.w1", reference.grad_w1.iter().copied().collect()),
        ("grad.b1", reference.grad_b1.to_vec()),
        ("grad.w2", reference.grad_w2.iter().copied().collect()),
        ("grad.b2", reference.grad_b2.to_vec()),
    ]
}
