//! What every family's check shares: the tolerances, the comparison of a run against the reference's, and
//! the (student, teacher) comparison in each dtype.

use super::burn_support::{logits, tensor, values};
use burn::tensor::{DType, Device, Tensor};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};

pub type TestResult = Result<(), String>;

pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn kernel_dtype(dtype: DType) -> kd_kernels::DType {
    match dtype {
        DType::F16 => kd_kernels::DType::F16,
        DType::BF16 => kd_kernels::DType::BF16,
        _ => kd_kernels::DType::F32,
    }
}

/// The crate's tolerance; a loss stored in a 16-bit dtype also carries that dtype's rounding.
pub fn limit(dtype: DType, kind: OutputKind) -> f64 {
    let rounding = match dtype {
        DType::F16 => 2f64.powi(-10),
        DType::BF16 => 2f64.powi(-7),
        _ => 0.0,
    };
    let base = tolerance(kernel_dtype(dtype), kind);
    if kind == OutputKind::Loss {
        base.max(rounding)
    } else {
        base
    }
}

pub fn check_close(what: &str, got: Vec<f64>, want: Vec<f64>, limit: f64) -> TestResult {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
    }
    let cmp = Comparison::of(got, want);
    if cmp.max_rel_err <= limit {
        Ok(())
    } else {
        Err(format!("{what}: max_rel_err {} > {limit} ({cmp:?})", cmp.max_rel_err))
    }
}

pub type PairFn<'a> = &'a dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<1>;

/// A run's loss, student gradient and (where asked) teacher gradient.
type PairRun = (Vec<f64>, Vec<f64>, Option<Vec<f64>>);

/// Loss and gradients (student; teacher when `teacher_grad`) of ours and of the reference, each dtype.
/// `case`: the name, the shape of both inputs, whether the teacher gets a gradient too.
pub fn compare_pair(
    device: &Device,
    (name, shape, teacher_grad): (&str, [usize; 4], bool),
    ours: PairFn<'_>,
    theirs: PairFn<'_>,
) -> TestResult {
    compare_shapes(device, name, [shape, shape], teacher_grad, ours, theirs)
}

/// [`compare_pair`] with a teacher of its own shape.
pub fn compare_shapes(
    device: &Device,
    name: &str,
    [shape, teacher_shape]: [[usize; 4]; 2],
    teacher_grad: bool,
    ours: PairFn<'_>,
    theirs: PairFn<'_>,
) -> TestResult {
    for dtype in DTYPES {
        let (s, t) = (logits(shape, 1, 6.0), logits(teacher_shape, 2, 6.0));
        let run = |f: PairFn<'_>, upcast: bool| -> Result<PairRun, String> {
            let student = tensor(s.clone(), shape, device, dtype).require_grad();
            let mut teacher = tensor(t.clone(), teacher_shape, device, dtype);
            if teacher_grad {
                teacher = teacher.require_grad();
            }
            let (s_in, t_in) = if upcast {
                (student.clone().cast(DType::F32), teacher.clone().cast(DType::F32))
            } else {
                (student.clone(), teacher.clone())
            };
            let loss = f(s_in, t_in);
            if !upcast && loss.dtype() != dtype {
                return Err(format!("{name}: loss is {:?}, the input {dtype:?}", loss.dtype()));
            }
            let grads = loss.backward();
            let gs = student.grad(&grads).ok_or("the student has no gradient")?;
            if gs.dtype() != dtype {
                return Err(format!("{name}: gradient is {:?}, the input {dtype:?}", gs.dtype()));
            }
            let gt = match teacher_grad {
                true => Some(values(teacher.grad(&grads).ok_or("the teacher has no gradient")?)),
                false => None,
            };
            Ok((values(loss), values(gs), gt))
        };
        let (loss, gs, gt) = run(ours, false)?;
        let (ref_loss, ref_gs, ref_gt) = run(theirs, dtype != DType::F32)?;
        let tag = format!("{name} {dtype:?} {shape:?}");
        check_close(&format!("{tag} loss"), loss, ref_loss, limit(dtype, OutputKind::Loss))?;
        check_close(&format!("{tag} d/d student"), gs, ref_gs, limit(dtype, OutputKind::Tensor))?;
        if let (Some(gt), Some(ref_gt)) = (gt, ref_gt) {
            check_close(&format!("{tag} d/d teacher"), gt, ref_gt, limit(dtype, OutputKind::Tensor))?;
        }
    }
    Ok(())
}

pub const SHAPES: [[usize; 4]; 3] = [[2, 19, 16, 32], [1, 7, 33, 65], [3, 1, 1, 6]];

/// Student and teacher shapes for the losses that take a teacher of other channels (the relation losses),
/// with odd sides.
pub const OTHER_TEACHER_CHANNELS: [[usize; 4]; 2] = [[2, 5, 9, 11], [2, 3, 9, 11]];
