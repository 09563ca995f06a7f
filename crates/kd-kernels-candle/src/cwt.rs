//! CWT as a candle op: gradients reach the student features and the MLP's four parameters.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, DType as CandleDType, Layout, Shape, Tensor};
use ndarray::{ArrayView1, ArrayView2};

use super::op::{CpuArg, KdOp, Op};
use super::{candle_error, cpu_slice, cpu_view4, HostElem};
use kd_kernels::cwt::{CwtConfig, CwtCpu, CwtShapes, MlpParams};
use kd_kernels::error::KdError;

const NAME: &str = "kd-kernels-cwt";
const GRAD_NAME: &str = "kd-kernels-cwt-grad";
const PARAM_GRAD_NAME: &str = "kd-kernels-cwt-param-grad";

/// Channel-wise transformation ([`kd_kernels::cwt`]) as a candle op: `loss(student, teacher, w1, b1, w2, b2)`
/// is an f32 scalar whose backward pass writes the gradients of the student features (`[N, Cs, H, W]`) and
/// of the MLP's f32 parameters: `w1` `[Ch, Cs]` (or `[Ch, Cs, 1, 1]`, a 1x1 convolution's weight), `b1`
/// `[Ch]`, `w2` `[Ct, Ch]` (or `[Ct, Ch, 1, 1]`), `b2` `[Ct]`.
///
/// The four parameters travel through the op as one f32 vector (candle's `cat`, whose backward splits the
/// gradient again); the backward pass computes every gradient in one call of the kernels.
#[derive(Clone)]
pub struct Cwt {
    shared: Arc<Shared>,
}

struct Shared {
    cpu: CwtCpu,
    shapes: CwtShapes,
    #[cfg(feature = "cuda")]
    cuda: super::cuda::CudaSlot<kd_kernels::cwt::CwtCuda>,
}

