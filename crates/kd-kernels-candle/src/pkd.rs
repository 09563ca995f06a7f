//! PKD as a candle op over a list of levels: gradients reach every student level. One fused call of the
//! crate (the CPU reference, or every level in the same launches of the kernels on candle's stream) on the
//! levels' own storage, attached to candle's graph by `fused::attach` (first-order only).

use std::sync::Arc;

use candle_core::{Device, Layout, StorageRef, Tensor};
use ndarray::ArrayView4;

use super::fused::{
    attach, check_float, cpu_storage, same_device, unsupported_device, Engines, Outputs as FusedOutputs,
};
use super::{candle_error, cpu_slice, dispatch_host, HostElem, PerHostDtype};
use kd_kernels::error::KdError;
use kd_kernels::pkd::{PkdConfig, PkdCpu, PkdLevels};

const NAME: &str = "kd-kernels-pkd";
const ATTACH_NAME: &str = "kd-kernels-pkd-grad";

/// PKD ([`kd_kernels::pkd`]) as a candle op: `loss(&student, &teacher)` over the levels `student[l]`,
/// `teacher[l]` (one `[N, C_l, H_l, W_l]` shape per level for both: resize the student first where they
/// differ, as mmrazor's `PKDLoss` does), one dtype (`f32`, `f16`, `bf16`; also `f64` on the CPU) and one
/// device, is an f32 scalar whose backward pass writes every student level's gradient. The teacher is a
/// constant (no gradient is computed for it). First-order gradients only: they are computed in the
/// forward and attached to the loss.
#[derive(Clone)]
pub struct Pkd {
    shared: Arc<Shared>,
}

type Shared = Engines<PkdCpu, kd_kernels::pkd::Pkd>;
type Outputs = FusedOutputs<Vec<Tensor>>;

impl Pkd {
    /// Validates `config`.
    pub fn new(config: PkdConfig) -> candle_core::Result<Self> {
        Ok(Pkd { shared: Engines::new(PkdCpu::new(config))? })
    }

    /// The configuration.
    pub fn config(&self) -> &PkdConfig {
        self.shared.cpu.config()
    }

    /// `loss_weight * sum_l 0.5 * mean (S_hat_l - T_hat_l)^2` over the levels.
    pub fn loss(&self, student: &[Tensor], teacher: &[Tensor]) -> candle_core::Result<Tensor> {
        let levels = check(student, teacher)?;
        let contiguous = |side: &[Tensor]| side.iter().map(Tensor::contiguous).collect::<candle_core::Result<Vec<_>>>();
        let (student, teacher) = (contiguous(student)?, contiguous(teacher)?);
        let want_grads = student.iter().any(Tensor::track_op);
        let device = student[0].device().clone();
        let job = Job { shared: &self.shared, student: &student, teacher: &teacher, levels: &levels, want_grads };
        let out = match &device {
            Device::Cpu => dispatch_host(student[0].dtype(), NAME, job)?,
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => super::dispatch(student[0].dtype(), NAME, job)?,
            _ => return Err(unsupported_device(NAME, &device)),
        };
        attach(out.loss, ATTACH_NAME, student.iter().zip(out.grads.into_iter().flatten()))
    }
}

/// Counts, shapes (the crate's level checks), dtypes and devices, in the crate's words.
fn check(student: &[Tensor], teacher: &[Tensor]) -> candle_core::Result<PkdLevels> {
    let s: Vec<&[usize]> = student.iter().map(Tensor::dims).collect();
    let t: Vec<&[usize]> = teacher.iter().map(Tensor::dims).collect();
    let levels = PkdLevels::new(&s, &t).map_err(candle_error)?;
    let first = &student[0];
    check_float(first.device(), first.dtype(), NAME)?;
    for (side, list) in [("student", student), ("teacher", teacher)] {
        for (l, x) in list.iter().enumerate() {
            if x.dtype() != first.dtype() {
                return Err(candle_error(KdError::DTypeMismatch {
                    what: format!("{side} level {l}"),
                    expected: format!("{:?} (student level 0's: every level has one dtype)", first.dtype()),
                    got: format!("{:?}", x.dtype()),
                }));
            }
            same_device(first, x, NAME)?;
        }
    }
    #[cfg(feature = "cuda")]
    if first.device().is_cuda() && levels.len() > kd_kernels::pkd::MAX_LEVELS {
        return Err(candle_error(KdError::TooLarge {
            what: "PKD levels",
            detail: format!(
                "{} levels, but one CUDA call takes at most {}; split them into several calls and add the losses",
                levels.len(),
                kd_kernels::pkd::MAX_LEVELS
            ),
        }));
    }
    Ok(levels)
}

/// Read guards on the storage of a list of levels, with their layouts.
fn read(side: &[Tensor]) -> Vec<(StorageRef<'_>, &Layout)> {
    side.iter().map(Tensor::storage_and_layout).collect()
}

