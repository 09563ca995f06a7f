//! The burn ops on burn's CUDA backend (feature `cuda`; burn's `Cuda` with fusion, with and without
//! autodiff) against burn's own autograd of the same losses written in burn ops
//! (`kd_kernels_burn::reference`) on the same device, in f32, f16 and bf16 (CWT in f32; SemCKD's maps in
//! each, its MLPs in f32), plus the ordering
//! against cubecl's lazy queue: a module per family. Under a small harness of its own (`harness = false`): built
//! without `cuda`, without kernels, or with no GPU, every test is reported `skipped` with the reason and the
//! binary exits 0; otherwise every test runs and the binary exits 1 if any failed.
//!
//! The reference runs in f32 on the f16/bf16 inputs cast up (burn's own f16 ops would be the less
//! accurate side); ours returns the loss rounded to the input dtype, so the loss is held to the crate's
//! loss tolerance or that dtype's rounding, whichever is larger.

#[cfg(feature = "cuda")]
#[path = "../burn_support/mod.rs"]
mod burn_support;
#[path = "../../../gpu_test_harness.rs"]
mod gpu_test_harness;

// The checks need burn's CUDA backend; without it the binary only names its tests, to report them skipped.
#[cfg(feature = "cuda")]
mod cirkd;
#[cfg(feature = "cuda")]
mod compare;
#[cfg(feature = "cuda")]
mod cwd;
#[cfg(feature = "cuda")]
mod cwt;
#[cfg(feature = "cuda")]
mod dist;
#[cfg(feature = "cuda")]
mod icsd;
#[cfg(feature = "cuda")]
mod ifvd;
#[cfg(feature = "cuda")]
mod pixel_kd;
#[cfg(feature = "cuda")]
mod pkd;
#[cfg(feature = "cuda")]
mod semckd;
#[cfg(feature = "cuda")]
mod skd;

#[cfg(feature = "cuda")]
type Check = fn(&burn::tensor::Device) -> compare::TestResult;

/// SKD and CIRKD, one test as they have always been.
#[cfg(feature = "cuda")]
fn check_skd_cirkd(device: &burn::tensor::Device) -> compare::TestResult {
    skd::check_skd(device)?;
    cirkd::check_cirkd(device)
}

/// `TESTS`, every test's name and check, in the order they run; without `cuda` their names alone (the checks
/// are not compiled).
macro_rules! gpu_tests {
    ($($name:literal => $check:path,)*) => {
        #[cfg(feature = "cuda")]
        const TESTS: &[(&str, Check)] = &[$(($name, $check),)*];
        #[cfg(not(feature = "cuda"))]
        const TESTS: &[(&str, ())] = &[$(($name, ()),)*];
    };
}

gpu_tests! {
    "cwd_matches_burn_autograd" => cwd::check_cwd,
    "pixel_kd_matches_burn_autograd" => pixel_kd::check_pixel_kd,
    "icsd_and_aicsd_match_burn_autograd" => icsd::check_icsd,
    "dist_matches_burn_autograd" => dist::check_dist,
    "skd_and_cirkd_match_burn_autograd" => check_skd_cirkd,
    "pkd_matches_burn_autograd" => pkd::check_pkd,
    "ifvd_matches_burn_autograd" => ifvd::check_ifvd,
    "cwt_matches_burn_autograd_into_every_parameter" => cwt::check_cwt,
    "semckd_matches_burn_autograd_into_every_input" => semckd::check_semckd,
    "ordered_against_cubecl_lazy_queue" => backend::check_ordering,
    "misuse_is_an_error" => backend::check_errors,
}

/// What burn's CUDA backend adds to every family: the order against cubecl's lazy queue, and the inputs the
/// kernels refuse there (CWD and pixel KD stand for every family).
#[cfg(feature = "cuda")]
mod backend {
    use super::burn_support::{logits, tensor, values};
    use super::compare::{check_close, limit, PairFn, TestResult};
    use burn::tensor::{DType, Device};
    use kd_kernels::cwd::CwdConfig;
    use kd_kernels::pixel_kd::PixelKdConfig;
    use kd_kernels::tolerance::OutputKind;
    use kd_kernels_burn::{cwd_loss, pixel_kd_loss, reference};

