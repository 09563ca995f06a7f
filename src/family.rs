//! The family contract: what a loss family implements once, and what every surface derives from it.
//!
//! A family (CWD, pixel KD, ICSD, SemCKD, CWT) is a marker type implementing [`Family`]: its name (which is
//! also its kernel file `kernels/{name}.cu` and its fixtures' `loss` value), its kernels, its configuration,
//! the geometry and the device addresses of one call, and one driver, [`Family::run`], that checks a call,
//! plans it, sizes the workspace and launches through the three traits of the launch layer. From that alone,
//! written once and generic:
//!
//! * the loss object on the GPU, [`crate::cuda::LossCuda`]: construction, `reserve`, the raw-pointer layer
//!   `launch_raw` and, through [`TypedFamily`], the typed call on cudarc buffers;
//! * the host emulation of the kernels (`crate::emulator::run`, feature `emulator`), the same driver with a
//!   host launcher;
//! * the pair-loss conveniences ([`PairFamily`]: `forward`, `forward_backward`, `backward`) for the families
//!   that take a same-shape (student, teacher) pair.
//!
//! What is special stays in the family: CWD's and pixel KD's choice of kernels ([`Family::Path`]), SemCKD's
//! layer table ([`Family::Shape`]), CWT's parameters (its typed [`TypedFamily::Buffers`]).

use std::fmt;

use cudarc::driver::{DevicePtr, DevicePtrMut};
use ndarray::ArrayView4;

use crate::cpu::{CpuOutput, PairReference};

use crate::cuda::Binder;
use crate::dtype::{DType, HostFloat, KdFloat};
use crate::error::{KdError, Result};
use crate::grad::GradOptions;
use crate::launch::{DeviceInfo, Launcher, OutputSet, Scratch};
use crate::shape::Nchw;

/// One call on device addresses, as the driver receives it.
#[derive(Debug)]
pub struct RawCall<'a, F: Family + ?Sized> {
    /// The loss object's configuration.
    pub config: &'a F::Config,
    /// Which kernels to run.
    pub path: F::Path,
    /// The call's geometry.
    pub shape: &'a F::Shape,
    /// The dtype of the float inputs.
    pub dtype: DType,
    /// The device addresses.
    pub buffers: &'a F::RawBuffers,
    /// How the gradients are written.
    pub options: GradOptions,
}

/// A loss family: the one thing a family implements for every surface to derive its calls from.
pub trait Family: 'static {
    /// The family's name: its module, its kernel file `kernels/{NAME}.cu`, its fixtures' `loss` value.
    const NAME: &'static str;
    /// The entry points of its kernel file, without the dtype suffix.
    const KERNELS: &'static [&'static str];
    /// The entry points that may take more than 48 KB of dynamic shared memory (the loader opts them in).
    const LARGE_SMEM_KERNELS: &'static [&'static str] = &[];

    /// What a loss object is made for: the loss's parameters (CWT: and its channel counts).
    type Config: Clone + PartialEq + fmt::Debug + Send + Sync + 'static;
    /// The geometry of one call as the caller gives it: the `[N, C, H, W]` dims of the student for most
    /// families, the layer table for SemCKD.
    type Shape: ?Sized + fmt::Debug;
    /// The device addresses of one call (`CUdeviceptr`s, 0 for an absent output): what it writes follows
    /// from which are set.
    type RawBuffers: fmt::Debug;
    /// Which kernels a loss object runs where the family has a choice (CWD, pixel KD); `()` elsewhere.
    type Path: Copy + Default + PartialEq + fmt::Debug + Send + Sync + 'static;
    /// What a call reports back: the kernels it ran where the family has a choice, else `()`.
    type Report: fmt::Debug;

    /// Checks every field of `config`; loss objects call it on construction.
    fn validate(config: &Self::Config) -> Result<()>;

    /// The workspace (f32 words, counters) that any call on `shape` in `dtype` may need, whatever its buffers'
    /// alignment and outputs, so that a reservation makes later calls allocation-free.
    fn workspace_bound(
        config: &Self::Config,
        shape: &Self::Shape,
        dtype: DType,
        device: &dyn DeviceInfo,
    ) -> Result<(usize, usize)>;

    /// Runs one call: checks, plan, workspace, argument blocks, launches. The CUDA loss objects, the raw
    /// layer and the host emulation all come here, differing only in `device`, `scratch` and `launcher`.
    ///
    /// # Safety
    /// Every non-zero address of `call.buffers` holds what the family's raw buffers document for
    /// `call.shape` and `call.dtype`, where `launcher`'s kernels can reach it.
    unsafe fn run(
        call: RawCall<'_, Self>,
        device: &dyn DeviceInfo,
        scratch: &mut dyn Scratch,
        launcher: &mut dyn Launcher,
    ) -> Result<Self::Report>;
}

