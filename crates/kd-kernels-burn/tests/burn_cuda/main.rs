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
mod backend;
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
mod relation;
#[cfg(feature = "cuda")]
mod semckd;

#[cfg(feature = "cuda")]
type Check = fn(&burn::tensor::Device) -> compare::TestResult;

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
    "skd_and_cirkd_match_burn_autograd" => relation::check_skd_cirkd,
    "pkd_matches_burn_autograd" => pkd::check_pkd,
    "ifvd_matches_burn_autograd" => ifvd::check_ifvd,
    "cwt_matches_burn_autograd_into_every_parameter" => cwt::check_cwt,
    "semckd_matches_burn_autograd_into_every_input" => semckd::check_semckd,
    "ordered_against_cubecl_lazy_queue" => backend::check_ordering,
    "misuse_is_an_error" => backend::check_errors,
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
