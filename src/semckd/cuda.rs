//! SemCKD's typed call on the GPU, on its layer table ([`crate::cuda::LossCuda`] gives the rest), and the
//! adaptive pooling kernels a caller runs beside it.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::driver::{self, SemckdRawBuffers};
use super::{Semckd, SemckdLayers};
use crate::cuda::{Binder, CudaLauncher, KernelModule, LossCuda};
use crate::dtype::KdFloat;
use crate::error::{KdError, Result};
use crate::grad::GradOptions;

/// One embedding MLP's parameters on the device, f32: `linear1.weight [2d, B]`, `linear1.bias [2d]`,
/// `linear2.weight [d, 2d]`, `linear2.bias [d]`.
pub struct EmbedParams<'a> {
    /// `[2d, B]`.
    pub linear1_weight: &'a dyn DevicePtr<f32>,
    /// `[2d]`.
    pub linear1_bias: &'a dyn DevicePtr<f32>,
    /// `[d, 2d]`.
    pub linear2_weight: &'a dyn DevicePtr<f32>,
    /// `[d]`.
    pub linear2_bias: &'a dyn DevicePtr<f32>,
}

/// The gradients of one MLP's parameters (f32), same shapes as [`EmbedParams`].
pub struct EmbedParamGrads<'a> {
    /// `[2d, B]`.
    pub linear1_weight: &'a mut dyn DevicePtrMut<f32>,
    /// `[2d]`.
    pub linear1_bias: &'a mut dyn DevicePtrMut<f32>,
    /// `[d, 2d]`.
    pub linear2_weight: &'a mut dyn DevicePtrMut<f32>,
    /// `[d]`.
    pub linear2_bias: &'a mut dyn DevicePtrMut<f32>,
}

/// The inputs of one call.
pub struct SemckdInputs<'a, T> {
    /// `S` student maps `[B, Cs_i, Hs_i, Ws_i]`.
    pub student: &'a [&'a dyn DevicePtr<T>],
    /// `T` teacher maps.
    pub teacher: &'a [&'a dyn DevicePtr<T>],
    /// `S * T` regressor outputs `[B, Ct_j, h, h]`, pair (i, j) at `i * T + j`.
    pub proj: &'a [&'a dyn DevicePtr<T>],
    /// `S` query MLPs.
    pub query: &'a [EmbedParams<'a>],
    /// `T` key MLPs.
    pub key: &'a [EmbedParams<'a>],
}

/// The gradients of one call (all of them).
pub struct SemckdGrads<'a, T> {
    /// `S` student-map gradients (Gram/attention path only; add the regressor path's).
    pub student: Vec<&'a mut dyn DevicePtrMut<T>>,
    /// `S * T` regressor-output gradients.
    pub proj: Vec<&'a mut dyn DevicePtrMut<T>>,
    /// `S` query MLP gradients.
    pub query: Vec<EmbedParamGrads<'a>>,
    /// `T` key MLP gradients.
    pub key: Vec<EmbedParamGrads<'a>>,
}

fn mlp_in<'a: 's, 's>(m: &'a EmbedParams<'a>, numels: [usize; 4], binder: &mut Binder<'s>) -> Result<[u64; 4]> {
    Ok([
        binder.input("linear1.weight", m.linear1_weight, numels[0])?,
        binder.input("linear1.bias", m.linear1_bias, numels[1])?,
        binder.input("linear2.weight", m.linear2_weight, numels[2])?,
        binder.input("linear2.bias", m.linear2_bias, numels[3])?,
    ])
}

fn mlp_out<'a: 's, 's>(
    m: &'a mut EmbedParamGrads<'_>,
    numels: [usize; 4],
    binder: &mut Binder<'s>,
) -> Result<[u64; 4]> {
    Ok([
        binder.output("grad linear1.weight", Some(&mut *m.linear1_weight), numels[0])?,
        binder.output("grad linear1.bias", Some(&mut *m.linear1_bias), numels[1])?,
        binder.output("grad linear2.weight", Some(&mut *m.linear2_weight), numels[2])?,
        binder.output("grad linear2.bias", Some(&mut *m.linear2_bias), numels[3])?,
    ])
}