    /// A cubecl op writes the student right before the loss and the loss and its gradient are consumed by
    /// cubecl ops right after, in a loop over buffers large enough that a missing wait would read stale or
    /// half-written data: every step must equal the reference, and the untracked (no autodiff) path too.
    pub fn check_ordering(device: &Device) -> TestResult {
        let shape = [8, 19, 64, 128];
        let config = CwdConfig::default();
        let base = tensor(logits(shape, 5, 3.0), shape, device, DType::F32);
        let teacher = tensor(logits(shape, 6, 3.0), shape, device, DType::F32);
        for step in 0..6 {
            let scale = 0.5 + step as f64 * 0.25;
            let run = |f: PairFn<'_>| -> (Vec<f64>, Vec<f64>) {
                let weight = base.clone().require_grad();
                // Written by cubecl just before the loss reads it (queued, not yet run).
                let student = (weight.clone() * scale).tanh() * 4.0 + step as f64;
                let loss = f(student, teacher.clone());
                // Consumed by cubecl right after.
                let total = loss * 3.0 + 1.0;
                let grads = total.backward();
                let g = weight.grad(&grads).expect("the parameter has a gradient");
                (values(total), values(g))
            };
            let (ours, ours_g) = run(&|s, t| cwd_loss(s, t, &config).expect("valid input"));
            let (theirs, theirs_g) = run(&|s, t| reference::cwd_loss(s, t, &config));
            check_close(&format!("ordering step {step} loss"), ours, theirs, limit(DType::F32, OutputKind::Loss))?;
            check_close(
                &format!("ordering step {step} grad"),
                ours_g,
                theirs_g,
                limit(DType::F32, OutputKind::Tensor),
            )?;
        }
        let plain = device.clone().inner();
        let s = tensor(logits(shape, 7, 3.0), shape, &plain, DType::F32);
        let t = tensor(logits(shape, 8, 3.0), shape, &plain, DType::F32);
        let kd = PixelKdConfig::default();
        let ours = values(pixel_kd_loss((s.clone() * 2.0).exp().log(), t.clone(), &kd).expect("valid") * 2.0);
        let theirs = values(reference::pixel_kd_loss((s * 2.0).exp().log(), t, &kd) * 2.0);
        check_close("untracked pixel kd", ours, theirs, limit(DType::F32, OutputKind::Loss))
    }

    /// Inputs the kernels cannot take on CUDA are typed errors before anything runs.
    pub fn check_errors(device: &Device) -> TestResult {
        let shape = [2, 3, 4, 4];
        let s = tensor(logits(shape, 1, 1.0), shape, device, DType::F32);
        let t = tensor(logits(shape, 2, 1.0), shape, device, DType::F32);
        if cwd_loss(s.clone(), t.clone().require_grad(), &CwdConfig::default()).is_ok() {
            return Err("a tracked teacher without teacher_grad was accepted".into());
        }
        if pixel_kd_loss(s, t.cast(DType::F16), &PixelKdConfig::default()).is_ok() {
            return Err("a teacher of another dtype was accepted".into());
        }
        Ok(())
    }
}

/// The autodiff CUDA device, or why the tests cannot run.
fn device() -> Result<burn::tensor::Device, String> {
    if !cfg!(feature = "cuda") {
        return Err("built without the `cuda` feature".into());
    }
    if !kd_kernels::cuda::KERNELS_COMPILED {
        return Err("the crate was built without nvcc, so it has no kernels".into());
    }
    kd_kernels::cuda::probe().map_err(|e| e.to_string())?;
    #[cfg(feature = "cuda")]
    {
        std::panic::catch_unwind(|| burn::tensor::Device::cuda(0).autodiff())
            .map_err(|_| "burn could not open CUDA device 0".to_string())
    }
    #[cfg(not(feature = "cuda"))]
    unreachable!("returned above")
}

fn main() {
    match device() {
        #[cfg(feature = "cuda")]
        Ok(device) => gpu_test_harness::run_all("burn_cuda", TESTS, &device),
        #[cfg(not(feature = "cuda"))]
        Ok(_) => unreachable!("device() refuses a build without `cuda`"),
        Err(reason) => gpu_test_harness::skip_all("burn_cuda", TESTS.iter().map(|t| t.0), &reason),
    }
}
