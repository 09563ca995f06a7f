//! ICSD and AICSD through the emulated kernels (feature `emulator`): the very driver [`super::IcsdCuda`]
//! uses, on host buffers, with [`EmulatedGpu`] device facts.

use super::{driver, AicsdConfig, Icsd, IcsdConfig, IcsdRawBuffers};
use crate::dtype::KdFloat;
use crate::emulator::{
    self, check_inputs, start_grad, EmulatedGpu, EmulatedLauncher, EmulatedOutput, HostBuffers, HostScratch, Mode,
    Outputs,
};
use crate::error::Result;
use crate::family::{NchwFamily, PairFamily, PairRawBuffers, RawCall};
use crate::grad::GradOptions;
use crate::launch::Machine;
use crate::pixel_kd::{PixelKd, PixelKdPath};

/// What an emulated ICSD call wrote: the loss, the gradient, and the two matrices (f32, `C * C`).
#[derive(Debug, Clone)]
pub struct IcsdEmulated<T> {
    /// Loss and gradient, as [`crate::emulator`] reports them (`grad_teacher` is always `None`).
    pub out: EmulatedOutput<T>,
    /// `Mh_S`.
    pub sim_student: Vec<f32>,
    /// `Mh_T`.
    pub sim_teacher: Vec<f32>,
}

/// Runs ICSD through the emulated kernels, as [`super::IcsdCuda`] plans it for `gpu`.
#[allow(clippy::too_many_arguments)]
pub fn icsd<T: KdFloat>(
    config: &IcsdConfig,
    shape: &[usize],
    student: &[T],
    teacher: &[T],
    mode: Mode,
    gpu: EmulatedGpu,
    options: GradOptions,
    initial_grad: Option<&[T]>,
) -> Result<IcsdEmulated<T>> {
    let shape = check_inputs(shape, student, teacher)?;
    let cc = shape.c * shape.c;
    let mut out = Outputs::new(shape.numel(), mode, false, initial_grad)?;
    let mut sim_s = vec![f32::NAN; cc];
    let mut sim_t = vec![f32::NAN; cc];
    let buffers = IcsdRawBuffers {
        sim_student: sim_s.as_mut_ptr() as u64,
        sim_teacher: sim_t.as_mut_ptr() as u64,
        ..Icsd::pair_raw(out.pair_raw(student, teacher))?
    };
    let _registered = out
        .register(
            HostBuffers::new().input("student", &student[..shape.numel()]).input("teacher", &teacher[..shape.numel()]),
        )
        .output("sim_student", &sim_s)
        .output("sim_teacher", &sim_t);
    let call = RawCall::<Icsd> { config, path: (), shape: &shape.dims(), dtype: T::DTYPE, buffers: &buffers, options };
    // SAFETY: every address is a live host buffer of the size the shape needs.
    unsafe { emulator::run(call, gpu)? };
    Ok(IcsdEmulated { out: out.finish(), sim_student: sim_s, sim_teacher: sim_t })
}

/// Runs the AICSD objective at `epoch` as [`super::AicsdCuda::call`] does: ICSD writes its
/// gradient scaled by `alpha`, pixel KD adds `1 - alpha` times its own, and the mixing kernel writes
/// `alpha * L_ICS + (1 - alpha) * L_KD`. Returns (loss, gradient).
#[allow(clippy::too_many_arguments)]
pub fn aicsd<T: KdFloat>(
    config: &AicsdConfig,
    epoch: f64,
    shape: &[usize],
    student: &[T],
    teacher: &[T],
    gpu: EmulatedGpu,
    options: GradOptions,
    initial_grad: Option<&[T]>,
) -> Result<(f32, Vec<T>)> {
    config.validate()?;
    let alpha = config.alpha(epoch)?;
    let shape = check_inputs(shape, student, teacher)?;
    let mut grad = start_grad(shape.numel(), initial_grad)?;
    let (mut l_ics, mut l_kd, mut total) = (f32::NAN, f32::NAN, f32::NAN);
    let ics = IcsdRawBuffers {
        student: student.as_ptr() as u64,
        teacher: teacher.as_ptr() as u64,
        loss: &mut l_ics as *mut f32 as u64,
        grad_student: grad.as_mut_ptr() as u64,
        ..IcsdRawBuffers::default()
    };
    let kd = PairRawBuffers {
        student: student.as_ptr() as u64,
        teacher: teacher.as_ptr() as u64,
        loss: &mut l_kd as *mut f32 as u64,
        grad_student: grad.as_mut_ptr() as u64,
        ..PairRawBuffers::default()
    };
    let (ics_options, kd_options) = config.grad_options(alpha, options);
    let _registered = HostBuffers::new()
        .input("student", &student[..shape.numel()])
        .input("teacher", &teacher[..shape.numel()])
        .output("loss (ICS)", std::slice::from_ref(&l_ics))
        .output("loss (KD)", std::slice::from_ref(&l_kd))
        .output("loss", std::slice::from_ref(&total))
        .output("grad_student", &grad);
    let mut scratch = HostScratch::default();
    // SAFETY: as in `icsd`.
    unsafe {
        let icsd = RawCall {
            config: &config.icsd,
            path: (),
            shape: &shape,
            dtype: T::DTYPE,
            buffers: &ics,
            options: ics_options,
        };
        Icsd::run_nchw(icsd, Machine { device: &gpu, scratch: &mut scratch, launcher: &mut EmulatedLauncher })?;
        let kd = RawCall {
            config: &config.kd,
            path: PixelKdPath::Auto,
            shape: &shape,
            dtype: T::DTYPE,
            buffers: &kd,
            options: kd_options,
        };
        PixelKd::run_nchw(kd, Machine { device: &gpu, scratch: &mut scratch, launcher: &mut EmulatedLauncher })?;
        driver::mix(
            &mut EmulatedLauncher,
            T::DTYPE,
            &l_ics as *const f32 as u64,
            &l_kd as *const f32 as u64,
            &mut total as *mut f32 as u64,
            alpha,
            1.0 - alpha,
        )?;
    }
    Ok((total, grad))
}