impl LossCuda<Semckd> {
    /// The training-step call: the loss into `loss[0]`, the attention `[B, S, T]` (f32) into `attention`
    /// when given, and every gradient of `grads` (when given; with `options`), on this loss's stream.
    pub fn forward_backward<T: KdFloat>(
        &mut self,
        layers: &SemckdLayers,
        inputs: &SemckdInputs<'_, T>,
        loss: &mut dyn DevicePtrMut<f32>,
        attention: Option<&mut dyn DevicePtrMut<f32>>,
        grads: Option<&mut SemckdGrads<'_, T>>,
        options: GradOptions,
    ) -> Result<()> {
        layers.validate()?;
        let (s, t) = (layers.students(), layers.teachers());
        if inputs.student.len() != s || inputs.teacher.len() != t || inputs.proj.len() != s * t {
            return Err(KdError::ShapeMismatch {
                what: "input counts (student, teacher, proj)",
                expected: vec![s, t, s * t],
                got: vec![inputs.student.len(), inputs.teacher.len(), inputs.proj.len()],
            });
        }
        let stream = self.stream().clone();
        let mut binder = Binder::new(&stream);
        let numels = layers.embed_numels();
        let mut buffers = SemckdRawBuffers::default();
        for (i, x) in inputs.student.iter().enumerate() {
            let n = layers.student_shape(i).iter().product();
            buffers.student.push(binder.input("student", *x, n)?);
        }
        for (j, x) in inputs.teacher.iter().enumerate() {
            let n = layers.teacher_shape(j).iter().product();
            buffers.teacher.push(binder.input("teacher", *x, n)?);
        }
        for (p, x) in inputs.proj.iter().enumerate() {
            let n = layers.pair_numel(p / t, p % t);
            buffers.proj.push(binder.input("proj", *x, n)?);
        }
        for m in inputs.query {
            buffers.query.push(mlp_in(m, numels, &mut binder)?);
        }
        for m in inputs.key {
            buffers.key.push(mlp_in(m, numels, &mut binder)?);
        }
        buffers.loss = binder.output("loss", Some(loss), 1)?;
        buffers.attention = binder.output("attention", attention, layers.batch * s * t)?;
        if let Some(g) = grads {
            if g.student.len() != s || g.proj.len() != s * t || g.query.len() != s || g.key.len() != t {
                return Err(KdError::ShapeMismatch {
                    what: "gradient counts (student, proj, query, key)",
                    expected: vec![s, s * t, s, t],
                    got: vec![g.student.len(), g.proj.len(), g.query.len(), g.key.len()],
                });
            }
            for (i, x) in g.student.iter_mut().enumerate() {
                let n = layers.student_shape(i).iter().product();
                buffers.grad_student.push(binder.output("grad student", Some(&mut **x), n)?);
            }
            for (p, x) in g.proj.iter_mut().enumerate() {
                let n = layers.pair_numel(p / t, p % t);
                buffers.grad_proj.push(binder.output("grad proj", Some(&mut **x), n)?);
            }
            for m in g.query.iter_mut() {
                buffers.grad_query.push(mlp_out(m, numels, &mut binder)?);
            }
            for m in g.key.iter_mut() {
                buffers.grad_key.push(mlp_out(m, numels, &mut binder)?);
            }
        }
        // SAFETY: every buffer was checked to live in this stream's context and to hold what the layout needs.
        unsafe { self.launch_raw(stream.cu_stream(), layers, T::DTYPE, &buffers, options)? };
        drop(binder);
        Ok(())
    }
}

/// Adaptive average pooling (PyTorch's `adaptive_avg_pool2d`, `docs/losses.md §4.3`) and its backward on the
/// GPU, for the caller's student side when `Hs_i > Ht_j` (pool before the regressor, then add the pooling
/// backward of the regressor's input gradient). One launch each; the backward gathers (no atomics).
#[derive(Debug)]
pub struct AdaptivePoolCuda {
    stream: Arc<CudaStream>,
    module: KernelModule,
}

impl AdaptivePoolCuda {
    /// Loads the pooling kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let module = KernelModule::load(&stream, "semckd", &driver::POOL_KERNELS, &[])?;
        Ok(AdaptivePoolCuda { stream, module })
    }

    /// `output [N, C, out_h, out_w] = adaptive_avg_pool2d(input [N, C, H, W], out_hw)`.
    pub fn forward<T: KdFloat>(
        &self,
        shape: &[usize],
        out_hw: [usize; 2],
        input: &dyn DevicePtr<T>,
        output: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        let n: usize = shape.iter().product();
        let out_n = shape.first().copied().unwrap_or(0) * shape.get(1).copied().unwrap_or(0) * out_hw[0] * out_hw[1];
        let stream = self.stream.clone();
        let mut binder = Binder::new(&stream);
        let i = binder.input("pool input", input, n)?;
        let o = binder.output("pool output", Some(output), out_n)?;
        let mut launcher = CudaLauncher { module: &self.module, stream: stream.cu_stream() };
        // SAFETY: both buffers were checked against the shapes and the context.
        unsafe { driver::run_pool(T::DTYPE, shape, out_hw, i, o, None, &mut launcher) }
    }

    /// `grad_input [N, C, H, W]` from `grad_output [N, C, out_h, out_w]`, with [`GradOptions`].
    pub fn backward<T: KdFloat>(
        &self,
        input_shape: &[usize],
        out_hw: [usize; 2],
        grad_output: &dyn DevicePtr<T>,
        grad_input: &mut dyn DevicePtrMut<T>,
        options: GradOptions,
    ) -> Result<()> {
        let n: usize = input_shape.iter().product();
        let out_n = input_shape.first().copied().unwrap_or(0)
            * input_shape.get(1).copied().unwrap_or(0)
            * out_hw[0]
            * out_hw[1];
        let stream = self.stream.clone();
        let mut binder = Binder::new(&stream);
        let g = binder.input("pool grad_output", grad_output, out_n)?;
        let gi = binder.output("pool grad_input", Some(grad_input), n)?;
        let mut launcher = CudaLauncher { module: &self.module, stream: stream.cu_stream() };
        // SAFETY: both buffers were checked against the shapes and the context.
        unsafe { driver::run_pool(T::DTYPE, input_shape, out_hw, g, gi, Some(options), &mut launcher) }
    }
}
