//! SemCKD's entry points: `kd_semckd_cuda` (device addresses, the caller's stream) and `kd_semckd_cpu`
//! (host pointers, the f64 reference). The regressors stay with the caller: their outputs `proj[i][j]`
//! (`[B, Ct_j, h, h]`, `h = min(Hs_i, Ht_j)`) are inputs, and their gradients outputs. Every list is flat:
//! maps in layer order, pairs at `i * T + j`, MLP parameters four per layer (`linear1.weight [2d, B]`,
//! `linear1.bias [2d]`, `linear2.weight [d, 2d]`, `linear2.bias [d]`, f32).

use std::ffi::c_void;

use kd::ndarray::{Array4, ArrayView1, ArrayView2, ArrayView4};
use kd::semckd::{EmbedWeights, Semckd, SemckdConfig, SemckdCpu, SemckdCpuInputs, SemckdLayers, SemckdRawBuffers};
use kd::shape::Nchw;
use kd::GradOptions;

use crate::context::{launch, KdContext};
use crate::cpu::{self, Element, PerElement};
use crate::entry;
use crate::{
    guard, read_params, read_shape, Failure, KdDtype, KdGradOptions, KdStatus, KD_ERR_NULL_POINTER, KD_ERR_PARAMETER,
};

/// SemCKD (docs/losses.md §4) without the regressors: loss = loss_weight * sum(alpha * mse) / (B * S).
/// Default loss_weight 400 (CIFAR-100; 50 on ImageNet), eps 0 (the official normalisation, no epsilon),
/// embed_dim 0 (the official d = B / 4).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KdSemckdConfig {
    /// `w` (`beta`); finite.
    pub loss_weight: f64,
    /// The L2 normalisation's epsilon; 0 for none (the official `x / ||x||`).
    pub eps: f64,
    /// The embedding width `d`; 0 for the official `floor(B / 4)`.
    pub embed_dim: i64,
}

abi_config!(KdSemckdConfig => Semckd, |params, _teacher_grad| {
    Ok(SemckdConfig { loss_weight: params.loss_weight, eps: (params.eps != 0.0).then_some(params.eps) })
});

/// Reads `count` rank-4 shapes (`count * 4` values).
///
/// # Safety
/// `shapes` is null or points to `count * 4` readable `i64`s.
unsafe fn read_shapes(shapes: *const i64, count: usize) -> Result<Vec<Vec<usize>>, Failure> {
    let flat = unsafe { read_shape(shapes, count.saturating_mul(4))? };
    Ok(flat.chunks(4).map(<[usize]>::to_vec).collect())
}

fn layers(params: KdSemckdConfig, student: &[Vec<usize>], teacher: &[Vec<usize>]) -> Result<SemckdLayers, Failure> {
    let s: Vec<&[usize]> = student.iter().map(Vec::as_slice).collect();
    let t: Vec<&[usize]> = teacher.iter().map(Vec::as_slice).collect();
    let mut layers = SemckdLayers::from_shapes(&s, &t).or_else(|e| {
        // `from_shapes` insists on the official d >= 1; an explicit d is checked below instead.
        if params.embed_dim > 0 && matches!(e, kd::KdError::InvalidParameter { .. }) {
            let batch = s.first().and_then(|x| x.first()).copied().unwrap_or(0);
            let to3 = |v: &[&[usize]]| v.iter().map(|x| [x[1], x[2], x[3]]).collect::<Vec<_>>();
            Ok(SemckdLayers { batch, embed_dim: 0, student: to3(&s), teacher: to3(&t) })
        } else {
            Err(e)
        }
    })?;
    if params.embed_dim != 0 {
        layers.embed_dim = usize::try_from(params.embed_dim).map_err(|_| {
            Failure::new(
                KD_ERR_PARAMETER,
                format!(
                    "parameter `embed_dim` = {} is invalid: it must be >= 1 (or 0 for floor(B / 4))",
                    params.embed_dim
                ),
            )
        })?;
    }
    layers.validate()?;
    Ok(layers)
}

