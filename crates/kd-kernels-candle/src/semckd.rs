//! SemCKD as a candle op: gradients reach the student layers (the Gram / attention path), the regressor
//! outputs `proj[i][j]` (and through the caller's regressors, the student again) and the query and key
//! embeddings' parameters.
//!
//! candle's custom ops take at most three tensors, and SemCKD has `S + T + S*T + 4 (S + T)` of them (for
//! 3 x 3 layers, 39). Packing them into three tensors would copy every feature map on every step, so the
//! loss is instead one fused forward + backward call of the crate (the CPU reference, or the kernels on
//! candle's stream) on the tensors' own storage, which returns the loss and every gradient at once, and
//! enters candle's graph through `fused::attach` (first-order gradients only).

use std::sync::Arc;

use candle_core::{DType as CandleDType, Device, Tensor};
use ndarray::{ArrayView1, ArrayView2, ArrayView4};

use super::fused::{attach, cpu_storage, unsupported_device, Engines, Outputs as FusedOutputs};
use super::{candle_error, cpu_slice, dispatch_host, HostElem, PerHostDtype};
use kd_kernels::error::KdError;
use kd_kernels::semckd::{EmbedWeights, SemckdConfig, SemckdCpu, SemckdCpuInputs, SemckdLayers};

const NAME: &str = "kd-kernels-semckd";
const ATTACH_NAME: &str = "kd-kernels-semckd-grad";
const MLP_NAMES: [&str; 4] = ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"];

/// The tensors of one SemCKD call (`docs/losses.md` §4.1).
///
/// `student[i]` `[B, Cs_i, Hs_i, Ws_i]` and `teacher[j]` `[B, Ct_j, Ht_j, Wt_j]` (a constant: no gradient is
/// computed for it), `proj[i][j]` the output of your regressor for the pair, `[B, Ct_j, h, h]` with
/// `h = min(Hs_i, Ht_j)`, all of one dtype (`f32`, `f16`, `bf16`; also `f64` on the CPU). `query[i]` and
/// `key[j]` are the embedding MLPs' `f32` parameters in the order `linear1.weight [2d, B]`, `linear1.bias
/// [2d]`, `linear2.weight [d, 2d]`, `linear2.bias [d]` (officially `d = B / 4`).
#[derive(Debug, Clone, Copy)]
pub struct SemckdTensors<'a> {
    /// `S` student feature maps.
    pub student: &'a [Tensor],
    /// `T` teacher feature maps.
    pub teacher: &'a [Tensor],
    /// `S` rows of `T` regressor outputs.
    pub proj: &'a [Vec<Tensor>],
    /// `S` query MLPs.
    pub query: &'a [[Tensor; 4]],
    /// `T` key MLPs.
    pub key: &'a [[Tensor; 4]],
}

/// SemCKD ([`kd_kernels::semckd`]) as a candle op: `loss(&tensors)` is an f32 scalar whose backward pass writes
/// the gradients of the student maps (the Gram / attention path; the regressor path reaches them through
/// `proj`), of every `proj[i][j]`, and of every query and key MLP parameter. First-order only (see the
/// module's source for why and how).
#[derive(Clone)]
pub struct Semckd {
    shared: Arc<Shared>,
}

type Shared = Engines<SemckdCpu, kd_kernels::semckd::Semckd>;
type Outputs = FusedOutputs<Vec<Tensor>>;

/// The inputs as one list, in the order the outputs' gradients follow: student, teacher, proj (row-major),
/// query parameters, key parameters; each made contiguous (a differentiable copy where it was strided).
struct Flat {
    tensors: Vec<Tensor>,
    students: usize,
    teachers: usize,
}

impl Flat {
    /// The tensors that have a gradient, in the order of the outputs' gradients.
    fn with_grads(&self) -> impl Iterator<Item = &Tensor> {
        let (s, t) = (self.students, self.teachers);
        self.tensors[..s].iter().chain(&self.tensors[s + t..])
    }
}

impl Semckd {
    /// Validates `config`.
    pub fn new(config: SemckdConfig) -> candle_core::Result<Self> {
        Ok(Semckd { shared: Engines::new(SemckdCpu::new(config))? })
    }

    /// The configuration.
    pub fn config(&self) -> &SemckdConfig {
        self.shared.cpu.config()
    }

    /// The loss `loss_weight / (B S) * sum_{b,i,j} alpha[b,i,j] l[b,i,j]` of `tensors` (one device).
    pub fn loss(&self, tensors: &SemckdTensors<'_>) -> candle_core::Result<Tensor> {
        let layers = check(tensors)?;
        let flat = flatten(tensors)?;
        let want_grads = flat.with_grads().any(Tensor::track_op);
        let device = flat.tensors[0].device().clone();
        let out = match &device {
            Device::Cpu => dispatch_host(
                flat.tensors[0].dtype(),
                NAME,
                CpuJob { cpu: &self.shared.cpu, flat: &flat, layers: &layers, want_grads },
            )?,
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => cuda::run(&self.shared, &flat, &layers, want_grads)?,
            _ => return Err(unsupported_device(NAME, &device)),
        };
        attach(out.loss, ATTACH_NAME, flat.with_grads().zip(out.grads.into_iter().flatten()))
    }
}

