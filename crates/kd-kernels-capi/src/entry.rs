//! What every entry point does around its family's work, written once over the core's family contract: read
//! the C parameter block into the family's configuration (checked by the family), the dtype, the gradient
//! options and the shapes, then launch on the context's loss object or run the f64 reference. A family's C
//! parameter block implements [`AbiConfig`] (its one C-specific piece: the conversion); the `extern "C"`
//! functions stay literal (cbindgen reads their signatures) and their bodies are one call into
//! [`same_shape_cuda`], [`same_shape_cpu`], [`crate::relation`] or a family's own body where it needs
//! something no other family has (PKD's level lists, CWT's projections, SemCKD's weights).

use std::ffi::c_void;

use kd::family::{Family, PairFamily, PairRawBuffers};
use kd::shape::Nchw;
use kd::{DType, GradOptions};

use crate::context::{launch, KdContext};
use crate::cpu::{self, PairCall, PerElement};
use crate::{
    guard, host_dtype, kernel_dtype, read_params, read_shape, Failure, HostDtype, KdDtype, KdGradOptions, KdStatus,
    KD_ERR_OUTPUT, KD_ERR_PARAMETER,
};

/// A family's C parameter block (`kd_*_config`).
pub(crate) trait AbiConfig: Copy {
    type Family: Family;

    /// The core's configuration, before the family's own check (which [`read_config`] runs).
    /// `teacher_grad`: whether the call asks for the teacher's gradient (CWD's configuration says so).
    fn to_config(self, teacher_grad: bool) -> Result<<Self::Family as Family>::Config, Failure>;
}

/// Implements [`AbiConfig`] for a family's C parameter block: `kd_x_config => Family`, then the conversion,
/// written as a closure of the block and the teacher-gradient flag. The impl's frame is every family's; only
/// the conversion is its own.
macro_rules! abi_config {
    ($abi:ty => $family:ty, |$params:ident, $teacher_grad:ident| $convert:block) => {
        impl $crate::entry::AbiConfig for $abi {
            type Family = $family;

            fn to_config(
                self, $teacher_grad: bool,
            ) -> Result<<$family as kd::family::Family>::Config, $crate::Failure> {
                let $params = self;
                $convert
            }
        }
    };
}

/// The core's value of a C enumeration parameter: `choices` pairs each named constant (its name, its value)
/// with what it means; an unknown value is refused with the names, so the caller sees what to pass.
pub(crate) fn named<T: Copy>(parameter: &str, value: i32, choices: &[(&str, i32, T)]) -> Result<T, Failure> {
    if let Some(&(_, _, meaning)) = choices.iter().find(|choice| choice.1 == value) {
        return Ok(meaning);
    }
    let names: Vec<String> = choices.iter().map(|(name, v, _)| format!("{name} ({v})")).collect();
    let allowed = match names.as_slice() {
        [first, second] => format!("{first} or {second}"),
        _ => format!("one of {}", names.join(", ")),
    };
    Err(Failure::new(KD_ERR_PARAMETER, format!("parameter `{parameter}` = {value} is invalid: it must be {allowed}")))
}

/// The core's configuration of the family of `P`, read from the caller's block and checked.
///
/// # Safety
/// `params` is null or points to a readable `P`.
pub(crate) unsafe fn read_config<P: AbiConfig>(
    params: *const P, teacher_grad: bool,
) -> Result<<P::Family as Family>::Config, Failure> {
    // SAFETY: forwarded from the caller.
    let config = unsafe { read_params(params, "params")? }.to_config(teacher_grad)?;
    P::Family::validate(&config)?;
    Ok(config)
}

/// What every call reads besides its tensors: the configuration, the dtype (a kernel dtype on the GPU, any
/// `kd_dtype` on the CPU) and the gradient options.
pub(crate) struct Prelude<F: Family, D> {
    pub(crate) config: F::Config,
    pub(crate) dtype: D,
    pub(crate) options: GradOptions,
}

/// The prelude of a `kd_*_cuda` call.
///
/// # Safety
/// `params` is null or points to a readable `P`.
pub(crate) unsafe fn device<P: AbiConfig>(
    params: *const P, dtype: KdDtype, options: KdGradOptions, teacher_grad: bool,
) -> Result<Prelude<P::Family, DType>, Failure> {
    // SAFETY: forwarded from the caller.
    let config = unsafe { read_config(params, teacher_grad)? };
    Ok(Prelude { config, dtype: kernel_dtype(dtype)?, options: options.to_crate()? })
}

/// The prelude of a `kd_*_cpu` call.
///
/// # Safety
/// `params` is null or points to a readable `P`.
pub(crate) unsafe fn host<P: AbiConfig>(
    params: *const P, dtype: KdDtype, options: KdGradOptions, teacher_grad: bool,
) -> Result<Prelude<P::Family, HostDtype>, Failure> {
    // SAFETY: forwarded from the caller.
    let config = unsafe { read_config(params, teacher_grad)? };
    Ok(Prelude { config, dtype: host_dtype(dtype)?, options: options.to_crate()? })
}

