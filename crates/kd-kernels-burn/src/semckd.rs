//! SemCKD as a burn operation: [`semckd_loss`], its embedding MLPs ([`SemckdMlp`]), and how its many
//! tensors travel to the backend packed in three ([`SemckdPacking`]).

use std::ops::Range;

use ::burn::tensor::{DType, Device, Tensor};
use ::ndarray::{Ix4, IxDyn};

use super::ndarray::{contiguous, unpack, view_as, NdArrayFloat};
use super::packed::{
    addresses, check_same_device, lay_out, packed_loss, CpuCall, PackedAddresses, PackedCall, PackedCpuOutput,
    PackedInputs,
};
use super::{
    covered_backend, is_cuda, refuse_tracked_teacher, supported_dtype, PackedConfig, PackedFamilyRow, PackedLossFamily,
};
use kd_kernels::error::{KdError, Result};
use kd_kernels::semckd::{
    EmbedWeights, Semckd, SemckdConfig, SemckdCpu, SemckdCpuInputs, SemckdLayers, SemckdRawBuffers,
};

/// What SemCKD's packed call carries: the layer table and the configuration.
pub type SemckdPacked = PackedCall<SemckdLayers, SemckdConfig>;

/// Where each tensor of a SemCKD call lies in the packed 1-D tensors of its packed call (`maps`, `teacher`,
/// `params`, in that order):
/// per tensor its shape and its range of elements, each tensor flattened row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemckdPacking {
    /// `maps`: the `S` student maps, then the `S * T` regressor outputs `proj[i][j]`, row-major over `(i, j)`.
    pub maps: Vec<(Vec<usize>, Range<usize>)>,
    /// `teacher`: the `T` teacher maps.
    pub teacher: Vec<(Vec<usize>, Range<usize>)>,
    /// `params`: the `S` query MLPs then the `T` key MLPs, four parameters each (`linear1.weight [2d, B]`,
    /// `linear1.bias [2d]`, `linear2.weight [d, 2d]`, `linear2.bias [d]`).
    pub params: Vec<(Vec<usize>, Range<usize>)>,
}

impl SemckdPacking {
    /// The packing of a call with `layers`.
    pub fn new(layers: &SemckdLayers) -> Self {
        let (s, t) = (layers.students(), layers.teachers());
        let students = (0..s).map(|i| layers.student_shape(i).to_vec());
        let proj = (0..s).flat_map(|i| (0..t).map(move |j| layers.pair_shape(i, j).to_vec()));
        SemckdPacking {
            maps: lay_out(students.chain(proj)),
            teacher: lay_out((0..t).map(|j| layers.teacher_shape(j).to_vec())),
            params: lay_out((0..s + t).flat_map(|_| layers.embed_shapes())),
        }
    }
}

/// One SemCKD embedding MLP (`MLPEmbed`, `docs/losses.md` §4.2 step 2: Linear `B -> 2d`, ReLU, Linear
/// `2d -> d`, L2 normalisation), in f32 (the crate keeps learnable parameters in f32): a query MLP per
/// student layer, a key MLP per teacher layer. Mark them `require_grad` (or take them from a module) and
/// their gradients come out of `loss.backward()`.
#[derive(Debug, Clone)]
pub struct SemckdMlp {
    /// `linear1.weight`, `[2d, B]`.
    pub linear1_weight: Tensor<2>,
    /// `linear1.bias`, `[2d]`.
    pub linear1_bias: Tensor<1>,
    /// `linear2.weight`, `[d, 2d]`.
    pub linear2_weight: Tensor<2>,
    /// `linear2.bias`, `[d]`.
    pub linear2_bias: Tensor<1>,
}

impl SemckdMlp {
    /// The same parameters, each marked `require_grad` (leaves whose gradients `loss.backward()` returns).
    pub fn require_grad(self) -> Self {
        SemckdMlp {
            linear1_weight: self.linear1_weight.require_grad(),
            linear1_bias: self.linear1_bias.require_grad(),
            linear2_weight: self.linear2_weight.require_grad(),
            linear2_bias: self.linear2_bias.require_grad(),
        }
    }

