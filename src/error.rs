//! The crate's error type: every misuse is reported as a typed error whose message says what to fix.

use std::fmt;

/// Everything that can go wrong in a `kd-kernels` call.
///
/// No entry point panics on bad input; each check returns one of these before any work is queued.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum KdError {
    /// A tensor has the wrong number of dimensions.
    WrongRank {
        /// Which argument, e.g. `"student"`.
        what: &'static str,
        /// The rank the loss needs.
        expected: usize,
        /// The rank that was passed.
        got: usize,
    },
    /// Two tensors that must agree in shape do not.
    ShapeMismatch {
        /// Which argument, e.g. `"teacher"`.
        what: &'static str,
        /// The shape it must have.
        expected: Vec<usize>,
        /// The shape it has.
        got: Vec<usize>,
    },
    /// A dimension is zero: there is nothing to average over.
    EmptyInput {
        /// Which argument.
        what: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A device buffer holds fewer elements than the shape needs.
    BufferTooSmall {
        /// Which argument, e.g. `"grad_student"`.
        what: &'static str,
        /// Elements the shape needs.
        needed: usize,
        /// Elements the buffer holds.
        len: usize,
    },
    /// A student level and its teacher level differ in shape (a loss over a list of levels, such as PKD).
    LevelShapeMismatch {
        /// The level's index, from 0.
        level: usize,
        /// The student's shape at that level.
        student: Vec<usize>,
        /// The teacher's shape at that level.
        teacher: Vec<usize>,
    },
    /// A reduction has fewer values than its statistic needs (e.g. an unbiased standard deviation of one value).
    TooFewValues {
        /// What is reduced, e.g. `"student level 2 (per channel: N*H*W)"`.
        what: String,
        /// How many values it has.
        got: usize,
        /// How many it needs.
        needed: usize,
    },
    /// A tensor is too large for the kernels' launch geometry or index arithmetic.
    TooLarge {
        /// Which argument.
        what: &'static str,
        /// Why it does not fit.
        detail: String,
    },
    /// A configuration value is out of its domain (e.g. `tau` not finite and > 0).
    InvalidParameter {
        /// The parameter's name, e.g. `"tau"`.
        name: &'static str,
        /// The value as given.
        value: String,
        /// What it must be.
        requirement: &'static str,
    },
    /// An optional output was passed when the configuration does not ask for it, or the other way round.
    OutputMismatch {
        /// Which output, e.g. `"grad_teacher"`.
        what: &'static str,
        /// What to change.
        fix: &'static str,
    },
    /// Element types that must agree do not (e.g. a fixture's student and teacher).
    DTypeMismatch {
        /// Which argument.
        what: String,
        /// The dtype it must have.
        expected: String,
        /// The dtype it has.
        got: String,
    },
    /// A buffer lives in another CUDA context than the stream the loss was created on.
    ContextMismatch {
        /// Which argument.
        what: &'static str,
    },
    /// A requested way of computing does not apply to this input or device (e.g. forcing CWD's single-pass
    /// kernel on rows too long for it).
    Unsupported {
        /// What was requested.
        what: &'static str,
        /// Why it does not apply, and what to use instead.
        detail: String,
    },
    /// A call needs a larger workspace while its stream is being captured into a CUDA graph, where growing
    /// it would leave the graph pointing at freed memory.
    WorkspaceTooSmall {
        /// What the call needs.
        needed: String,
        /// What the loss object holds.
        have: String,
    },
    /// The crate was built without nvcc, so it carries no GPU kernels.
    KernelsUnavailable,
    /// No usable CUDA driver or device at run time.
    CudaUnavailable {
        /// What the probe found.
        reason: String,
    },
    /// The CUDA driver returned an error.
    Cuda {
        /// The operation that failed.
        op: &'static str,
        /// The driver's error.
        error: String,
    },
}

impl fmt::Display for KdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KdError::WrongRank { what, expected, got } => write!(
                f,
                "{what}: expected a rank-{expected} tensor (NCHW), got rank {got}; reshape it to [N, C, H, W]"
            ),
            KdError::ShapeMismatch { what, expected, got } => {
                write!(f, "{what}: shape {got:?} does not match the expected {expected:?}")
            }
            KdError::EmptyInput { what, shape } => write!(
                f,
                "{what}: shape {shape:?} has a zero dimension; every dimension must be at least 1"
            ),
            KdError::BufferTooSmall { what, needed, len } => write!(
                f,
                "{what}: the buffer holds {len} elements but the shape needs {needed}; allocate at least {needed}"
            ),
            KdError::LevelShapeMismatch { level, student, teacher } => write!(
                f,
                "level {level}: the student is {student:?} but the teacher is {teacher:?}; every level needs one \
                 shape: resize the student to the teacher's H x W first (mmrazor's PKDLoss does it bilinearly), \
                 and project it first where N or C differ"
            ),
            KdError::TooFewValues { what, got, needed } => {
                write!(f, "{what}: {got} value(s), but the statistic needs at least {needed}")
            }
            KdError::TooLarge { what, detail } => write!(f, "{what}: too large: {detail}"),
            KdError::InvalidParameter { name, value, requirement } => {
                write!(f, "parameter `{name}` = {value} is invalid: it must be {requirement}")
            }
            KdError::OutputMismatch { what, fix } => write!(f, "{what}: {fix}"),
            KdError::DTypeMismatch { what, expected, got } => {
                write!(f, "{what}: dtype {got} where {expected} is needed")
            }
            KdError::ContextMismatch { what } => write!(
                f,
                "{what}: the buffer belongs to another CUDA context than the loss's stream; allocate it on that stream's context"
            ),
            KdError::Unsupported { what, detail } => write!(f, "{what} does not apply here: {detail}"),
            KdError::WorkspaceTooSmall { needed, have } => write!(
                f,
                "the call needs a workspace of {needed} but the loss holds {have}, and its stream is being \
                 captured into a CUDA graph, where it cannot grow; call `reserve(shape, dtype)` on the loss with \
                 the largest shape before capturing"
            ),
            KdError::KernelsUnavailable => write!(
                f,
                "kd-kernels was built without nvcc, so it has no GPU kernels; run scripts/install-nvcc \
                 (or set NVCC / CUDA_HOME) and rebuild, or use the CPU reference"
            ),
            KdError::CudaUnavailable { reason } => write!(f, "CUDA is not usable here: {reason}"),
            KdError::Cuda { op, error } => write!(f, "CUDA driver error during {op}: {error}"),
        }
    }
}

impl std::error::Error for KdError {}

/// `Result` with [`KdError`].
pub type Result<T, E = KdError> = std::result::Result<T, E>;

impl KdError {
    /// [`KdError::Cuda`] for a failed driver call `op`: public for the adapter crates, whose own driver calls
    /// (a context, a stream) report their errors as this crate's.
    pub fn cuda(op: &'static str, error: cudarc::driver::DriverError) -> Self {
        KdError::Cuda { op, error: error.to_string() }
    }
}
