//! What the entry points of the families with a student gradient alone and a teacher of its own shape share
//! (SKD, CIRKD: a student `[N, Cs, H, W]` and a teacher `[N, Ct, H, W]` whose channel counts may differ, each
//! with its own shape, as IFVD and CWT take them). The family's side is the core's
//! [`StudentGradFamily`]: how it checks the two shapes, its raw buffers, its CPU reference. The bodies of its
//! two entry points are [`cuda`] and [`cpu`]; what is left to each family is its [`AbiConfig`].

use std::ffi::c_void;

use kd::cpu::PairReference;
use kd::family::{PairRawBuffers, PlainPairFamily, StudentGradFamily};
use kd::shape::Nchw;
use kd::GradOptions;

use crate::context::{launch, KdContext};
use crate::cpu::{self, Element, PerElement};
use crate::entry::{self, AbiConfig, HostPair, RawShape};
use crate::{guard, read_shape, Failure, KdDtype, KdGradOptions, KdStatus};

/// The body of a `kd_*_cuda` relation entry point: `shapes` the student's and the teacher's.
///
/// # Safety
/// The CUDA entry points' contract (the header's preamble), for the two shapes.
pub(crate) unsafe fn cuda<P: AbiConfig>(
    ctx: *mut KdContext, params: *const P, shapes: [RawShape; 2], dtype: KdDtype, pair: PairRawBuffers,
    options: KdGradOptions, stream: *mut c_void,
) -> KdStatus
where
    P::Family: StudentGradFamily,
{
    guard(|| {
        // SAFETY: forwarded from the caller.
        let call = unsafe { entry::device(params, dtype, options, false)? };
        let (student, teacher) = unsafe { read_pair(shapes)? };
        let buffers = P::Family::raw_buffers(pair)?;
        let mut outcome = Ok(());
        P::Family::with_shape(&student, &teacher, |shape| {
            // SAFETY: forwarded from the caller.
            outcome =
                unsafe { launch::<P::Family>(ctx, &call.config, shape, call.dtype, &buffers, call.options, stream) };
            Ok(())
        })?;
        outcome
    })
}

/// The student's and the teacher's dims.
///
/// # Safety
/// Each shape is null or `ndim` readable `i64`s.
unsafe fn read_pair([student, teacher]: [RawShape; 2]) -> Result<(Vec<usize>, Vec<usize>), Failure> {
    // SAFETY: forwarded from the caller.
    unsafe { Ok((read_shape(student.0, student.1)?, read_shape(teacher.0, teacher.1)?)) }
}

/// The body of a `kd_*_cpu` relation entry point (no teacher gradient: `io.grad_teacher` is null).
///
/// # Safety
/// The CPU entry points' contract (the header's preamble), for the two shapes; `grad_student` of the
/// student's.
pub(crate) unsafe fn cpu<P: AbiConfig>(
    params: *const P, shapes: [RawShape; 2], dtype: KdDtype, io: HostPair, options: KdGradOptions,
) -> KdStatus
where
    P::Family: StudentGradFamily,
{
    guard(|| {
        // SAFETY: forwarded from the caller.
        let call = unsafe { entry::host(params, dtype, options, false)? };
        let (student, teacher) = unsafe { read_pair(shapes)? };
        P::Family::with_shape(&student, &teacher, |_| Ok(()))?;
        let job = CpuCall::<P::Family> {
            reference: <P::Family as PlainPairFamily>::Reference::new(call.config)?,
            shapes: (Nchw::from_dims("student", &student)?, Nchw::from_dims("teacher", &teacher)?),
            io,
            options: call.options,
        };
        cpu::dispatch(call.dtype, job)
    })
}

struct CpuCall<F: StudentGradFamily> {
    reference: F::Reference,
    /// The student's and the teacher's dims, checked by the family.
    shapes: (Nchw, Nchw),
    io: HostPair,
    options: GradOptions,
}

impl<F: StudentGradFamily> PerElement for CpuCall<F> {
    fn run<T: Element>(self) -> crate::Outcome {
        let io = self.io;
        // SAFETY: the entry point's contract: host tensors of the shapes in this dtype.
        let student = unsafe { cpu::view::<T>("student", io.student, &self.shapes.0)? };
        let teacher = unsafe { cpu::view::<T>("teacher", io.teacher, &self.shapes.1)? };
        let (loss, grad) = if io.grad_student.is_null() {
            (self.reference.loss(student, teacher)?, None)
        } else {
            let out = self.reference.gradients(student, teacher, 1.0)?;
            (out.loss, Some(out.grad_student))
        };
        // SAFETY: the entry point's contract: null or writable outputs, the gradient of the student's shape.
        unsafe { cpu::write_outputs::<T>((io.loss, loss), (io.grad_student, grad.as_ref()), self.options) };
        Ok(())
    }
}