    /// The four parameters flattened, in [`SemckdPacking::params`]'s order.
    fn flat(&self) -> [Tensor<1>; 4] {
        let flat2 = |t: &Tensor<2>| t.clone().reshape([t.shape().num_elements()]);
        [flat2(&self.linear1_weight), self.linear1_bias.clone(), flat2(&self.linear2_weight), self.linear2_bias.clone()]
    }

    /// Shape, dtype and device of each parameter, with its name.
    fn describe(&self) -> [(&'static str, Vec<usize>, DType, Device); 4] {
        fn describe<const D: usize>(name: &'static str, t: &Tensor<D>) -> (&'static str, Vec<usize>, DType, Device) {
            (name, t.dims().to_vec(), t.dtype(), t.device())
        }
        [
            describe("linear1.weight [2d, B]", &self.linear1_weight),
            describe("linear1.bias [2d]", &self.linear1_bias),
            describe("linear2.weight [d, 2d]", &self.linear2_weight),
            describe("linear2.bias [d]", &self.linear2_bias),
        ]
    }
}

/// SemCKD (`docs/losses.md` §4) without its regressors, which stay the caller's burn modules, as a
/// differentiable one-element tensor: `loss_weight / (B * S) * sum_{b,i,j} alpha[b, i, j] * l[b, i, j]`.
///
/// * `student`: `S` maps `[B, Cs_i, Hs_i, Ws_i]`; `teacher`: `T` maps `[B, Ct_j, Ht_j, Wt_j]` (constants:
///   a tracked teacher map is refused, pass `.detach()`);
/// * `proj[i][j]`: the output of the caller's regressor `R_ij`, `[B, Ct_j, h, h]` with
///   `h = min(Hs_i, Ht_j)` (the caller pools the student first when `Hs_i > Ht_j`);
/// * `query[i]` / `key[j]`: the embedding MLPs, `d` (officially `B / 4`) read from `linear2.bias`.
///
/// The maps and `proj` share one float dtype (f32 or f64 on NdArray); the MLPs are f32. On an autodiff
/// device the gradient reaches the student maps (the Gram / attention path; the regressor path reaches
/// them through `proj` by burn's own autograd), every `proj` and every MLP parameter. First-order
/// gradients only (the backward is the crate's, not a graph burn could differentiate again).
pub fn semckd_loss(
    student: &[Tensor<4>],
    teacher: &[Tensor<4>],
    proj: &[Vec<Tensor<4>>],
    query: &[SemckdMlp],
    key: &[SemckdMlp],
    config: &SemckdConfig,
) -> Result<Tensor<1>> {
    config.validate()?;
    let layers = check_semckd(student, teacher, proj, query, key)?;
    let flat = |t: &Tensor<4>| t.clone().reshape([t.shape().num_elements()]);
    let maps = Tensor::cat(student.iter().chain(proj.iter().flatten()).map(flat).collect(), 0);
    let teacher = Tensor::cat(teacher.iter().map(flat).collect(), 0);
    let params = Tensor::cat(query.iter().chain(key).flat_map(SemckdMlp::flat).collect(), 0);
    let inputs = PackedInputs::Three(maps.into_dispatch(), teacher.into_dispatch(), params.into_dispatch());
    Ok(packed_loss(inputs, PackedConfig::Semckd(SemckdPacked { geometry: layers, config: *config })))
}

/// Every check [`semckd_loss`] makes before anything runs.
fn check_semckd<'a>(
    student: &'a [Tensor<4>],
    teacher: &'a [Tensor<4>],
    proj: &[Vec<Tensor<4>>],
    query: &[SemckdMlp],
    key: &[SemckdMlp],
) -> Result<SemckdLayers> {
    let dims = |maps: &[Tensor<4>]| maps.iter().map(|m| m.dims().to_vec()).collect::<Vec<_>>();
    let (student_dims, teacher_dims) = (dims(student), dims(teacher));
    fn slices(dims: &[Vec<usize>]) -> Vec<&[usize]> {
        dims.iter().map(Vec::as_slice).collect()
    }
    let mut layers = SemckdLayers::from_shapes(&slices(&student_dims), &slices(&teacher_dims))?;
    let counts = [
        ("query MLPs (one per student layer)", layers.students(), query.len()),
        ("key MLPs (one per teacher layer)", layers.teachers(), key.len()),
        ("proj (rows, one per student layer)", layers.students(), proj.len()),
    ];
    for (what, expected, got) in counts {
        if got != expected {
            return Err(KdError::ShapeMismatch { what, expected: vec![expected], got: vec![got] });
        }
    }
    layers.embed_dim = query[0].linear2_bias.dims()[0];
    layers.validate()?;
    let want = layers.embed_shapes();
    for mlp in query.iter().chain(key) {
        for ((what, got, _, _), expected) in mlp.describe().into_iter().zip(&want) {
            if got != *expected {
                return Err(KdError::ShapeMismatch { what, expected: expected.clone(), got });
            }
        }
    }
    for (i, row) in proj.iter().enumerate() {
        if row.len() != layers.teachers() {
            return Err(KdError::ShapeMismatch {
                what: "proj (pairs per student layer)",
                expected: vec![layers.teachers()],
                got: vec![row.len()],
            });
        }
        for (j, p) in row.iter().enumerate() {
            let expected = layers.pair_shape(i, j).to_vec();
            if p.dims().to_vec() != expected {
                return Err(KdError::ShapeMismatch {
                    what: "proj[i][j] [B, Ct_j, h, h]",
                    expected,
                    got: p.dims().to_vec(),
                });
            }
        }
    }
    // One float dtype and one device for every map and regressor output; f32 parameters on that device.
    let device = student[0].device();
    covered_backend(&device)?;
    let dtype = student[0].dtype();
    if !supported_dtype(dtype) {
        return Err(KdError::DTypeMismatch {
            what: "student[0]".into(),
            expected: "a float dtype (f64, f32, f16, bf16)".into(),
            got: format!("{dtype:?}"),
        });
    }
    if dtype == DType::F64 && is_cuda(&device) {
        return Err(KdError::DTypeMismatch {
            what: "student[0]".into(),
            expected: "f32, f16 or bf16 (the kernels' dtypes on a CUDA device)".into(),
            got: "F64".into(),
        });
    }
    let named = |side: &'static str, maps: &'a [Tensor<4>]| {
        maps.iter().enumerate().map(move |(k, m)| (format!("{side}[{k}]"), m))
    };
    let pairs = proj
        .iter()
        .enumerate()
        .flat_map(|(i, row)| row.iter().enumerate().map(move |(j, m)| (format!("proj[{i}][{j}]"), m)));
    for (what, map) in named("student", student).chain(named("teacher", teacher)).chain(pairs) {
        if map.dtype() != dtype {
            return Err(KdError::DTypeMismatch {
                what,
                expected: format!("{dtype:?} (student[0]'s dtype)"),
                got: format!("{:?}", map.dtype()),
            });
        }
        check_same_device(&what, &map.device(), &device)?;
    }
    let mlps = query
        .iter()
        .enumerate()
        .map(|(k, m)| ("query", k, m))
        .chain(key.iter().enumerate().map(|(k, m)| ("key", k, m)));
    for (side, k, mlp) in mlps {
        for (name, _, param_dtype, param_device) in mlp.describe() {
            let what = format!("{side}[{k}].{name}");
            if !matches!(param_dtype, DType::F32 | DType::Flex32) {
                return Err(KdError::DTypeMismatch {
                    what,
                    expected: "f32 (the crate keeps learnable parameters in f32)".into(),
                    got: format!("{param_dtype:?}"),
                });
            }
            check_same_device(&what, &param_device, &device)?;
        }
    }
    for map in teacher {
        refuse_tracked_teacher(map, Semckd::LABEL)?;
    }
    Ok(layers)
}