/// A caller's shape: `ndim` dimensions at the pointer.
pub(crate) type RawShape = (*const i64, usize);

/// The raw device buffers of the family of `P`, or why the call's outputs do not make one.
pub(crate) type DeviceBuffers<P> = kd::Result<<<P as AbiConfig>::Family as Family>::RawBuffers>;

/// The body of a `kd_*_cuda` entry point of a family whose tensors all have the student's shape (CWD, pixel
/// KD, DIST, ICSD): `buffers` as the family takes them.
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble): `ctx` from `kd_context_create`; `params` and the
/// shape readable; `stream` of the context's device or null; non-zero addresses device memory of that
/// context sized for the shape.
pub(crate) unsafe fn same_shape_cuda<P: AbiConfig>(
    ctx: *mut KdContext, params: *const P, shape: RawShape, dtype: KdDtype,
    (buffers, teacher_grad): (DeviceBuffers<P>, bool), options: KdGradOptions, stream: *mut c_void,
) -> KdStatus
where
    P::Family: Family<Shape = [usize]>,
{
    guard(|| {
        // SAFETY: forwarded from the caller.
        let call = unsafe { device(params, dtype, options, teacher_grad)? };
        let shape = unsafe { read_shape(shape.0, shape.1)? };
        let buffers = buffers?;
        // SAFETY: forwarded from the caller.
        unsafe { launch::<P::Family>(ctx, &call.config, &shape, call.dtype, &buffers, call.options, stream) }
    })
}

/// A pair family's raw device buffers from the addresses of a `kd_*_cuda` call, and whether it asks for the
/// teacher's gradient.
pub(crate) fn pair_buffers<P: AbiConfig>(pair: PairRawBuffers) -> (DeviceBuffers<P>, bool)
where
    P::Family: PairFamily,
{
    let teacher_grad = pair.grad_teacher != 0;
    (P::Family::pair_raw(pair), teacher_grad)
}

/// The host pointers of a student-teacher call: the inputs and the pair outputs (null: not wanted).
#[derive(Clone, Copy)]
pub(crate) struct HostPair {
    pub(crate) student: *const c_void,
    pub(crate) teacher: *const c_void,
    pub(crate) loss: *mut f64,
    pub(crate) grad_student: *mut c_void,
    pub(crate) grad_teacher: *mut c_void,
}

impl HostPair {
    /// A teacher gradient is a by-product of the student's: asking for it alone is an error.
    pub(crate) fn check(&self) -> crate::Outcome {
        if self.grad_student.is_null() && !self.grad_teacher.is_null() {
            return Err(Failure::new(
                KD_ERR_OUTPUT,
                "grad_teacher: a teacher gradient needs the student gradient too; pass grad_student",
            ));
        }
        Ok(())
    }
}

/// The body of a `kd_*_cpu` entry point of a same-shape family: `job` turns the configuration, the checked
/// shape and the options into the per-dtype work.
///
/// # Safety
/// The CPU entry points' contract (the header's preamble): `params` and the shape readable; the tensors
/// contiguous NCHW of the shape in `dtype`; outputs null or writable (initialised, with `accumulate`).
pub(crate) unsafe fn same_shape_cpu<P: AbiConfig, J: PerElement>(
    params: *const P, shape: RawShape, dtype: KdDtype, (options, teacher_grad): (KdGradOptions, bool),
    job: impl FnOnce(<P::Family as Family>::Config, Nchw, GradOptions) -> Result<J, Failure>,
) -> KdStatus {
    guard(|| {
        // SAFETY: forwarded from the caller.
        let call = unsafe { host(params, dtype, options, teacher_grad)? };
        let dims = unsafe { read_shape(shape.0, shape.1)? };
        let shape = Nchw::from_dims("student", &dims)?;
        cpu::dispatch(call.dtype, job(call.config, shape, call.options)?)
    })
}

/// The body of a `kd_*_cpu` entry point of a pair family (its reference's `forward_backward`).
///
/// # Safety
/// As [`same_shape_cpu`].
pub(crate) unsafe fn pair_cpu<P: AbiConfig>(
    params: *const P, shape: RawShape, dtype: KdDtype, io: HostPair, options: KdGradOptions,
) -> KdStatus
where
    P::Family: PairFamily,
{
    let teacher_grad = !io.grad_teacher.is_null();
    // SAFETY: forwarded from the caller.
    unsafe {
        same_shape_cpu(params, shape, dtype, (options, teacher_grad), |config, shape, options| {
            io.check()?;
            Ok(PairCall::<P::Family> { config, shape, io, options })
        })
    }
}