/// The layers' shapes (`count` rank-4 shapes a list) checked against the parameter block's `embed_dim`.
///
/// # Safety
/// `params` is null or readable; each list is null or holds `count * 4` readable `i64`s.
unsafe fn read_layers(
    params: *const KdSemckdConfig, [student, teacher]: [(*const i64, usize); 2],
) -> Result<SemckdLayers, Failure> {
    // SAFETY: forwarded from the caller.
    let params = unsafe { read_params(params, "params")? };
    let (s, t) = unsafe { (read_shapes(student.0, student.1)?, read_shapes(teacher.0, teacher.1)?) };
    layers(params, &s, &t)
}

/// `n` addresses, or `None` for a null pointer.
///
/// # Safety
/// `at` is null or points to `n` readable `u64`s.
unsafe fn addresses(at: *const u64, n: usize) -> Option<Vec<u64>> {
    (!at.is_null()).then(|| unsafe { std::slice::from_raw_parts(at, n) }.to_vec())
}

fn quads(flat: Vec<u64>) -> Vec<[u64; 4]> {
    flat.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

/// SemCKD on the GPU, queued on `stream`. `student_shapes` / `teacher_shapes`: S and T rank-4 shapes (4
/// values each, S and T at most 8). Address lists: `student` S, `teacher` T, `proj` S*T (the regressor
/// outputs [B, Ct_j, h, h], h = min(Hs_i, Ht_j), pair (i, j) at i*T + j), `query` 4*S and `key` 4*T (each
/// MLP's linear1.weight [2d, B], linear1.bias [2d], linear2.weight [d, 2d], linear2.bias [d], f32).
/// `attention` ([B, S, T] f32) where non-zero. With `grad_student` != NULL, the gradient lists (same
/// lengths: the maps' through the Gram/attention path, the regressor outputs', the MLPs' in f32) must all
/// be given.
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble); the address lists hold S, T, S*T, 4*S and 4*T entries (the gradient lists likewise, or
/// are all null), every address device memory of the context's device sized for its shape.
#[no_mangle]
pub unsafe extern "C" fn kd_semckd_cuda(
    ctx: *mut KdContext, params: *const KdSemckdConfig, num_student: usize, student_shapes: *const i64,
    num_teacher: usize, teacher_shapes: *const i64, dtype: KdDtype, student: *const u64, teacher: *const u64,
    proj: *const u64, query: *const u64, key: *const u64, loss: u64, attention: u64, grad_student: *const u64,
    grad_proj: *const u64, grad_query: *const u64, grad_key: *const u64, upstream: u64, options: KdGradOptions,
    stream: *mut c_void,
) -> KdStatus {
    guard(|| {
        // SAFETY: forwarded from the caller (every list read below has the length the header states).
        let layers = unsafe { read_layers(params, [(student_shapes, num_student), (teacher_shapes, num_teacher)])? };
        let call = unsafe { entry::device(params, dtype, options, false)? };
        let (sn, tn) = (layers.students(), layers.teachers());
        let missing = |what: &str| Failure::new(KD_ERR_NULL_POINTER, format!("{what}: a null address list"));
        let buffers = unsafe {
            SemckdRawBuffers {
                student: addresses(student, sn).ok_or_else(|| missing("student"))?,
                teacher: addresses(teacher, tn).ok_or_else(|| missing("teacher"))?,
                proj: addresses(proj, sn * tn).ok_or_else(|| missing("proj"))?,
                query: quads(addresses(query, 4 * sn).ok_or_else(|| missing("query"))?),
                key: quads(addresses(key, 4 * tn).ok_or_else(|| missing("key"))?),
                loss,
                attention,
                grad_student: addresses(grad_student, sn).unwrap_or_default(),
                grad_proj: addresses(grad_proj, sn * tn).unwrap_or_default(),
                grad_query: quads(addresses(grad_query, 4 * sn).unwrap_or_default()),
                grad_key: quads(addresses(grad_key, 4 * tn).unwrap_or_default()),
                upstream,
            }
        };
        // SAFETY: forwarded from the caller.
        unsafe { launch::<Semckd>(ctx, &call.config, &layers, call.dtype, &buffers, call.options, stream) }
    })
}

struct CpuCall {
    semckd: SemckdCpu,
    layers: SemckdLayers,
    student: Vec<*const c_void>,
    teacher: Vec<*const c_void>,
    proj: Vec<*const c_void>,
    query: Vec<*const f32>,
    key: Vec<*const f32>,
    loss: *mut f64,
    attention: *mut f64,
    grad_student: Vec<*mut c_void>,
    grad_proj: Vec<*mut c_void>,
    grad_query: Vec<*mut f64>,
    grad_key: Vec<*mut f64>,
    options: GradOptions,
}

/// # Safety
/// `at` holds four f32 arrays of the MLP's shapes for `layers`.
unsafe fn embed<'a>(layers: &SemckdLayers, at: &[*const f32]) -> EmbedWeights<'a> {
    let (b, d) = (layers.batch, layers.embed_dim);
    // SAFETY: forwarded from the caller.
    unsafe {
        EmbedWeights {
            linear1_weight: ArrayView2::from_shape_ptr((2 * d, b), at[0]),
            linear1_bias: ArrayView1::from_shape_ptr(2 * d, at[1]),
            linear2_weight: ArrayView2::from_shape_ptr((d, 2 * d), at[2]),
            linear2_bias: ArrayView1::from_shape_ptr(d, at[3]),
        }
    }
}

impl PerElement for CpuCall {
    fn run<T: Element>(self) -> crate::Outcome {
        let l = &self.layers;
        let (sn, tn) = (l.students(), l.teachers());
        let view = |what: &str, at: *const c_void, dims: [usize; 4]| -> Result<ArrayView4<'_, T>, Failure> {
            let shape = Nchw::from_dims("semckd map", &dims)?;
            // SAFETY: the entry point's contract: host tensors of these shapes in this dtype.
            unsafe { cpu::view::<T>(what, at, &shape) }
        };
        let inputs = SemckdCpuInputs {
            student: (0..sn).map(|i| view("student", self.student[i], l.student_shape(i))).collect::<Result<_, _>>()?,
            teacher: (0..tn).map(|j| view("teacher", self.teacher[j], l.teacher_shape(j))).collect::<Result<_, _>>()?,
            proj: (0..sn)
                .map(|i| (0..tn).map(|j| view("proj", self.proj[i * tn + j], l.pair_shape(i, j))).collect())
                .collect::<Result<_, _>>()?,
            // SAFETY: the entry point's contract: four f32 arrays per layer, of the MLP's shapes.
            query: (0..sn).map(|i| unsafe { embed(l, &self.query[4 * i..4 * i + 4]) }).collect(),
            key: (0..tn).map(|j| unsafe { embed(l, &self.key[4 * j..4 * j + 4]) }).collect(),
        };
        let want_grad = !self.grad_student.is_empty();
        let out = if want_grad { self.semckd.forward_backward(&inputs)? } else { self.semckd.forward(&inputs)? };
        // SAFETY: the entry point's contract: writable outputs of these shapes (null for an absent one).
        unsafe {
            if !self.loss.is_null() {
                *self.loss = out.loss;
            }
            if !self.attention.is_null() {
                cpu::store_f64(self.attention, out.attention.iter(), GradOptions::OVERWRITE);
            }
            if want_grad {
                let store4 = |at: *mut c_void, g: &Array4<f64>| cpu::store::<T>(at, g, self.options);
                for (i, g) in out.grad_student.iter().enumerate() {
                    store4(self.grad_student[i], g);
                }
                for (i, row) in out.grad_proj.iter().enumerate() {
                    for (j, g) in row.iter().enumerate() {
                        store4(self.grad_proj[i * tn + j], g);
                    }
                }
                for (grads, at) in [(&out.grad_query, &self.grad_query), (&out.grad_key, &self.grad_key)] {
                    for (k, g) in grads.iter().enumerate() {
                        cpu::store_f64(at[4 * k], g.linear1_weight.iter(), self.options);
                        cpu::store_f64(at[4 * k + 1], g.linear1_bias.iter(), self.options);
                        cpu::store_f64(at[4 * k + 2], g.linear2_weight.iter(), self.options);
                        cpu::store_f64(at[4 * k + 3], g.linear2_bias.iter(), self.options);
                    }
                }
            }
        }
        Ok(())
    }
}

