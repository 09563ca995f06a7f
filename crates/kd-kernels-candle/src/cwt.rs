//! CWT as a candle op: gradients reach the student features and the MLP's four parameters.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType as CandleDType, Layout, Shape, Tensor};
use ndarray::{ArrayView1, ArrayView2};

use super::{candle_error, cpu_slice, cpu_view4, dispatch_host, HostElem, PerHostDtype};
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
        student.apply_op3(&teacher, &params, ForwardOp { shared: self.shared.clone() })
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

impl candle_core::CustomOp3 for ForwardOp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        struct Job<'a> {
            shared: &'a Shared,
            s: (&'a CpuStorage, &'a Layout),
            t: (&'a CpuStorage, &'a Layout),
            params: &'a [f32],
        }
        impl PerHostDtype for Job<'_> {
            type Out = (CpuStorage, Shape);
            fn run<T: HostElem>(self) -> candle_core::Result<Self::Out> {
                let student = cpu_view4::<T>(self.s.0, self.s.1, "student", NAME)?;
                let teacher = cpu_view4::<T>(self.t.0, self.t.1, "teacher", NAME)?;
                let params = mlp_params(self.params, &self.shared.shapes)?;
                let loss = self.shared.cpu.forward(student, teacher, &params).map_err(candle_error)?;
                Ok(super::cpu_scalar(loss))
            }
        }
        let params = cpu_slice::<f32>(s3, l3, NAME)?;
        expect_params(params.len(), param_count(&self.shared.shapes))?;
        dispatch_host(s1.dtype(), NAME, Job { shared: &self.shared, s: (s1, l1), t: (s2, l2), params })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(&self.shared, (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        student: &Tensor,
        teacher: &Tensor,
        params: &Tensor,
        _loss: &Tensor,
        grad_loss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let upstream = grad_loss.to_dtype(CandleDType::F32)?.reshape(1)?;
        let packed = Tensor::cat(&[params, &upstream], 0)?;
        let param_grads = Arc::new(Mutex::new(None));
        let grad_op = GradOp { shared: self.shared.clone(), param_grads: param_grads.clone() };
        let grad_student = student.apply_op3_no_bwd(teacher, &packed, &grad_op)?;
        let grad_params = params.apply_op1_no_bwd(&TakeParamGrads { param_grads })?;
        Ok((Some(grad_student), None, Some(grad_params)))
    }
}