/// SemCKD's packed call: `maps`, `teacher` and `params` as [`SemckdPacking`] lays them out; the gradients of
/// `maps` (the student maps' part is the Gram / attention path of `docs/losses.md` §4.4; the regressor path is
/// the caller's autograd, from the `proj` part) and of `params` (f32), packed alike. The teacher gets none.
impl PackedLossFamily for Semckd {
    fn config(call: &SemckdPacked) -> SemckdConfig {
        call.config
    }

    fn cpu<T: NdArrayFloat>(call: &SemckdPacked, tensors: CpuCall<'_>) -> Result<PackedCpuOutput> {
        let CpuCall { floats, want_grad, .. } = tensors;
        let layers = &call.geometry;
        let packing = SemckdPacking::new(layers);
        let (maps, teacher) =
            (contiguous(T::storage("maps", &floats[0])), contiguous(T::storage("teacher", &floats[1])));
        let params = contiguous(f32::storage("params", &floats[2]));
        let (s_n, t_n) = (layers.students(), layers.teachers());
        let map_views = unpack::<T, Ix4>(&maps, &packing.maps);
        let mlps: Vec<EmbedWeights<'_>> = unpack::<f32, IxDyn>(&params, &packing.params)
            .chunks(4)
            .map(|p| EmbedWeights {
                linear1_weight: view_as(p[0].clone()),
                linear1_bias: view_as(p[1].clone()),
                linear2_weight: view_as(p[2].clone()),
                linear2_bias: view_as(p[3].clone()),
            })
            .collect();
        let inputs = SemckdCpuInputs {
            student: map_views[..s_n].to_vec(),
            teacher: unpack::<T, Ix4>(&teacher, &packing.teacher),
            proj: map_views[s_n..].chunks(t_n).map(<[_]>::to_vec).collect(),
            query: mlps[..s_n].to_vec(),
            key: mlps[s_n..].to_vec(),
        };
        let semckd = SemckdCpu::new(call.config)?;
        if !want_grad {
            return Ok(PackedCpuOutput { loss: semckd.forward(&inputs)?.loss, grads: Vec::new() });
        }
        let out = semckd.forward_backward(&inputs)?;
        let grad_maps = out.grad_student.iter().chain(out.grad_proj.iter().flatten()).flat_map(|g| g.iter().copied());
        let grad_params = out.grad_query.iter().chain(&out.grad_key).flat_map(|g| {
            g.linear1_weight.iter().chain(&g.linear1_bias).chain(&g.linear2_weight).chain(&g.linear2_bias).copied()
        });
        let packed = |values: Vec<f64>| ::ndarray::Array1::from_vec(values).into_dyn();
        Ok(PackedCpuOutput { loss: out.loss, grads: vec![packed(grad_maps.collect()), packed(grad_params.collect())] })
    }