/// The levels of one side as views of their CPU storage.
fn cpu_levels<'a, T: HostElem>(
    guards: &'a [(StorageRef<'_>, &Layout)],
    levels: &PkdLevels,
) -> candle_core::Result<Vec<ArrayView4<'a, T>>> {
    guards
        .iter()
        .zip(levels.shapes())
        .map(|((storage, layout), shape)| {
            let data = cpu_slice::<T>(cpu_storage(storage, NAME)?, layout, NAME)?;
            ArrayView4::from_shape(shape.dims(), data)
                .map_err(|e| candle_error(KdError::TooLarge { what: "pkd level", detail: e.to_string() }))
        })
        .collect()
}

/// The levels of one side as views of their CUDA storage.
#[cfg(feature = "cuda")]
fn cuda_levels<'a, T: super::Float>(
    guards: &'a [(StorageRef<'_>, &Layout)],
) -> candle_core::Result<Vec<cudarc::driver::CudaView<'a, T>>> {
    guards
        .iter()
        .map(|(storage, layout)| super::cuda::view::<T>(super::fused::cuda_storage(storage, NAME)?, layout, NAME))
        .collect()
}

/// One call in the element type of the inputs.
struct Job<'a> {
    shared: &'a Shared,
    student: &'a [Tensor],
    teacher: &'a [Tensor],
    levels: &'a PkdLevels,
    want_grads: bool,
}

impl PerHostDtype for Job<'_> {
    type Out = Outputs;

    fn run<T: HostElem>(self) -> candle_core::Result<Outputs> {
        let (student_guards, teacher_guards) = (read(self.student), read(self.teacher));
        let (s, t) = (cpu_levels::<T>(&student_guards, self.levels)?, cpu_levels::<T>(&teacher_guards, self.levels)?);
        let cpu = &self.shared.cpu;
        let (loss, grads) = if self.want_grads {
            let out = cpu.forward_backward(&s, &t).map_err(candle_error)?;
            (out.loss, Some(out.grad_student))
        } else {
            (cpu.forward(&s, &t).map_err(candle_error)?, None)
        };
        let grads = grads
            .map(|grads| {
                grads
                    .iter()
                    .map(|g| {
                        Tensor::from_vec(g.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>(), g.shape(), &Device::Cpu)
                    })
                    .collect::<candle_core::Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(Outputs { loss: Tensor::new(loss as f32, &Device::Cpu)?, grads })
    }
}

#[cfg(feature = "cuda")]
impl super::PerDtype for Job<'_> {
    type Out = Outputs;

    fn run<T: super::Float>(self) -> candle_core::Result<Outputs> {
        use super::fused::{cuda_storage, tensor};
        use candle_core::backend::BackendStorage;
        use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

        let (student_guards, teacher_guards) = (read(self.student), read(self.teacher));
        let (s, t) = (cuda_levels::<T>(&student_guards)?, cuda_levels::<T>(&teacher_guards)?);
        let device = cuda_storage(&student_guards[0].0, NAME)?.device().clone();
        let stream = device.cuda_stream();
        let s_refs: Vec<&dyn DevicePtr<T>> = s.iter().map(|v| v as &dyn DevicePtr<T>).collect();
        let t_refs: Vec<&dyn DevicePtr<T>> = t.iter().map(|v| v as &dyn DevicePtr<T>).collect();
        let mut loss: CudaSlice<f32> = device.alloc_zeros(1)?;
        let dims: Vec<[usize; 4]> = self.levels.shapes().iter().map(|s| s.dims()).collect();
        let mut grads: Vec<CudaSlice<T>> = Vec::new();
        if self.want_grads {
            for d in &dims {
                // SAFETY: the kernels write every element of every level's gradient (overwritten, not added).
                grads.push(unsafe { device.alloc::<T>(d.iter().product())? });
            }
        }
        let config = *self.shared.cpu.config();
        self.shared.cuda.with(
            &stream,
            |st| kd_kernels::pkd::PkdCuda::new(st, config),
            |cuda| {
                let grad_refs: Vec<&mut dyn DevicePtrMut<T>> =
                    grads.iter_mut().map(|g| g as &mut dyn DevicePtrMut<T>).collect();
                if self.want_grads {
                    cuda.forward_backward(self.levels, &s_refs, &t_refs, &mut loss, grad_refs)
                } else {
                    cuda.forward(self.levels, &s_refs, &t_refs, &mut loss)
                }
            },
        )?;
        let grads = self
            .want_grads
            .then(|| grads.into_iter().zip(&dims).map(|(g, d)| tensor(g, &device, d.to_vec())).collect());
        Ok(Outputs { loss: tensor(loss, &device, Vec::new()), grads })
    }
}
