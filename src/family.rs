//! The family contract: what a loss family implements once, and what every surface derives from it.
//!
//! A family (each row of the registry, `src/families.rs`) is a marker type implementing [`Family`]: its name
//! (which is also its kernel file `kernels/{name}.cu` and its fixtures' `loss` value), its kernels, its
//! configuration, the geometry and the device addresses of one call, and one driver, [`Family::run`], that
//! checks a call, plans it, sizes the workspace and launches through the three traits of the launch layer. From that alone,
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
use crate::launch::{DeviceInfo, Machine, OutputSet};
use crate::shape::Nchw;

/// One call on device addresses, as the driver receives it. `S` is the call's geometry: the family's
/// [`Family::Shape`] as the caller gives it, or its checked form inside a driver ([`NchwFamily`]'s [`Nchw`]).
#[derive(Debug)]
pub struct RawCall<'a, F: Family + ?Sized, S: ?Sized = <F as Family>::Shape> {
    /// The loss object's configuration.
    pub config: &'a F::Config,
    /// Which kernels to run.
    pub path: F::Path,
    /// The call's geometry.
    pub shape: &'a S,
    /// The dtype of the float inputs.
    pub dtype: DType,
    /// The device addresses.
    pub buffers: &'a F::RawBuffers,
    /// How the gradients are written.
    pub options: GradOptions,
}

impl<'a, F: Family + ?Sized, S: ?Sized> RawCall<'a, F, S> {
    /// The same call on `shape`: the geometry a driver checked from the caller's.
    pub(crate) fn on<'b, T: ?Sized>(&self, shape: &'b T) -> RawCall<'b, F, T>
    where
        'a: 'b,
    {
        let RawCall { config, path, dtype, buffers, options, .. } = *self;
        RawCall { config, path, shape, dtype, buffers, options }
    }

    /// Checks the configuration (a raw call may come without a loss object that checked it) and the gradient
    /// options: what every driver does before it reads the buffers.
    pub(crate) fn check(&self) -> Result<()> {
        self.config.validate()?;
        self.options.validate()
    }
}

impl<F: Family + ?Sized, S: ?Sized> Clone for RawCall<'_, F, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family + ?Sized, S: ?Sized> Copy for RawCall<'_, F, S> {}

/// What a family's workspace bound depends on: the loss object's configuration, and the geometry, dtype and
/// device of the calls it is sized for. `S` as for [`RawCall`].
pub struct Sizing<'a, F: Family + ?Sized, S: ?Sized = <F as Family>::Shape> {
    /// The loss object's configuration.
    pub config: &'a F::Config,
    /// The calls' geometry.
    pub shape: &'a S,
    /// The dtype of the float inputs.
    pub dtype: DType,
    /// The device the calls run on.
    pub device: &'a dyn DeviceInfo,
}

impl<'a, F: Family + ?Sized, S: ?Sized> Sizing<'a, F, S> {
    /// The same sizing on `shape`, as [`RawCall::on`].
    pub(crate) fn on<'b, T: ?Sized>(&self, shape: &'b T) -> Sizing<'b, F, T>
    where
        'a: 'b,
    {
        Sizing { config: self.config, shape, dtype: self.dtype, device: self.device }
    }
}

impl<F: Family + ?Sized, S: ?Sized> Clone for Sizing<'_, F, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family + ?Sized, S: ?Sized> Copy for Sizing<'_, F, S> {}

/// A family's kernel file `kernels/{name}.cu`: its name (also the family's, and its fixtures' `loss` value),
/// its entry points without the dtype suffix, those that may take more than 48 KB of dynamic shared
/// memory (the loader opts them in), and the static shared memory of those launched with dynamic shared
/// memory. One value, so that a family states its kernels in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFile {
    /// The file's name, without `.cu`.
    pub name: &'static str,
    /// The entry points.
    pub kernels: &'static [&'static str],
    /// The entry points opted in to large dynamic shared memory.
    pub large_smem: &'static [&'static str],
    /// `(entry point, bytes)`: the static shared memory of every entry point launched with dynamic shared
    /// memory, as the host build of the kernel uses it (the GPU build's, in ptxas's report, is within a few
    /// bytes of it). The emulator gives these kernels the per-block limit less this, and fails a launch whose
    /// kernel's static shared memory exceeds it, so that it cannot go stale unseen.
    pub static_smem: &'static [(&'static str, usize)],
}

impl KernelFile {
    /// `kernels/{name}.cu` with the entry points `kernels`, none with large shared memory.
    pub const fn new(name: &'static str, kernels: &'static [&'static str]) -> Self {
        KernelFile { name, kernels, large_smem: &[], static_smem: &[] }
    }

    /// The same file whose entry points `large_smem` may take more than 48 KB of dynamic shared memory.
    pub const fn with_large_smem(self, large_smem: &'static [&'static str]) -> Self {
        KernelFile { large_smem, ..self }
    }

