//! What the GPU tests of the families of [`StudentGradFamily`] with a teacher of its own channel count (SKD,
//! CIRKD) share: random inputs of a student and a teacher, the family's CPU reference on them, one
//! `forward_backward` against that reference under the tolerance table, and repeated calls giving the same
//! bits. Written once over the family contract, so that each family's file keeps only its own cases.

use kd_kernels::cpu::{CpuOutput, PairReference};
use kd_kernels::cuda::LossCuda;
use kd_kernels::family::StudentGradFamily;
use kd_kernels::tolerance::{tolerance, OutputKind};
use kd_kernels::KdFloat;
use ndarray::ArrayView4;

use crate::common::widen;
use crate::harness::{bits, close, download, ensure, nan_buffer, random, upload, OrMsg, Stream, TestResult};

/// One call's inputs: a student `[N, Cs, H, W]` and a teacher `[N, Ct, H, W]`, in the storage dtype (the CPU
/// reference reads exactly these values).
pub(crate) struct Inputs<T> {
    pub(crate) student_dims: [usize; 4],
    pub(crate) teacher_dims: [usize; 4],
    pub(crate) student: Vec<T>,
    pub(crate) teacher: Vec<T>,
}

impl<T: KdFloat> Inputs<T> {
    /// Values ~ N(0, 1) (`harness::random`): the student's from `seed`, the teacher's (`ct` channels) from
    /// `seed + 1`.
    pub(crate) fn random(seed: u64, student_dims: [usize; 4], ct: usize) -> Self {
        let [n, _, h, w] = student_dims;
        let teacher_dims = [n, ct, h, w];
        let numel = |d: [usize; 4]| d.iter().product();
        let (student, teacher) = (random(seed, numel(student_dims), 1.0), random(seed + 1, numel(teacher_dims), 1.0));
        Inputs { student_dims, teacher_dims, student, teacher }
    }

    pub(crate) fn name(&self) -> String {
        format!("{} {:?} / {:?}", T::DTYPE, self.student_dims, self.teacher_dims)
    }
}

/// The family's f64 CPU reference (`forward_backward`) on `inputs`.
pub(crate) fn reference<F: StudentGradFamily, T: KdFloat>(
    config: &F::Config,
    inputs: &Inputs<T>,
) -> Result<CpuOutput, String> {
    F::Reference::new(config.clone())
        .or_msg(&format!("{} reference", F::NAME))?
        .gradients(
            ArrayView4::from_shape(inputs.student_dims, &inputs.student).or_msg("student view")?,
            ArrayView4::from_shape(inputs.teacher_dims, &inputs.teacher).or_msg("teacher view")?,
            1.0,
        )
        .or_msg(&format!("{} reference", F::NAME))
}

/// One `forward_backward` of `loss_object` on `inputs`, downloaded: the loss and d loss / d student.
pub(crate) fn forward_backward<F: StudentGradFamily, T: KdFloat>(
    stream: &Stream,
    loss_object: &mut LossCuda<F>,
    inputs: &Inputs<T>,
) -> Result<(f32, Vec<T>), String> {
    let (s, t) = (upload(stream, &inputs.student)?, upload(stream, &inputs.teacher)?);
    let mut loss = nan_buffer::<f32>(stream, 1)?;
    let mut grad = nan_buffer::<T>(stream, inputs.student.len())?;
    F::with_shape(&inputs.student_dims, &inputs.teacher_dims, |shape| {
        loss_object.forward_backward(shape, &s, &t, &mut loss, &mut grad)
    })
    .or_msg(&format!("{} forward_backward", F::NAME))?;
    Ok((download(stream, &loss)?[0], download(stream, &grad)?))
}

/// One `forward_backward` on `inputs` against the CPU reference, the loss and the gradient to the tolerance
/// table's rows for `T` (failures go to `failures`); returns the loss's and the gradient's bits.
pub(crate) fn check_call<F: StudentGradFamily, T: KdFloat>(
    stream: &Stream,
    config: F::Config,
    inputs: &Inputs<T>,
    failures: &mut Vec<String>,
) -> Result<(u32, Vec<u64>), String> {
    let reference = reference::<F, T>(&config, inputs)?;
    let what = format!("{} {} {config:?}", F::NAME, inputs.name());
    let mut loss_object = LossCuda::<F>::new(stream.clone(), config).or_msg(&format!("{} new", F::NAME))?;
    let (loss, grad) = forward_backward(stream, &mut loss_object, inputs)?;
    let tol = |kind| tolerance(T::DTYPE, kind);
    close(&format!("{what} loss"), &[loss as f64], &[reference.loss], tol(OutputKind::Loss), failures);
    let want: Vec<f64> = reference.grad_student.iter().copied().collect();
    close(&format!("{what} grad"), &widen(&grad), &want, tol(OutputKind::Tensor), failures);
    Ok((loss.to_bits(), bits(&grad)))
}

/// Three `forward_backward` calls of one loss object on the same inputs give the same bits.
pub(crate) fn deterministic<F: StudentGradFamily, T: KdFloat>(
    stream: &Stream,
    config: F::Config,
    inputs: &Inputs<T>,
) -> TestResult {
    let mut loss_object = LossCuda::<F>::new(stream.clone(), config).or_msg(&format!("{} new", F::NAME))?;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (loss, grad) = forward_backward(stream, &mut loss_object, inputs)?;
        runs.push((loss.to_bits(), bits(&grad)));
    }
    ensure(runs.windows(2).all(|w| w[0] == w[1]), || format!("{} {}: runs differ", F::NAME, inputs.name()))
}