impl candle_core::CustomOp3 for GradOp {
    fn name(&self) -> &'static str {
        GRAD_NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        struct Job<'a> {
            op: &'a GradOp,
            s: (&'a CpuStorage, &'a Layout),
            t: (&'a CpuStorage, &'a Layout),
            packed: &'a [f32],
        }
        impl PerHostDtype for Job<'_> {
            type Out = (CpuStorage, Shape);
            fn run<T: HostElem>(self) -> candle_core::Result<Self::Out> {
                let shared = &self.op.shared;
                let student = cpu_view4::<T>(self.s.0, self.s.1, "student", GRAD_NAME)?;
                let teacher = cpu_view4::<T>(self.t.0, self.t.1, "teacher", GRAD_NAME)?;
                let p = param_count(&shared.shapes);
                let params = mlp_params(&self.packed[..p], &shared.shapes)?;
                let upstream = self.packed[p] as f64;
                let out = shared.cpu.backward(student, teacher, &params, upstream).map_err(candle_error)?;
                let param_grads: Vec<f32> = out
                    .grad_w1
                    .iter()
                    .chain(out.grad_b1.iter())
                    .chain(out.grad_w2.iter())
                    .chain(out.grad_b2.iter())
                    .map(|&g| g as f32)
                    .collect();
                *self.op.param_grads.lock().map_err(|_| poisoned())? = Some(ParamGrads::Cpu(param_grads));
                let shape = Shape::from(out.grad_student.dim());
                Ok((super::cpu_grad::<T>(&out.grad_student), shape))
            }
        }
        let packed = cpu_slice::<f32>(s3, l3, GRAD_NAME)?;
        expect_params(packed.len(), param_count(&self.shared.shapes) + 1)?;
        dispatch_host(s1.dtype(), GRAD_NAME, Job { op: self, s: (s1, l1), t: (s2, l2), packed })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::backward(self, (s1, l1), (s2, l2), (s3, l3))
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
    use candle_core::{CudaStorage, Layout, Shape};
    use cudarc::driver::{CudaSlice, CudaView};

    use super::super::cuda::view;
    use super::super::{dispatch, nchw, Float, PerDtype};
    use super::{expect_params, param_count, param_ranges, GradOp, ParamGrads, Shared, GRAD_NAME, NAME};
    use kd_kernels::cwt::{CwtCuda, CwtParamBuffers, CwtParamGrads, CwtShapes};

    type Arg<'a> = (&'a CudaStorage, &'a Layout);

    /// The four parameters' views in the flat vector.
    fn param_views<'a>(flat: &CudaView<'a, f32>, shapes: &CwtShapes) -> [CudaView<'a, f32>; 4] {
        param_ranges(shapes).map(|r| flat.slice(r))
    }

    pub(super) fn forward(
        shared: &Shared,
        s: Arg<'_>,
        t: Arg<'_>,
        p: Arg<'_>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        struct Job<'a> {
            shared: &'a Shared,
            s: Arg<'a>,
            t: Arg<'a>,
            p: Arg<'a>,
        }
        impl PerDtype for Job<'_> {
            type Out = (CudaStorage, Shape);
            fn run<T: Float>(self) -> candle_core::Result<Self::Out> {
                let dims = nchw(self.s.1.dims(), "student")?;
                let device = self.s.0.device().clone();
                let stream = device.cuda_stream();
                let student = view::<T>(self.s.0, self.s.1, NAME)?;
                let teacher = view::<T>(self.t.0, self.t.1, NAME)?;
                let flat = view::<f32>(self.p.0, self.p.1, NAME)?;
                expect_params(flat.len(), param_count(&self.shared.shapes))?;
                let [w1, b1, w2, b2] = param_views(&flat, &self.shared.shapes);
                let params = CwtParamBuffers { w1: &w1, b1: &b1, w2: &w2, b2: &b2 };
                let mut loss: CudaSlice<f32> = device.alloc_zeros(1)?;
                self.shared.cuda.with(
                    &stream,
                    |st| CwtCuda::with_shapes(st, *self.shared.cpu.config(), self.shared.shapes),
                    |cuda| cuda.forward(&dims, &student, &teacher, &params, &mut loss),
                )?;
                Ok((CudaStorage::wrap_cuda_slice(loss, device), Shape::from(())))
            }
        }
        dispatch(s.0.dtype(), NAME, Job { shared, s, t, p })
    }

    pub(super) fn backward(
        op: &GradOp,
        s: Arg<'_>,
        t: Arg<'_>,
        p: Arg<'_>,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        struct Job<'a> {
            op: &'a GradOp,
            s: Arg<'a>,
            t: Arg<'a>,
            p: Arg<'a>,
        }
        impl PerDtype for Job<'_> {
            type Out = (CudaStorage, Shape);
            fn run<T: Float>(self) -> candle_core::Result<Self::Out> {
                let shared = &self.op.shared;
                let dims = nchw(self.s.1.dims(), "student")?;
                let numel: usize = dims.iter().product();
                let device = self.s.0.device().clone();
                let stream = device.cuda_stream();
                let student = view::<T>(self.s.0, self.s.1, GRAD_NAME)?;
                let teacher = view::<T>(self.t.0, self.t.1, GRAD_NAME)?;
                let packed = view::<f32>(self.p.0, self.p.1, GRAD_NAME)?;
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
                *self.op.param_grads.lock().map_err(|_| super::poisoned())? = Some(ParamGrads::Cuda(param_storage));
                Ok((CudaStorage::wrap_cuda_slice(grad_student, device), Shape::from(dims.to_vec())))
            }
        }
        dispatch(s.0.dtype(), GRAD_NAME, Job { op, s, t, p })
    }
}
