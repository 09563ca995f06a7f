//! CWT through the emulated kernels (feature `emulator`): the very driver [`super::CwtCuda`] uses, on host
//! slices, with the kernels of `kernels/cwt.cu` compiled for the host (see [`crate::emulator`]).

use super::{driver, CwtConfig, CwtRawBuffers, CwtShapes};
use crate::dtype::KdFloat;
use crate::emulator::{EmulatedGpu, EmulatedLauncher, HostBuffers, HostScratch, Mode};
use crate::error::{KdError, Result};
use crate::grad::GradOptions;

/// The MLP's parameters as flat f32 host slices (`[Ch, Cs]`, `[Ch]`, `[Ct, Ch]`, `[Ct]`).
#[derive(Debug, Clone, Copy)]
pub struct HostParams<'a> {
    /// `W1`.
    pub w1: &'a [f32],
    /// `b1`.
    pub b1: &'a [f32],
    /// `W2`.
    pub w2: &'a [f32],
    /// `b2`.
    pub b2: &'a [f32],
}

/// The gradients an emulated call starts from (for accumulation), in the outputs' layouts.
#[derive(Debug, Clone, Default)]
pub struct CwtGrads<T> {
    /// d loss / d student.
    pub student: Vec<T>,
    /// d loss / d `W1`.
    pub w1: Vec<f32>,
    /// d loss / d `b1`.
    pub b1: Vec<f32>,
    /// d loss / d `W2`.
    pub w2: Vec<f32>,
    /// d loss / d `b2`.
    pub b2: Vec<f32>,
}

/// What an emulated call wrote.
#[derive(Debug, Clone)]
pub struct CwtEmulated<T> {
    /// The loss (`None` for [`Mode::Backward`]).
    pub loss: Option<f32>,
    /// The gradients (`None` for [`Mode::Forward`]).
    pub grads: Option<CwtGrads<T>>,
}

/// How an emulated call is planned besides the device.
#[derive(Debug, Clone, Copy, Default)]
pub struct CwtEmulation {
    /// [`GradOptions`].
    pub options: GradOptions,
    /// At most this many pixels per chunk (forces several chunks on small inputs).
    pub chunk_limit: Option<usize>,
}

/// Runs CWT through the emulated kernels. `student` is `[N, Cs, H, W]`, `teacher` `[N, Ct, H, W]`;
/// `initial` seeds the gradient buffers (accumulation), else they start as NaN so an unwritten element shows.
#[allow(clippy::too_many_arguments)]
pub fn cwt<T: KdFloat>(
    config: &CwtConfig,
    shapes: &CwtShapes,
    student_shape: &[usize],
    student: &[T],
    teacher: &[T],
    params: HostParams<'_>,
    mode: Mode,
    gpu: EmulatedGpu,
    emulation: CwtEmulation,
    initial: Option<&CwtGrads<T>>,
) -> Result<CwtEmulated<T>> {
    let mut teacher_shape = student_shape.to_vec();
    if teacher_shape.len() == 4 {
        teacher_shape[1] = shapes.ct;
    }
    let (s, t) = shapes.check_features(student_shape, &teacher_shape)?;
    let CwtShapes { cs, ch, ct } = *shapes;
    for (what, len, needed) in [
        ("student", student.len(), s.numel()),
        ("teacher", teacher.len(), t.numel()),
        ("mlp.linear1.weight", params.w1.len(), ch * cs),
        ("mlp.linear1.bias", params.b1.len(), ch),
        ("mlp.linear2.weight", params.w2.len(), ct * ch),
        ("mlp.linear2.bias", params.b2.len(), ct),
    ] {
        if len < needed {
            return Err(KdError::BufferTooSmall { what, needed, len });
        }
    }
    let grads_wanted = mode != Mode::Forward;
    let mut grads = if grads_wanted {
        match initial {
            Some(g) => g.clone(),
            None => CwtGrads {
                student: vec![T::from_f32(f32::NAN); s.numel()],
                w1: vec![f32::NAN; ch * cs],
                b1: vec![f32::NAN; ch],
                w2: vec![f32::NAN; ct * ch],
                b2: vec![f32::NAN; ct],
            },
        }
    } else {
        CwtGrads::default()
    };
    if grads_wanted {
        for (what, len, needed) in [
            ("initial grad_student", grads.student.len(), s.numel()),
            ("initial grad_w1", grads.w1.len(), ch * cs),
            ("initial grad_b1", grads.b1.len(), ch),
            ("initial grad_w2", grads.w2.len(), ct * ch),
            ("initial grad_b2", grads.b2.len(), ct),
        ] {
            if len < needed {
                return Err(KdError::BufferTooSmall { what, needed, len });
            }
        }
    }
    let mut loss = f32::NAN;
    let upstream = match mode {
        Mode::Backward { upstream } => upstream,
        _ => 1.0,
    };
    let addr = |v: &mut Vec<f32>| if grads_wanted { v.as_mut_ptr() as u64 } else { 0 };
    let buffers = CwtRawBuffers {
        student: student.as_ptr() as u64,
        teacher: teacher.as_ptr() as u64,
        w1: params.w1.as_ptr() as u64,
        b1: params.b1.as_ptr() as u64,
        w2: params.w2.as_ptr() as u64,
        b2: params.b2.as_ptr() as u64,
        loss: if matches!(mode, Mode::Backward { .. }) { 0 } else { &mut loss as *mut f32 as u64 },
        grad_student: if grads_wanted { grads.student.as_mut_ptr() as u64 } else { 0 },
        grad_w1: addr(&mut grads.w1),
        grad_b1: addr(&mut grads.b1),
        grad_w2: addr(&mut grads.w2),
        grad_b2: addr(&mut grads.b2),
        upstream: if matches!(mode, Mode::Backward { .. }) { &upstream as *const f32 as u64 } else { 0 },
    };
    let _registered = HostBuffers::new()
        .input("student", &student[..s.numel()])
        .input("teacher", &teacher[..t.numel()])
        .input("w1", &params.w1[..ch * cs])
        .input("b1", &params.b1[..ch])
        .input("w2", &params.w2[..ct * ch])
        .input("b2", &params.b2[..ct])
        .output("loss", std::slice::from_ref(&loss))
        .input("upstream", std::slice::from_ref(&upstream))
        .output("grad_student", &grads.student)
        .output("grad_w1", &grads.w1)
        .output("grad_b1", &grads.b1)
        .output("grad_w2", &grads.w2)
        .output("grad_b2", &grads.b2);
    let mut scratch = HostScratch::default();
    // SAFETY: every address is a live host buffer of the size the shapes need; the emulated kernels run on
    // the host and return before this does.
    unsafe {
        driver::run(
            config,
            shapes,
            student_shape,
            &teacher_shape,
            T::DTYPE,
            &buffers,
            emulation.options,
            emulation.chunk_limit,
            &gpu,
            &mut scratch,
            &mut EmulatedLauncher,
        )?
    };
    scratch.check_counters("emulated cwt")?;
    Ok(CwtEmulated {
        loss: (!matches!(mode, Mode::Backward { .. })).then_some(loss),
        grads: grads_wanted.then_some(grads),
    })
}