impl Cwt {
    /// Validates `config` and `shapes` (the channel counts `Cs -> Ch -> Ct`).
    pub fn new(config: CwtConfig, shapes: CwtShapes) -> candle_core::Result<Self> {
        shapes.validate().map_err(candle_error)?;
        Ok(Cwt {
            shared: Arc::new(Shared {
                cpu: CwtCpu::new(config).map_err(candle_error)?,
                shapes,
                #[cfg(feature = "cuda")]
                cuda: super::cuda::CudaSlot::new(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CwtConfig {
        self.shared.cpu.config()
    }

    /// The channel counts.
    pub fn shapes(&self) -> &CwtShapes {
        &self.shared.shapes
    }

    /// The loss of the student features mapped by the MLP against the teacher features.
    pub fn loss(
        &self,
        student: &Tensor,
        teacher: &Tensor,
        w1: &Tensor,
        b1: &Tensor,
        w2: &Tensor,
        b2: &Tensor,
    ) -> candle_core::Result<Tensor> {
        super::check_pair_tensors(student, teacher, NAME)?;
        let shapes = &self.shared.shapes;
        shapes.check_features(student.dims(), teacher.dims()).map_err(candle_error)?;
        let params = [
            ("mlp.linear1.weight", w1, [shapes.ch, shapes.cs]),
            ("mlp.linear1.bias", b1, [shapes.ch, 1]),
            ("mlp.linear2.weight", w2, [shapes.ct, shapes.ch]),
            ("mlp.linear2.bias", b2, [shapes.ct, 1]),
        ];
        let mut flat = Vec::with_capacity(4);
        for (what, p, [rows, cols]) in params {
            if p.dtype() != CandleDType::F32 {
                return Err(candle_error(KdError::DTypeMismatch {
                    what: what.into(),
                    expected: "F32 (the MLP's parameters are f32 whatever the features' dtype)".into(),
                    got: format!("{:?}", p.dtype()),
                }));
            }
            let dims = p.dims();
            let bias = cols == 1;
            let ok = if bias { dims == [rows] } else { dims == [rows, cols] || dims == [rows, cols, 1, 1] };
            if !ok {
                let expected = if bias { vec![rows] } else { vec![rows, cols] };
                return Err(candle_error(KdError::ShapeMismatch { what, expected, got: dims.to_vec() }));
            }
            if !p.device().same_device(student.device()) {
                return Err(candle_core::Error::DeviceMismatchBinaryOp {
                    lhs: student.device().location(),
                    rhs: p.device().location(),
                    op: NAME,
                });
            }
            flat.push(p.flatten_all()?);
        }
        let params = Tensor::cat(&flat, 0)?;
        let student = student.contiguous()?;
        let teacher = teacher.contiguous()?;
        student.apply_op3(&teacher, &params, Op(ForwardOp { shared: self.shared.clone() }))
    }
}

/// The four parameters' ranges in the flat vector.
fn param_ranges(s: &CwtShapes) -> [std::ops::Range<usize>; 4] {
    let w1 = s.ch * s.cs;
    let b1 = w1 + s.ch;
    let w2 = b1 + s.ct * s.ch;
    let b2 = w2 + s.ct;
    [0..w1, w1..b1, b1..w2, w2..b2]
}

fn param_count(s: &CwtShapes) -> usize {
    param_ranges(s)[3].end
}

/// Checks the length of the flat parameter vector (plus the upstream gradient in the gradient op).
fn expect_params(len: usize, needed: usize) -> candle_core::Result<()> {
    if len == needed {
        Ok(())
    } else {
        Err(candle_error(KdError::BufferTooSmall { what: "CWT parameters", needed, len }))
    }
}

/// The flat parameter vector as the CPU reference's views.
fn mlp_params<'a>(flat: &'a [f32], s: &CwtShapes) -> candle_core::Result<MlpParams<'a>> {
    let [w1, b1, w2, b2] = param_ranges(s);
    let bad =
        |e: ndarray::ShapeError| candle_error(KdError::TooLarge { what: "CWT parameters", detail: e.to_string() });
    Ok(MlpParams {
        w1: ArrayView2::from_shape((s.ch, s.cs), &flat[w1]).map_err(bad)?,
        b1: ArrayView1::from(&flat[b1]),
        w2: ArrayView2::from_shape((s.ct, s.ch), &flat[w2]).map_err(bad)?,
        b2: ArrayView1::from(&flat[b2]),
    })
}

struct ForwardOp {
    shared: Arc<Shared>,
}

/// `(student, teacher, [params, d total / d loss])` to the student's gradient; the parameters' gradient
/// is left in `param_grads` for [`TakeParamGrads`] (one call of the kernels computes both).
struct GradOp {
    shared: Arc<Shared>,
    param_grads: Arc<Mutex<Option<ParamGrads>>>,
}

enum ParamGrads {
    Cpu(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(candle_core::CudaStorage),
}

/// Hands over the parameters' gradient that [`GradOp`] computed (its input only gives the shape).
struct TakeParamGrads {
    param_grads: Arc<Mutex<Option<ParamGrads>>>,
}

impl TakeParamGrads {
    fn take(&self) -> candle_core::Result<ParamGrads> {
        self.param_grads.lock().ok().and_then(|mut g| g.take()).ok_or_else(|| {
            candle_error(KdError::Unsupported {
                what: PARAM_GRAD_NAME,
                detail: "the CWT gradient op did not run before its parameter gradient was read".into(),
            })
        })
    }
}

impl KdOp<3> for ForwardOp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu<T: HostElem>(&self, [s, t, p]: [CpuArg<'_>; 3]) -> candle_core::Result<(CpuStorage, Shape)> {
        let shared = &self.shared;
        let params = cpu_slice::<f32>(p.0, p.1, NAME)?;
        expect_params(params.len(), param_count(&shared.shapes))?;
        let student = cpu_view4::<T>(s.0, s.1, "student", NAME)?;
        let teacher = cpu_view4::<T>(t.0, t.1, "teacher", NAME)?;
        let params = mlp_params(params, &shared.shapes)?;
        let loss = shared.cpu.forward(student, teacher, &params).map_err(candle_error)?;
        Ok(super::cpu_scalar(loss))
    }

    #[cfg(feature = "cuda")]
    fn cuda<T: super::Float>(
        &self,
        [s, t, p]: [super::op::CudaArg<'_>; 3],
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward::<T>(&self.shared, s, t, p)
    }

    fn bwd(
        &self,
        [student, teacher, params]: [&Tensor; 3],
        _loss: &Tensor,
        grad_loss: &Tensor,
    ) -> candle_core::Result<[Option<Tensor>; 3]> {
        let upstream = grad_loss.to_dtype(CandleDType::F32)?.reshape(1)?;
        let packed = Tensor::cat(&[params, &upstream], 0)?;
        let param_grads = Arc::new(Mutex::new(None));
        let grad_op = Op(GradOp { shared: self.shared.clone(), param_grads: param_grads.clone() });
        let grad_student = student.apply_op3_no_bwd(teacher, &packed, &grad_op)?;
        let grad_params = params.apply_op1_no_bwd(&TakeParamGrads { param_grads })?;
        Ok([Some(grad_student), None, Some(grad_params)])
    }
}

impl KdOp<3> for GradOp {
    fn name(&self) -> &'static str {
        GRAD_NAME
    }

    fn cpu<T: HostElem>(&self, [s, t, p]: [CpuArg<'_>; 3]) -> candle_core::Result<(CpuStorage, Shape)> {
        let shared = &self.shared;
        let packed = cpu_slice::<f32>(p.0, p.1, GRAD_NAME)?;
        let count = param_count(&shared.shapes);
        expect_params(packed.len(), count + 1)?;
        let student = cpu_view4::<T>(s.0, s.1, "student", GRAD_NAME)?;
        let teacher = cpu_view4::<T>(t.0, t.1, "teacher", GRAD_NAME)?;
        let params = mlp_params(&packed[..count], &shared.shapes)?;
        let upstream = packed[count] as f64;
        let out = shared.cpu.backward(student, teacher, &params, upstream).map_err(candle_error)?;
        let param_grads: Vec<f32> = out
            .grad_w1
            .iter()
            .chain(out.grad_b1.iter())
            .chain(out.grad_w2.iter())
            .chain(out.grad_b2.iter())
            .map(|&g| g as f32)
            .collect();
        *self.param_grads.lock().map_err(|_| poisoned())? = Some(ParamGrads::Cpu(param_grads));
        let shape = Shape::from(out.grad_student.dim());
        Ok((super::cpu_grad::<T>(&out.grad_student), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda<T: super::Float>(
        &self,
        [s, t, p]: [super::op::CudaArg<'_>; 3],
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::backward::<T>(self, s, t, p)
    }
}

fn poisoned() -> candle_core::Error {
    candle_error(KdError::Unsupported {
        what: GRAD_NAME,
        detail: "a previous call panicked while holding the parameter gradient; run the backward pass again".into(),
    })
}

impl candle_core::CustomOp1 for TakeParamGrads {
    fn name(&self) -> &'static str {
        PARAM_GRAD_NAME
    }

    fn cpu_fwd(&self, _: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        match self.take()? {
            ParamGrads::Cpu(g) => Ok((CpuStorage::F32(g), layout.shape().clone())),
            #[cfg(feature = "cuda")]
            ParamGrads::Cuda(_) => Err(candle_core::Error::DeviceMismatchBinaryOp {
                lhs: candle_core::DeviceLocation::Cpu,
                rhs: candle_core::DeviceLocation::Cuda { gpu_id: 0 },
                op: PARAM_GRAD_NAME,
            }),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match self.take()? {
            ParamGrads::Cuda(g) => Ok((g, layout.shape().clone())),
            ParamGrads::Cpu(_) => Err(candle_core::Error::DeviceMismatchBinaryOp {
                lhs: candle_core::DeviceLocation::Cuda { gpu_id: 0 },
                rhs: candle_core::DeviceLocation::Cpu,
                op: PARAM_GRAD_NAME,
            }),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! CWT on candle's CUDA device: the typed API on candle's slices and stream.

    use candle_core::backend::BackendStorage;
    use candle_core::{CudaStorage, Shape};
    use cudarc::driver::{CudaSlice, CudaView};

    use super::super::cuda::view;
    use super::super::op::CudaArg;
    use super::super::{nchw, Float};
    use super::{expect_params, param_count, param_ranges, GradOp, ParamGrads, Shared, GRAD_NAME, NAME};
    use kd_kernels::cwt::{CwtCuda, CwtParamBuffers, CwtParamGrads, CwtShapes};

    /// The four parameters' views in the flat vector.
    fn param_views<'a>(flat: &CudaView<'a, f32>, shapes: &CwtShapes) -> [CudaView<'a, f32>; 4] {
        param_ranges(shapes).map(|r| flat.slice(r))
    }

    pub(super) fn forward<T: Float>(
        shared: &Shared,
        s: CudaArg<'_>,
        t: CudaArg<'_>,
        p: CudaArg<'_>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dims = nchw(s.1.dims(), "student")?;
        let device = s.0.device().clone();
        let stream = device.cuda_stream();
        let student = view::<T>(s.0, s.1, NAME)?;
        let teacher = view::<T>(t.0, t.1, NAME)?;
        let flat = view::<f32>(p.0, p.1, NAME)?;
        expect_params(flat.len(), param_count(&shared.shapes))?;
        let [w1, b1, w2, b2] = param_views(&flat, &shared.shapes);
        let params = CwtParamBuffers { w1: &w1, b1: &b1, w2: &w2, b2: &b2 };
        let mut loss: CudaSlice<f32> = device.alloc_zeros(1)?;
        shared.cuda.with(
            &stream,
            |st| CwtCuda::with_shapes(st, *shared.cpu.config(), shared.shapes),
            |cuda| cuda.forward(&dims, &student, &teacher, &params, &mut loss),
        )?;
        Ok((CudaStorage::wrap_cuda_slice(loss, device), Shape::from(())))
    }

    pub(super) fn backward<T: Float>(
        op: &GradOp,
        s: CudaArg<'_>,
        t: CudaArg<'_>,
        p: CudaArg<'_>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let shared = &op.shared;
        let dims = nchw(s.1.dims(), "student")?;
        let numel: usize = dims.iter().product();
        let device = s.0.device().clone();
        let stream = device.cuda_stream();
        let student = view::<T>(s.0, s.1, GRAD_NAME)?;
        let teacher = view::<T>(t.0, t.1, GRAD_NAME)?;
        let packed = view::<f32>(p.0, p.1, GRAD_NAME)?;
        let count = param_count(&shared.shapes);
        expect_params(packed.len(), count + 1)?;
        let upstream = packed.slice(count..count + 1);
        let [w1, b1, w2, b2] = param_views(&packed, &shared.shapes);
        let params = CwtParamBuffers { w1: &w1, b1: &b1, w2: &w2, b2: &b2 };
        // SAFETY: the kernels write every element (gradients overwritten, not accumulated).
        let mut grad_student: CudaSlice<T> = unsafe { device.alloc::<T>(numel)? };
        let mut grad_params: CudaSlice<f32> = unsafe { device.alloc::<f32>(count)? };
        {
            let [r1, r2, r3, _] = param_ranges(&shared.shapes);
            let (mut gw1, rest) = grad_params.split_at_mut(r1.end);
            let mut rest = rest;
            let (mut gb1, rest) = rest.split_at_mut(r2.len());
            let mut rest = rest;
            let (mut gw2, mut gb2) = rest.split_at_mut(r3.len());
            let grads = CwtParamGrads { w1: &mut gw1, b1: &mut gb1, w2: &mut gw2, b2: &mut gb2 };
            shared.cuda.with(
                &stream,
                |st| CwtCuda::with_shapes(st, *shared.cpu.config(), shared.shapes),
                |cuda| cuda.backward(&dims, &student, &teacher, &params, &upstream, &mut grad_student, grads),
            )?;
        }
        let param_storage = CudaStorage::wrap_cuda_slice(grad_params, device.clone());
        *op.param_grads.lock().map_err(|_| super::poisoned())? = Some(ParamGrads::Cuda(param_storage));
        Ok((CudaStorage::wrap_cuda_slice(grad_student, device), Shape::from(dims.to_vec())))
    }
}