/// A family whose calls can also be made on typed cudarc buffers, checked for length and context.
pub trait TypedFamily: Family {
    /// The typed buffers of one call: inputs, the outputs wanted (`None` for those not wanted) and how the
    /// gradients are written.
    type Buffers<'a, T: KdFloat + 'a>;

    /// Checks `buffers` against `shape` and the loss object's stream (through `binder`, which keeps cudarc's
    /// cross-stream ordering until the launch is queued) and returns their device addresses.
    fn bind<'a: 's, 's, T: KdFloat>(
        config: &Self::Config,
        shape: &Self::Shape,
        buffers: Self::Buffers<'a, T>,
        binder: &mut Binder<'s>,
    ) -> Result<(Self::RawBuffers, GradOptions)>;
}

/// The typed buffers of a call of a loss on a same-shape `[N, C, H, W]` (student, teacher) pair.
pub struct PairBuffers<'a, T> {
    /// The student's logits.
    pub student: &'a dyn DevicePtr<T>,
    /// The teacher's logits.
    pub teacher: &'a dyn DevicePtr<T>,
    /// One f32: the loss.
    pub loss: Option<&'a mut dyn DevicePtrMut<f32>>,
    /// d loss / d student, in the input dtype.
    pub grad_student: Option<&'a mut dyn DevicePtrMut<T>>,
    /// d loss / d teacher, for the families and configurations that produce it (CWD with `teacher_grad`).
    pub grad_teacher: Option<&'a mut dyn DevicePtrMut<T>>,
    /// One f32 the kernels read, d total / d loss, scaling the gradients (a backward pass).
    pub upstream: Option<&'a dyn DevicePtr<f32>>,
    /// How the gradients are scaled and whether they are added into their buffers.
    pub options: GradOptions,
}

impl<'a, T> PairBuffers<'a, T> {
    /// The inputs, with no output yet and [`GradOptions::OVERWRITE`].
    pub fn new(student: &'a dyn DevicePtr<T>, teacher: &'a dyn DevicePtr<T>) -> Self {
        PairBuffers {
            student,
            teacher,
            loss: None,
            grad_student: None,
            grad_teacher: None,
            upstream: None,
            options: GradOptions::OVERWRITE,
        }
    }
}

/// The device addresses of a call of a pair loss (`CUdeviceptr`s; 0 for an absent output). The call writes
/// the loss where `loss` is set, d loss / d student where `grad_student` is (d loss / d teacher where
/// `grad_teacher` is, for the families that produce it), and scales the gradients by the device scalar at
/// `upstream` where that is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairRawBuffers {
    /// `[N, C, H, W]` student logits.
    pub student: u64,
    /// `[N, C, H, W]` teacher logits.
    pub teacher: u64,
    /// One f32: the loss.
    pub loss: u64,
    /// `[N, C, H, W]`: d loss / d student.
    pub grad_student: u64,
    /// `[N, C, H, W]`: d loss / d teacher.
    pub grad_teacher: u64,
    /// One f32 read by the kernels: d total / d loss.
    pub upstream: u64,
}

impl PairRawBuffers {
    /// The outputs a call asks for, checked for consistency; `teacher_grad` says whether the family and
    /// configuration produce the teacher's gradient.
    pub(crate) fn outputs(&self, teacher_grad: bool, options: GradOptions) -> Result<OutputSet> {
        if self.student == 0 || self.teacher == 0 {
            return Err(KdError::OutputMismatch { what: "student/teacher", fix: "both inputs need a device address" });
        }
        let grad_student = self.grad_student != 0;
        if !grad_student && self.loss == 0 {
            return Err(KdError::OutputMismatch {
                what: "loss/grad_student",
                fix: "nothing to compute: give the loss or the student gradient an address",
            });
        }
        if !grad_student && (self.grad_teacher != 0 || self.upstream != 0) {
            return Err(KdError::OutputMismatch {
                what: "grad_teacher/upstream",
                fix: "a teacher gradient or an upstream scalar needs the student gradient too",
            });
        }
        if grad_student && (self.grad_teacher != 0) != teacher_grad {
            return Err(KdError::OutputMismatch {
                what: "grad_teacher",
                fix: if teacher_grad {
                    "config.teacher_grad is set: pass a buffer for the teacher's gradient"
                } else {
                    "this loss and configuration give no teacher gradient (CWD: set config.teacher_grad); pass None"
                },
            });
        }
        Ok(OutputSet {
            loss: self.loss != 0,
            grad_student,
            grad_teacher: self.grad_teacher != 0,
            device_upstream: self.upstream != 0,
            accumulate: options.accumulate,
        })
    }
}

/// A family whose calls take a (student, teacher) pair and write the loss and d loss / d student: the pair
/// families below, and SKD and CIRKD (whose teacher may have other channels). Its loss objects get `forward`,
/// `forward_backward` and `backward`, written once on [`crate::cuda::LossCuda`].
pub trait StudentTeacherFamily: TypedFamily {
    /// The family's typed buffers for a pair call (its own extra outputs absent).
    fn pair_buffers<'a, T: KdFloat>(pair: PairBuffers<'a, T>) -> Self::Buffers<'a, T>;
}