fn mismatch(what: &'static str, expected: &[usize], got: &[usize]) -> candle_core::Error {
    candle_error(KdError::ShapeMismatch { what, expected: expected.to_vec(), got: got.to_vec() })
}

/// Checks counts, shapes, dtypes and devices in the crate's words; returns the layout.
fn check(x: &SemckdTensors<'_>) -> candle_core::Result<SemckdLayers> {
    let first = x.student.first().ok_or_else(|| {
        candle_error(KdError::EmptyInput { what: "student layers (give at least one)", shape: vec![0] })
    })?;
    let (s_n, t_n) = (x.student.len(), x.teacher.len());
    if x.proj.len() != s_n {
        return Err(mismatch("proj (rows, one per student layer)", &[s_n], &[x.proj.len()]));
    }
    if let Some(row) = x.proj.iter().find(|row| row.len() != t_n) {
        return Err(mismatch("proj (pairs per student layer, one per teacher layer)", &[t_n], &[row.len()]));
    }
    if x.query.len() != s_n {
        return Err(mismatch("query MLPs (one per student layer)", &[s_n], &[x.query.len()]));
    }
    if x.key.len() != t_n {
        return Err(mismatch("key MLPs (one per teacher layer)", &[t_n], &[x.key.len()]));
    }
    let dtype = first.dtype();
    let device = first.device();
    let same_device = |t: &Tensor| -> candle_core::Result<()> {
        if t.device().same_device(device) {
            Ok(())
        } else {
            Err(candle_core::Error::DeviceMismatchBinaryOp {
                lhs: device.location(),
                rhs: t.device().location(),
                op: NAME,
            })
        }
    };
    let features = [("student", x.student), ("teacher", x.teacher)];
    let proj = x.proj.iter().flatten().map(|p| ("proj", p));
    for (what, t) in features.iter().flat_map(|(w, list)| list.iter().map(move |t| (*w, t))).chain(proj) {
        if t.dtype() != dtype {
            return Err(candle_error(KdError::DTypeMismatch {
                what: what.into(),
                expected: format!("{dtype:?} (student[0]'s)"),
                got: format!("{:?}", t.dtype()),
            }));
        }
        same_device(t)?;
    }
    let s: Vec<&[usize]> = x.student.iter().map(Tensor::dims).collect();
    let t: Vec<&[usize]> = x.teacher.iter().map(Tensor::dims).collect();
    let mut layers = SemckdLayers::from_shapes(&s, &t).map_err(candle_error)?;
    layers.embed_dim = match x.query[0][3].dims() {
        [d] => *d,
        other => return Err(mismatch("query[0] linear2.bias [d]", &[layers.embed_dim], other)),
    };
    layers.validate().map_err(candle_error)?;
    for (i, row) in x.proj.iter().enumerate() {
        for (j, p) in row.iter().enumerate() {
            if p.dims() != layers.pair_shape(i, j) {
                return Err(mismatch(
                    "proj[i][j] ([B, Ct_j, h, h], h = min(Hs_i, Ht_j))",
                    &layers.pair_shape(i, j),
                    p.dims(),
                ));
            }
        }
    }
    let want = layers.embed_shapes();
    for params in x.query.iter().chain(x.key) {
        for ((name, p), want) in MLP_NAMES.iter().zip(params).zip(&want) {
            if p.dtype() != CandleDType::F32 {
                return Err(candle_error(KdError::DTypeMismatch {
                    what: format!("embedding {name}"),
                    expected: "F32 (the embeddings' parameters are f32 whatever the features' dtype)".into(),
                    got: format!("{:?}", p.dtype()),
                }));
            }
            if p.dims() != want.as_slice() {
                return Err(mismatch(name, want, p.dims()));
            }
            same_device(p)?;
        }
    }
    Ok(layers)
}

fn flatten(x: &SemckdTensors<'_>) -> candle_core::Result<Flat> {
    let all =
        x.student.iter().chain(x.teacher).chain(x.proj.iter().flatten()).chain(x.query.iter().chain(x.key).flatten());
    Ok(Flat {
        tensors: all.map(Tensor::contiguous).collect::<candle_core::Result<_>>()?,
        students: x.student.len(),
        teachers: x.teacher.len(),
    })
}

struct CpuJob<'a> {
    cpu: &'a SemckdCpu,
    flat: &'a Flat,
    layers: &'a SemckdLayers,
    want_grads: bool,
}