/// A gradient list: required with the gradients (`want_grad`), ignored without.
fn gradient_list<P>(want_grad: bool, list: Result<Option<Vec<P>>, Failure>, what: &str) -> Result<Vec<P>, Failure> {
    match (want_grad, list?) {
        (true, Some(v)) => Ok(v),
        (true, None) => Err(Failure::new(
            crate::KD_ERR_OUTPUT,
            format!("{what}: gradients come together: give every gradient list, or none"),
        )),
        (false, _) => Ok(Vec::new()),
    }
}

/// A required pointer list.
fn need<P>(list: Option<Vec<P>>, what: &str) -> Result<Vec<P>, Failure> {
    list.ok_or_else(|| Failure::new(KD_ERR_NULL_POINTER, format!("{what}: a null pointer list")))
}

/// `n` pointers, or `None` for a null list; a null entry is an error.
///
/// # Safety
/// `at` is null or points to `n` readable pointers.
unsafe fn pointers<P: Copy>(
    at: *const P, n: usize, what: &str, is_null: fn(P) -> bool,
) -> Result<Option<Vec<P>>, Failure> {
    if at.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded from the caller.
    let list = unsafe { std::slice::from_raw_parts(at, n) }.to_vec();
    if list.iter().any(|&p| is_null(p)) {
        return Err(Failure::new(KD_ERR_NULL_POINTER, format!("{what}: a null pointer in the list")));
    }
    Ok(Some(list))
}