    /// The same file whose entry points launched with dynamic shared memory have `static_smem` (`(entry point,
    /// bytes)`, see [`KernelFile::static_smem`]).
    pub const fn with_static_smem(self, static_smem: &'static [(&'static str, usize)]) -> Self {
        KernelFile { static_smem, ..self }
    }
}

/// A family's configuration: what a loss object is made for, checked once on construction and again by the
/// driver on every raw call. A trait so that [`Family`] checks it without a body per family.
pub trait FamilyConfig: Clone + PartialEq + fmt::Debug + Send + Sync + 'static {
    /// Checks every field.
    fn validate(&self) -> Result<()>;
}

/// A loss family: the one thing a family implements for every surface to derive its calls from.
pub trait Family: 'static {
    /// The family's kernel file.
    const FILE: KernelFile;
    /// The family's name: its module, its kernel file `kernels/{NAME}.cu`, its fixtures' `loss` value.
    const NAME: &'static str = Self::FILE.name;
    /// The entry points of its kernel file, without the dtype suffix.
    const KERNELS: &'static [&'static str] = Self::FILE.kernels;
    /// The entry points that may take more than 48 KB of dynamic shared memory (the loader opts them in).
    const LARGE_SMEM_KERNELS: &'static [&'static str] = Self::FILE.large_smem;

    /// What a loss object is made for: the loss's parameters (CWT: and its channel counts).
    type Config: FamilyConfig;
    /// The geometry of one call as the caller gives it: the `[N, C, H, W]` dims of the student for most
    /// families, the layer table for SemCKD.
    type Shape: ?Sized + fmt::Debug;
    /// The device addresses of one call (`CUdeviceptr`s, 0 for an absent output): what it writes follows
    /// from which are set.
    type RawBuffers: fmt::Debug;
    /// Which kernels a loss object runs where the family has a choice (CWD, pixel KD), and which a call ran
    /// (what [`Family::run`] reports: never `Auto`); `()` elsewhere.
    type Path: Copy + Default + PartialEq + fmt::Debug + Send + Sync + 'static;

    /// Checks every field of `config`; loss objects call it on construction.
    fn validate(config: &Self::Config) -> Result<()> {
        config.validate()
    }

    /// The workspace (f32 words, counters) that any call on `at.shape` in `at.dtype` may need, whatever its
    /// buffers' alignment and outputs, so that a reservation makes later calls allocation-free.
    fn workspace_bound(at: Sizing<'_, Self>) -> Result<(usize, usize)>;

    /// Runs one call: checks, plan, workspace, argument blocks, launches; returns the path it took. The CUDA
    /// loss objects, the raw layer and the host emulation all come here, differing only in `on`.
    ///
    /// # Safety
    /// Every non-zero address of `call.buffers` holds what the family's raw buffers document for
    /// `call.shape` and `call.dtype`, where `on.launcher`'s kernels can reach it.
    unsafe fn run(call: RawCall<'_, Self>, on: Machine<'_>) -> Result<Self::Path>;
}

/// A family whose calls' geometry is one `[N, C, H, W]` student (CWD, pixel KD, ICSD, DIST). Declaring it one
/// gives it [`Family`]: the caller's dims are checked into an [`Nchw`] once, here, and the family's driver
/// starts from that.
pub trait NchwFamily: 'static {
    /// As [`Family::FILE`].
    const FILE: KernelFile;
    /// As [`Family::Config`].
    type Config: FamilyConfig;
    /// As [`Family::RawBuffers`].
    type RawBuffers: fmt::Debug;
    /// As [`Family::Path`].
    type Path: Copy + Default + PartialEq + fmt::Debug + Send + Sync + 'static;

    /// [`Family::workspace_bound`] on the checked student shape.
    fn workspace(at: Sizing<'_, Self, Nchw>) -> Result<(usize, usize)>
    where
        Self: Family;

    /// [`Family::run`] on the checked student shape.
    ///
    /// # Safety
    /// As for [`Family::run`].
    unsafe fn run_nchw(call: RawCall<'_, Self, Nchw>, on: Machine<'_>) -> Result<<Self as Family>::Path>
    where
        Self: Family;
}

impl<F: NchwFamily> Family for F {
    const FILE: KernelFile = <F as NchwFamily>::FILE;
    type Config = <F as NchwFamily>::Config;
    type Shape = [usize];
    type RawBuffers = <F as NchwFamily>::RawBuffers;
    type Path = <F as NchwFamily>::Path;

    fn workspace_bound(at: Sizing<'_, F>) -> Result<(usize, usize)> {
        F::workspace(at.on(&Nchw::from_dims("student", at.shape)?))
    }