fn too_large(e: ndarray::ShapeError) -> candle_core::Error {
    candle_error(KdError::TooLarge { what: "semckd input", detail: e.to_string() })
}

impl PerHostDtype for CpuJob<'_> {
    type Out = Outputs;

    fn run<T: HostElem>(self) -> candle_core::Result<Outputs> {
        let guards: Vec<_> = self.flat.tensors.iter().map(Tensor::storage_and_layout).collect();
        let slice_of = |k: usize| -> candle_core::Result<&[T]> {
            cpu_slice::<T>(cpu_storage(&guards[k].0, NAME)?, guards[k].1, NAME)
        };
        let f32_of = |k: usize| -> candle_core::Result<&[f32]> {
            cpu_slice::<f32>(cpu_storage(&guards[k].0, NAME)?, guards[k].1, NAME)
        };
        let view4 = |k: usize, dims: [usize; 4]| -> candle_core::Result<ArrayView4<'_, T>> {
            ArrayView4::from_shape(dims, slice_of(k)?).map_err(too_large)
        };
        let l = self.layers;
        let (s_n, t_n) = (l.students(), l.teachers());
        let student = (0..s_n).map(|i| view4(i, l.student_shape(i))).collect::<candle_core::Result<Vec<_>>>()?;
        let teacher = (0..t_n).map(|j| view4(s_n + j, l.teacher_shape(j))).collect::<candle_core::Result<Vec<_>>>()?;
        let proj = (0..s_n)
            .map(|i| (0..t_n).map(|j| view4(s_n + t_n + i * t_n + j, l.pair_shape(i, j))).collect())
            .collect::<candle_core::Result<Vec<Vec<_>>>>()?;
        let (b, d) = (l.batch, l.embed_dim);
        let mlp = |m: usize| -> candle_core::Result<EmbedWeights<'_>> {
            let k = s_n + t_n + s_n * t_n + 4 * m;
            Ok(EmbedWeights {
                linear1_weight: ArrayView2::from_shape((2 * d, b), f32_of(k)?).map_err(too_large)?,
                linear1_bias: ArrayView1::from(f32_of(k + 1)?),
                linear2_weight: ArrayView2::from_shape((d, 2 * d), f32_of(k + 2)?).map_err(too_large)?,
                linear2_bias: ArrayView1::from(f32_of(k + 3)?),
            })
        };
        let query = (0..s_n).map(mlp).collect::<candle_core::Result<Vec<_>>>()?;
        let key = (s_n..s_n + t_n).map(mlp).collect::<candle_core::Result<Vec<_>>>()?;
        let inputs = SemckdCpuInputs { student, teacher, proj, query, key };
        let out = if self.want_grads { self.cpu.forward_backward(&inputs) } else { self.cpu.forward(&inputs) }
            .map_err(candle_error)?;
        let loss = Tensor::new(out.loss as f32, &Device::Cpu)?;
        if !self.want_grads {
            return Ok(Outputs { loss, grads: None });
        }
        let features =
            out.grad_student.iter().chain(out.grad_proj.iter().flatten()).map(|g| {
                Tensor::from_vec(g.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>(), g.shape(), &Device::Cpu)
            });
        let params = out.grad_query.iter().chain(&out.grad_key).flat_map(|g| {
            [
                (g.linear1_weight.iter().copied().collect::<Vec<_>>(), g.linear1_weight.shape().to_vec()),
                (g.linear1_bias.to_vec(), g.linear1_bias.shape().to_vec()),
                (g.linear2_weight.iter().copied().collect(), g.linear2_weight.shape().to_vec()),
                (g.linear2_bias.to_vec(), g.linear2_bias.shape().to_vec()),
            ]
        });
        let params = params
            .map(|(v, dims)| Tensor::from_vec(v.into_iter().map(|g| g as f32).collect::<Vec<_>>(), dims, &Device::Cpu));
        let grads = features.chain(params).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Outputs { loss, grads: Some(grads) })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! SemCKD on candle's CUDA device: the typed API on candle's slices and stream, the loss and every
    //! gradient left on the device (no host synchronisation).

    use candle_core::backend::BackendStorage;
    use candle_core::Tensor;
    use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut};

    use super::super::cuda::view;
    use super::super::fused::{cuda_storage, tensor};
    use super::super::{dispatch, Float, PerDtype};
    use super::{Flat, Outputs, Shared, NAME};
    use kd_kernels::grad::GradOptions;
    use kd_kernels::semckd::{EmbedParamGrads, EmbedParams, SemckdCuda, SemckdGrads, SemckdInputs, SemckdLayers};

    pub(super) fn run(
        shared: &Shared,
        flat: &Flat,
        layers: &SemckdLayers,
        want_grads: bool,
    ) -> candle_core::Result<Outputs> {
        dispatch(flat.tensors[0].dtype(), NAME, Job { shared, flat, layers, want_grads })
    }

    struct Job<'a> {
        shared: &'a Shared,
        flat: &'a Flat,
        layers: &'a SemckdLayers,
        want_grads: bool,
    }

    impl PerDtype for Job<'_> {
        type Out = Outputs;

        fn run<T: Float>(self) -> candle_core::Result<Outputs> {
            let l = self.layers;
            let (s_n, t_n) = (l.students(), l.teachers());
            let guards: Vec<_> = self.flat.tensors.iter().map(Tensor::storage_and_layout).collect();
            let storages =
                guards.iter().map(|(s, _)| cuda_storage(s, NAME)).collect::<candle_core::Result<Vec<_>>>()?;
            let device = storages[0].device().clone();
            let stream = device.cuda_stream();
            let n_features = s_n + t_n + s_n * t_n;
            let features = (0..n_features)
                .map(|k| view::<T>(storages[k], guards[k].1, NAME))
                .collect::<candle_core::Result<Vec<CudaView<'_, T>>>>()?;
            let params = (n_features..storages.len())
                .map(|k| view::<f32>(storages[k], guards[k].1, NAME))
                .collect::<candle_core::Result<Vec<CudaView<'_, f32>>>>()?;
            let refs: Vec<&dyn DevicePtr<T>> = features.iter().map(|v| v as &dyn DevicePtr<T>).collect();
            let embed: Vec<EmbedParams<'_>> = params
                .chunks(4)
                .map(|p| EmbedParams {
                    linear1_weight: &p[0],
                    linear1_bias: &p[1],
                    linear2_weight: &p[2],
                    linear2_bias: &p[3],
                })
                .collect();
            let inputs = SemckdInputs {
                student: &refs[..s_n],
                teacher: &refs[s_n..s_n + t_n],
                proj: &refs[s_n + t_n..],
                query: &embed[..s_n],
                key: &embed[s_n..],
            };
            let mut loss: CudaSlice<f32> = device.alloc_zeros(1)?;
            let feature_dims: Vec<Vec<usize>> = (0..s_n)
                .map(|i| l.student_shape(i).to_vec())
                .chain((0..s_n).flat_map(|i| (0..t_n).map(move |j| l.pair_shape(i, j).to_vec())))
                .collect();
            let embed_dims = l.embed_shapes();
            let (mut grad_features, mut grad_params) = (Vec::new(), Vec::new());
            if self.want_grads {
                for dims in &feature_dims {
                    grad_features.push(device.alloc_zeros::<T>(dims.iter().product())?);
                }
                for _ in 0..s_n + t_n {
                    for dims in &embed_dims {
                        grad_params.push(device.alloc_zeros::<f32>(dims.iter().product())?);
                    }
                }
            }
            {
                let students = s_n.min(grad_features.len());
                let (grad_student, grad_proj) = grad_features.split_at_mut(students);
                let mut mlp_grads: Vec<EmbedParamGrads<'_>> = Vec::new();
                let mut four = grad_params.iter_mut();
                while let (Some(w1), Some(b1), Some(w2), Some(b2)) =
                    (four.next(), four.next(), four.next(), four.next())
                {
                    mlp_grads.push(EmbedParamGrads {
                        linear1_weight: w1,
                        linear1_bias: b1,
                        linear2_weight: w2,
                        linear2_bias: b2,
                    });
                }
                let queries = s_n.min(mlp_grads.len());
                let key = mlp_grads.split_off(queries);
                let mut grads = SemckdGrads {
                    student: grad_student.iter_mut().map(|g| g as &mut dyn DevicePtrMut<T>).collect(),
                    proj: grad_proj.iter_mut().map(|g| g as &mut dyn DevicePtrMut<T>).collect(),
                    query: mlp_grads,
                    key,
                };
                let config = *self.shared.cpu.config();
                self.shared.cuda.with(
                    &stream,
                    |s| SemckdCuda::new(s, config),
                    |cuda| {
                        let grads = self.want_grads.then_some(&mut grads);
                        cuda.forward_backward(l, &inputs, &mut loss, None, grads, GradOptions::OVERWRITE)
                    },
                )?;
            }
            let loss = tensor(loss, &device, Vec::new());
            if !self.want_grads {
                return Ok(Outputs { loss, grads: None });
            }
            let features = grad_features.into_iter().zip(feature_dims).map(|(g, dims)| tensor(g, &device, dims));
            let params = grad_params
                .into_iter()
                .zip(embed_dims.iter().cycle())
                .map(|(g, dims)| tensor(g, &device, dims.clone()));
            Ok(Outputs { loss, grads: Some(features.chain(params).collect()) })
        }
    }
}