    fn with_shape<R>(
        call: &SemckdPacked,
        _dims: &[Vec<usize>],
        f: impl FnOnce(&SemckdLayers) -> Result<R>,
    ) -> Result<R> {
        f(&call.geometry)
    }

    /// Each layer's address is the packed buffer's plus its offset ([`SemckdPacking`]); the SemCKD kernels
    /// read element by element, so the offsets need no alignment beyond the element's.
    fn raw_buffers(call: &SemckdPacked, at: &PackedAddresses<'_>) -> SemckdRawBuffers {
        let layers = &call.geometry;
        let packing = SemckdPacking::new(layers);
        let s = layers.students();
        let size = at.dtype.size();
        let mlps = |list: &[u64]| -> Vec<[u64; 4]> { list.chunks(4).map(|p| [p[0], p[1], p[2], p[3]]).collect() };
        let (map_at, param_at) =
            (addresses(at.floats[0], &packing.maps, size), addresses(at.floats[2], &packing.params, 4));
        let (grad_maps, grad_params) =
            (addresses(at.grads[0], &packing.maps, size), addresses(at.grads[2], &packing.params, 4));
        let split = |list: &[u64], k: usize| (list[..k.min(list.len())].to_vec(), list[k.min(list.len())..].to_vec());
        let ((student, proj), (grad_student, grad_proj)) = (split(&map_at, s), split(&grad_maps, s));
        let ((query, key), (grad_query, grad_key)) = (split(&param_at, 4 * s), split(&grad_params, 4 * s));
        SemckdRawBuffers {
            student,
            teacher: addresses(at.floats[1], &packing.teacher, size),
            proj,
            query: mlps(&query),
            key: mlps(&key),
            loss: at.loss,
            grad_student,
            grad_proj,
            grad_query: mlps(&grad_query),
            grad_key: mlps(&grad_key),
            ..Default::default()
        }
    }
}