    unsafe fn run(call: RawCall<'_, F>, on: Machine<'_>) -> Result<F::Path> {
        let shape = Nchw::from_dims("student", call.shape)?;
        // SAFETY: the caller's contract, on the same call.
        unsafe { F::run_nchw(call.on(&shape), on) }
    }
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

/// The geometry of a call on a (student, teacher) pair, as [`PlainPairFamily`] and [`StudentGradFamily`] read
/// it: a same-shape pair's student dims (`[usize]`), or a relation family's shapes, whose teacher may have
/// other channels ([`crate::skd::RelationShapes`]).
pub trait PairShape {
    /// The elements of the student (and of its gradient) and of the teacher (and of its gradient), checked.
    fn numels(&self) -> Result<(usize, usize)>;

    /// Checks the student's and the teacher's dims and runs `f` on the call's geometry.
    fn with_pair<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&Self) -> Result<R>) -> Result<R>;
}

impl PairShape for [usize] {
    fn numels(&self) -> Result<(usize, usize)> {
        let numel = Nchw::from_dims("student", self)?.numel();
        Ok((numel, numel))
    }

    fn with_pair<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&[usize]) -> Result<R>) -> Result<R> {
        Nchw::from_dims("student", student)?.expect_same("teacher", teacher)?;
        f(student)
    }
}

/// Binds the pair part of a call: the inputs and the pair outputs, the student's and its gradient's
/// `student` elements each, the teacher's and its gradient's `teacher`.
pub(crate) fn bind_pair<'a: 's, 's, T: KdFloat>(
    (student, teacher): (usize, usize),
    pair: PairBuffers<'a, T>,
    binder: &mut Binder<'s>,
) -> Result<(PairRawBuffers, GradOptions)> {
    let raw = PairRawBuffers {
        student: binder.input("student", pair.student, student)?,
        teacher: binder.input("teacher", pair.teacher, teacher)?,
        loss: binder.output("loss", pair.loss, 1)?,
        grad_student: binder.output("grad_student", pair.grad_student, student)?,
        grad_teacher: binder.output("grad_teacher", pair.grad_teacher, teacher)?,
        upstream: binder.optional_input("upstream", pair.upstream, 1)?,
    };
    Ok((raw, pair.options))
}

/// A (student, teacher) family whose calls take the pair's buffers and nothing else: CWD, pixel KD, DIST on a
/// same-shape pair, SKD and CIRKD on a pair whose teacher may have other channels. Declaring it one gives it
/// [`TypedFamily`] (its typed buffers are [`PairBuffers`], bound as its [`PairShape`] counts),
/// [`StudentTeacherFamily`] (a pair call is its call) and, on a same-shape pair, [`PairFamily`] (its CPU
/// reference's gradients), so that such a family writes none of them. Its driver refuses a teacher gradient
/// unless [`PlainPairFamily::teacher_grad`] says it gives one.
pub trait PlainPairFamily: Family<Shape: PairShape, RawBuffers = PairRawBuffers> {
    /// The CPU reference (f64) for the family's configuration.
    type Reference: PairReference<Config = Self::Config>;

    /// Whether `config` asks for the teacher's gradient as well (none by default).
    fn teacher_grad(_config: &Self::Config) -> bool {
        false
    }
}

impl<F: PlainPairFamily<Shape = [usize]>> PairFamily for F {
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
        shape: &F::Shape,
        buffers: PairBuffers<'a, T>,
        binder: &mut Binder<'s>,
    ) -> Result<(PairRawBuffers, GradOptions)> {
        bind_pair(shape.numels()?, buffers, binder)
    }
}

impl<F: PlainPairFamily> StudentTeacherFamily for F {
    fn pair_buffers<'a, T: KdFloat>(pair: PairBuffers<'a, T>) -> PairBuffers<'a, T> {
        pair
    }
}

/// A (student, teacher) family whose only gradient is the student's (DIST, SKD, CIRKD), as the tensor adapters
/// see one: the call's shape from the two tensors' dims, its raw buffers from the pair's device addresses, and
/// its CPU reference ([`PlainPairFamily::Reference`]). The candle op and the burn primitives are written once
/// over it.
pub trait StudentGradFamily: PlainPairFamily {
    /// Checks the student's and the teacher's dims and runs `f` on the call's shape.
    fn with_shape<R>(student: &[usize], teacher: &[usize], f: impl FnOnce(&Self::Shape) -> Result<R>) -> Result<R> {
        Self::Shape::with_pair(student, teacher, f)
    }

    /// The family's raw buffers for a pair call (`grad_teacher` must be 0: the driver refuses a teacher
    /// gradient).
    fn raw_buffers(pair: PairRawBuffers) -> Result<PairRawBuffers> {
        Ok(pair)
    }
}
