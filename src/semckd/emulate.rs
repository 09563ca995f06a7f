//! SemCKD through the emulated kernels (feature `emulator`): the driver the CUDA wrappers use, with host
//! buffers, [`EmulatedGpu`] facts and the kernels' own source compiled for the host.

use super::driver::{self, SemckdRawBuffers};
use super::{Semckd, SemckdConfig, SemckdLayers};
use crate::dtype::KdFloat;
use crate::emulator::{self, EmulatedGpu, EmulatedLauncher, HostBuffers};
use crate::error::{KdError, Result};
use crate::family::RawCall;
use crate::grad::GradOptions;

/// Host inputs of one emulated call (contiguous NCHW slices; MLP parameters in f32, in the order
/// `linear1.weight, linear1.bias, linear2.weight, linear2.bias`).
#[derive(Debug, Clone)]
pub struct SemckdHostInputs<'a, T> {
    /// `S` student maps.
    pub student: Vec<&'a [T]>,
    /// `T` teacher maps.
    pub teacher: Vec<&'a [T]>,
    /// `S * T` regressor outputs, pair (i, j) at `i * T + j`.
    pub proj: Vec<&'a [T]>,
    /// `S` query MLPs.
    pub query: Vec<[&'a [f32]; 4]>,
    /// `T` key MLPs.
    pub key: Vec<[&'a [f32]; 4]>,
}

/// What an emulated call wrote, as the GPU would have. Gradients are empty without `grads`.
#[derive(Debug, Clone, PartialEq)]
pub struct SemckdHostOutputs<T> {
    /// The loss (NaN in `backward` mode, which writes none).
    pub loss: f32,
    /// `[B, S, T]`.
    pub attention: Vec<f32>,
    /// `S` student-map gradients.
    pub grad_student: Vec<Vec<T>>,
    /// `S * T` regressor-output gradients.
    pub grad_proj: Vec<Vec<T>>,
    /// `S` query MLP gradients.
    pub grad_query: Vec<[Vec<f32>; 4]>,
    /// `T` key MLP gradients.
    pub grad_key: Vec<[Vec<f32>; 4]>,
}

fn check_len<T>(what: &'static str, v: &[T], needed: usize) -> Result<()> {
    if v.len() < needed {
        return Err(KdError::BufferTooSmall { what, needed, len: v.len() });
    }
    Ok(())
}

/// Runs one call. With `grads`, every gradient is written (starting from `initial`'s gradients when given,
/// for accumulation; NaN sentinels otherwise); `upstream` (when `Some`) scales them as `backward` does and
/// suppresses the loss.
#[allow(clippy::too_many_arguments)]
pub fn semckd<T: KdFloat>(
    config: &SemckdConfig,
    layers: &SemckdLayers,
    inputs: &SemckdHostInputs<'_, T>,
    grads: bool,
    upstream: Option<f32>,
    options: GradOptions,
    initial: Option<&SemckdHostOutputs<T>>,
    gpu: EmulatedGpu,
) -> Result<SemckdHostOutputs<T>> {
    layers.validate()?;
    let (b, s, t) = (layers.batch, layers.students(), layers.teachers());
    if inputs.student.len() != s || inputs.teacher.len() != t || inputs.proj.len() != s * t {
        return Err(KdError::ShapeMismatch {
            what: "input counts (student, teacher, proj)",
            expected: vec![s, t, s * t],
            got: vec![inputs.student.len(), inputs.teacher.len(), inputs.proj.len()],
        });
    }
    for i in 0..s {
        check_len("student", inputs.student[i], layers.student_shape(i).iter().product())?;
        for j in 0..t {
            check_len("proj", inputs.proj[i * t + j], layers.pair_numel(i, j))?;
        }
    }
    for j in 0..t {
        check_len("teacher", inputs.teacher[j], layers.teacher_shape(j).iter().product())?;
    }
    let numels = layers.embed_numels();
    for m in inputs.query.iter().chain(&inputs.key) {
        for k in 0..4 {
            check_len("MLP parameter", m[k], numels[k])?;
        }
    }
    let nan_t = |n: usize| vec![T::from_f32(f32::NAN); n];
    let nan_mlp = || [0, 1, 2, 3].map(|k| vec![f32::NAN; numels[k]]);
    let mut out = SemckdHostOutputs {
        loss: f32::NAN,
        attention: vec![f32::NAN; b * s * t],
        grad_student: Vec::new(),
        grad_proj: Vec::new(),
        grad_query: Vec::new(),
        grad_key: Vec::new(),
    };
    if grads {
        match initial {
            Some(init) => {
                out.grad_student = init.grad_student.clone();
                out.grad_proj = init.grad_proj.clone();
                out.grad_query = init.grad_query.clone();
                out.grad_key = init.grad_key.clone();
            }
            None => {
                out.grad_student = (0..s).map(|i| nan_t(layers.student_shape(i).iter().product())).collect();
                out.grad_proj = (0..s * t).map(|p| nan_t(layers.pair_numel(p / t, p % t))).collect();
                out.grad_query = (0..s).map(|_| nan_mlp()).collect();
                out.grad_key = (0..t).map(|_| nan_mlp()).collect();
            }
        }
    }
    let up = upstream.unwrap_or(1.0);
    let mlp_addr = |m: &[&[f32]; 4]| m.map(|x| x.as_ptr() as u64);
    let mut_mlp = |m: &mut [Vec<f32>; 4]| [0, 1, 2, 3].map(|k| m[k].as_mut_ptr() as u64);
    let buffers = SemckdRawBuffers {
        student: inputs.student.iter().map(|x| x.as_ptr() as u64).collect(),
        teacher: inputs.teacher.iter().map(|x| x.as_ptr() as u64).collect(),
        proj: inputs.proj.iter().map(|x| x.as_ptr() as u64).collect(),
        query: inputs.query.iter().map(mlp_addr).collect(),
        key: inputs.key.iter().map(mlp_addr).collect(),
        loss: if upstream.is_some() { 0 } else { &mut out.loss as *mut f32 as u64 },
        attention: out.attention.as_mut_ptr() as u64,
        grad_student: out.grad_student.iter_mut().map(|g| g.as_mut_ptr() as u64).collect(),
        grad_proj: out.grad_proj.iter_mut().map(|g| g.as_mut_ptr() as u64).collect(),
        grad_query: out.grad_query.iter_mut().map(mut_mlp).collect(),
        grad_key: out.grad_key.iter_mut().map(mut_mlp).collect(),
        upstream: if upstream.is_some() { &up as *const f32 as u64 } else { 0 },
    };
    let mut registered = HostBuffers::new()
        .output("loss", std::slice::from_ref(&out.loss))
        .output("attention", &out.attention)
        .input("upstream", std::slice::from_ref(&up));
    const MLP: [&str; 4] = ["w1", "b1", "w2", "b2"];
    for (side, features) in [("student", &inputs.student), ("teacher", &inputs.teacher), ("proj", &inputs.proj)] {
        for (i, x) in features.iter().enumerate() {
            registered = registered.input(&format!("{side}[{i}]"), x);
        }
    }
    for (side, mlps) in [("query", &inputs.query), ("key", &inputs.key)] {
        for (i, m) in mlps.iter().enumerate() {
            for (k, x) in m.iter().enumerate() {
                registered = registered.input(&format!("{side}[{i}].{}", MLP[k]), x);
            }
        }
    }
    for (side, grads) in [("grad_student", &out.grad_student), ("grad_proj", &out.grad_proj)] {
        for (i, g) in grads.iter().enumerate() {
            registered = registered.output(&format!("{side}[{i}]"), g);
        }
    }
    for (side, mlps) in [("grad_query", &out.grad_query), ("grad_key", &out.grad_key)] {
        for (i, m) in mlps.iter().enumerate() {
            for (k, g) in m.iter().enumerate() {
                registered = registered.output(&format!("{side}[{i}].{}", MLP[k]), g);
            }
        }
    }
    let call = RawCall::<Semckd> { config, path: (), shape: layers, dtype: T::DTYPE, buffers: &buffers, options };
    // SAFETY: every address is a live host buffer of the size the layout needs (checked above).
    unsafe { emulator::run(call, gpu)? };
    Ok(out)
}

/// Adaptive average pooling through the emulated kernel: `input` of NCHW `shape` to `out_hw`.
pub fn adaptive_avg_pool<T: KdFloat>(shape: &[usize], out_hw: [usize; 2], input: &[T]) -> Result<Vec<T>> {
    let n: usize = shape.iter().product();
    check_len("pool input", input, n)?;
    let planes = shape.first().copied().unwrap_or(0) * shape.get(1).copied().unwrap_or(0);
    let mut out = vec![T::from_f32(f32::NAN); planes * out_hw[0] * out_hw[1]];
    let _registered = HostBuffers::new().input("input", &input[..n]).output("output", &out);
    // SAFETY: host buffers of the sizes the shapes need.
    unsafe {
        driver::run_pool(
            T::DTYPE,
            shape,
            out_hw,
            input.as_ptr() as u64,
            out.as_mut_ptr() as u64,
            None,
            &mut EmulatedLauncher,
        )?
    };
    Ok(out)
}

/// The pooling backward through the emulated kernel: the gradient of an input of NCHW `input_shape`, starting
/// from `initial` (for accumulation) or NaN sentinels.
pub fn adaptive_avg_pool_backward<T: KdFloat>(
    input_shape: &[usize],
    out_hw: [usize; 2],
    grad_output: &[T],
    options: GradOptions,
    initial: Option<&[T]>,
) -> Result<Vec<T>> {
    let n: usize = input_shape.iter().product();
    let planes = input_shape.first().copied().unwrap_or(0) * input_shape.get(1).copied().unwrap_or(0);
    check_len("pool grad_output", grad_output, planes * out_hw[0] * out_hw[1])?;
    let mut grad = match initial {
        Some(v) => v.to_vec(),
        None => vec![T::from_f32(f32::NAN); n],
    };
    check_len("pool initial gradient", &grad, n)?;
    let _registered = HostBuffers::new()
        .input("grad_output", &grad_output[..planes * out_hw[0] * out_hw[1]])
        .output("grad_input", &grad);
    // SAFETY: host buffers of the sizes the shapes need.
    unsafe {
        driver::run_pool(
            T::DTYPE,
            input_shape,
            out_hw,
            grad_output.as_ptr() as u64,
            grad.as_mut_ptr() as u64,
            Some(options),
            &mut EmulatedLauncher,
        )?
    };
    Ok(grad)
}