/// SemCKD on the CPU reference (host pointers; lists as in `kd_semckd_cuda`): the loss, the attention
/// (`[B, S, T]` f64) where not null, and with `grad_student` not null every gradient: the maps' and the
/// regressor outputs' in `dtype`, the MLPs' in f64.
///
/// # Safety
/// As `kd_semckd_cuda`, with host pointers: every list holds its count of valid pointers (or the gradient
/// lists are all null), each to a contiguous array of its shape.
#[no_mangle]
pub unsafe extern "C" fn kd_semckd_cpu(
    params: *const KdSemckdConfig, num_student: usize, student_shapes: *const i64, num_teacher: usize,
    teacher_shapes: *const i64, dtype: KdDtype, student: *const *const c_void, teacher: *const *const c_void,
    proj: *const *const c_void, query: *const *const f32, key: *const *const f32, loss: *mut f64, attention: *mut f64,
    grad_student: *const *mut c_void, grad_proj: *const *mut c_void, grad_query: *const *mut f64,
    grad_key: *const *mut f64, options: KdGradOptions,
) -> KdStatus {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let layers = unsafe { read_layers(params, [(student_shapes, num_student), (teacher_shapes, num_teacher)])? };
        let prelude = unsafe { entry::host(params, dtype, options, false)? };
        let semckd = SemckdCpu::new(prelude.config)?;
        let (sn, tn) = (layers.students(), layers.teachers());
        // SAFETY: forwarded from the caller.
        let call = unsafe {
            let grad_student = pointers(grad_student, sn, "grad_student", <*mut c_void>::is_null)?;
            let want_grad = grad_student.is_some();
            CpuCall {
                student: need(pointers(student, sn, "student", <*const c_void>::is_null)?, "student")?,
                teacher: need(pointers(teacher, tn, "teacher", <*const c_void>::is_null)?, "teacher")?,
                proj: need(pointers(proj, sn * tn, "proj", <*const c_void>::is_null)?, "proj")?,
                query: need(pointers(query, 4 * sn, "query", <*const f32>::is_null)?, "query")?,
                key: need(pointers(key, 4 * tn, "key", <*const f32>::is_null)?, "key")?,
                loss,
                attention,
                grad_proj: gradient_list(
                    want_grad,
                    pointers(grad_proj, sn * tn, "grad_proj", <*mut c_void>::is_null),
                    "grad_proj",
                )?,
                grad_query: gradient_list(
                    want_grad,
                    pointers(grad_query, 4 * sn, "grad_query", <*mut f64>::is_null),
                    "grad_query",
                )?,
                grad_key: gradient_list(
                    want_grad,
                    pointers(grad_key, 4 * tn, "grad_key", <*mut f64>::is_null),
                    "grad_key",
                )?,
                grad_student: grad_student.unwrap_or_default(),
                semckd,
                layers,
                options: prelude.options,
            }
        };
        cpu::dispatch(prelude.dtype, call)
    })
}