/// A family on a same-shape `[N, C, H, W]` (student, teacher) pair: CWD, pixel KD, ICSD, DIST. Besides the
/// short calls of [`StudentTeacherFamily`], its CPU reference, emulation, fixtures, C calls and benches share the
/// pair drivers.
pub trait PairFamily: StudentTeacherFamily<Shape = [usize]> {
    /// Whether `config` asks for the teacher's gradient as well.
    fn teacher_grad(config: &Self::Config) -> bool;
    /// The CPU reference's loss and gradients (in f64).
    fn cpu<T: HostFloat>(
        config: &Self::Config,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
    ) -> Result<CpuOutput>;
    /// The family's raw buffers for a pair call (its own extra outputs absent).
    fn pair_raw(pair: PairRawBuffers) -> Result<Self::RawBuffers>;
}

/// Binds the pair part of a call: the inputs and the pair outputs, `N*C*H*W` elements each.
pub(crate) fn bind_pair<'a: 's, 's, T: KdFloat>(
    numel: usize,
    pair: PairBuffers<'a, T>,
    binder: &mut Binder<'s>,
) -> Result<(PairRawBuffers, GradOptions)> {
    let raw = PairRawBuffers {
        student: binder.input("student", pair.student, numel)?,
        teacher: binder.input("teacher", pair.teacher, numel)?,
        loss: binder.output("loss", pair.loss, 1)?,
        grad_student: binder.output("grad_student", pair.grad_student, numel)?,
        grad_teacher: binder.output("grad_teacher", pair.grad_teacher, numel)?,
        upstream: binder.optional_input("upstream", pair.upstream, 1)?,
    };
    Ok((raw, pair.options))
}

/// A pair family whose calls take the pair's buffers and nothing else (CWD, pixel KD, DIST). Declaring it one
/// gives it [`TypedFamily`] (its typed buffers are [`PairBuffers`], bound as `N*C*H*W` elements each),
/// [`StudentTeacherFamily`] (a pair call is its call) and [`PairFamily`] (its CPU reference's gradients), so
/// that such a family writes none of them.
pub trait PlainPairFamily: Family<Shape = [usize], RawBuffers = PairRawBuffers> {
    /// The CPU reference (f64) for the family's configuration.
    type Reference: PairReference<Config = Self::Config>;

    /// Whether `config` asks for the teacher's gradient as well (none by default).
    fn teacher_grad(_config: &Self::Config) -> bool {
        false
    }
}

impl<F: PlainPairFamily> PairFamily for F {
    fn teacher_grad(config: &F::Config) -> bool {
        <F as PlainPairFamily>::teacher_grad(config)
    }

    fn cpu<T: HostFloat>(
        config: &F::Config,
        student: ArrayView4<'_, T>,
        teacher: ArrayView4<'_, T>,
    ) -> Result<CpuOutput> {
        F::Reference::new(config.clone())?.gradients(student, teacher, 1.0)
    }

    fn pair_raw(pair: PairRawBuffers) -> Result<PairRawBuffers> {
        Ok(pair)
    }
}

impl<F: PlainPairFamily> TypedFamily for F {
    type Buffers<'a, T: KdFloat + 'a> = PairBuffers<'a, T>;

    fn bind<'a: 's, 's, T: KdFloat>(
        _config: &F::Config,
        shape: &[usize],
        buffers: PairBuffers<'a, T>,
        binder: &mut Binder<'s>,
    ) -> Result<(PairRawBuffers, GradOptions)> {
        bind_pair(Nchw::from_dims("student", shape)?.numel(), buffers, binder)
    }
}

impl<F: PlainPairFamily> StudentTeacherFamily for F {
    fn pair_buffers<'a, T: KdFloat>(pair: PairBuffers<'a, T>) -> PairBuffers<'a, T> {
        pair
    }
}

/// A (student, teacher) family whose only gradient is the student's (DIST, SKD, CIRKD), as the tensor adapters
/// see one: the call's shape from the two tensors' dims, its raw buffers from the pair's device addresses, and
/// its CPU reference. The candle op and the burn primitives are written once over it.
pub trait StudentGradFamily: StudentTeacherFamily {
    /// The CPU reference (f64) for the family's configuration.
    type Reference: PairReference<Config = Self::Config>;

    /// Checks the student's and the teacher's dims and runs `f` on the call's shape.
    fn with_shape<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&Self::Shape) -> Result<R>) -> Result<R>;

    /// The family's raw buffers for a pair call (`grad_teacher` must be 0: there is no teacher gradient).
    fn raw_buffers(pair: PairRawBuffers) -> Result<Self::RawBuffers>;
}
