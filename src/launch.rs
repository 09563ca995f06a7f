//! What a loss family's host code needs from the machine it runs on, as three small traits, so that one
//! planner and one driver per family serve the CUDA wrappers, the raw-pointer layer and the host emulation
//! of the kernels alike:
//!
//! * [`DeviceInfo`]: the facts a planner reads (SMs, cooperative launch, occupancy, shared memory);
//! * [`Scratch`]: the family's device workspace, sized by the plan;
//! * [`Launcher`]: runs a [`Launch`] of `{kernel}_{dtype}` with the kernel's argument block.
//!
//! Every kernel takes exactly one argument, its family's `Kd*Args` block of `kernels/{family}.h` (device
//! addresses, then the parameter block), so a launch is a name, a geometry and a pointer to that block.

use std::ffi::c_void;

use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::ffi;
use crate::grad::GradOptions;

/// Threads per block of every kernel (`KD_BLOCK_THREADS` in `kernels/params.h`).
pub const BLOCK_THREADS: u32 = ffi::KD_BLOCK_THREADS;

/// One kernel launch of a plan: the entry point `{kernel}_{dtype}` on a 1-D grid of
/// [`BLOCK_THREADS`]-thread blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// The entry point without its dtype suffix, e.g. `cwd_fused`.
    pub kernel: &'static str,
    /// Blocks of the 1-D grid.
    pub grid: u32,
    /// Bytes of dynamic shared memory per block.
    pub dynamic_smem: u32,
    /// Launched cooperatively: every block resident at once (blocks wait for each other).
    pub cooperative: bool,
}

impl Launch {
    /// A launch of `grid` blocks, no dynamic shared memory, not cooperative.
    pub fn new(kernel: &'static str, grid: u32) -> Self {
        Launch { kernel, grid, dynamic_smem: 0, cooperative: false }
    }
}

/// Why a launch did not happen.
#[derive(Debug)]
pub enum LaunchError {
    /// The driver would not keep a cooperative grid resident (e.g. MPS with fewer SMs than reported).
    CooperativeRefused(KdError),
    /// Anything else.
    Failed(KdError),
}

impl LaunchError {
    /// The error, whatever its kind.
    pub fn into_error(self) -> KdError {
        match self {
            LaunchError::CooperativeRefused(e) | LaunchError::Failed(e) => e,
        }
    }
}

/// The device facts a planner reads.
pub trait DeviceInfo {
    /// Streaming multiprocessors.
    fn sm_count(&self) -> usize;
    /// Whether grids whose blocks wait for each other can be launched (cooperative launch).
    fn cooperative(&self) -> bool;
    /// Blocks of `{kernel}_{dtype}` with `dynamic_smem` bytes of dynamic shared memory resident at once.
    fn resident_blocks(&self, kernel: &'static str, dtype: DType, dynamic_smem: usize) -> Result<usize>;
    /// The most dynamic shared memory a block of `kernel` may have (opt-in limit less its static memory).
    fn max_dynamic_smem(&self, kernel: &'static str) -> usize;
    /// Remembers that the driver refused a cooperative grid, so that later plans avoid them.
    fn refuse_cooperative(&self) {}
}

/// A family's workspace: `floats` f32 words (8-byte aligned, so doubles fit) and `counters` u32 counters that
/// start at zero and that every kernel leaves at zero. Returns their addresses.
pub trait Scratch {
    /// Grows to at least `floats` f32 words and `counters` zeroed counters; returns their addresses.
    fn prepare(&mut self, floats: usize, counters: usize) -> Result<(u64, u64)>;
    /// Zeroes the counters (queued after the work already queued for the call), after a launch failed.
    fn reset_counters(&mut self) -> Result<()>;
}

/// Runs kernels.
pub trait Launcher {
    /// Queues `launch` of `{launch.kernel}_{dtype}` with the argument block at `args`.
    ///
    /// # Safety
    /// `args` points to the argument block type the kernel takes, whose addresses hold what the kernel
    /// touches for its parameters.
    unsafe fn launch(&mut self, launch: &Launch, dtype: DType, args: *const c_void) -> Result<(), LaunchError>;
}

/// Queues `launch` like [`Launcher::launch`]; when it fails, zeroes the counters first. The launches of a call
/// before it may have taken "last block done" tickets that only a later launch would have returned to zero
/// (CWT's loss ticket spans every chunk of a call), and a counter left non-zero would elect the wrong last
/// block in every later call on the same workspace.
///
/// # Safety
/// As for [`Launcher::launch`].
pub(crate) unsafe fn launch_or_reset(
    launcher: &mut dyn Launcher,
    scratch: &mut dyn Scratch,
    launch: &Launch,
    dtype: DType,
    args: *const c_void,
) -> Result<(), LaunchError> {
    // SAFETY: the caller's contract.
    let result = unsafe { launcher.launch(launch, dtype, args) };
    if let Err(e) = result {
        return Err(match scratch.reset_counters() {
            Ok(()) => e,
            // The launch's error says what went wrong first; the reset's failure is what the caller must know
            // (the workspace is no longer usable).
            Err(reset) => LaunchError::Failed(reset),
        });
    }
    Ok(())
}

/// What a family's driver runs a call on: the device facts its planner reads, its workspace and the launcher
/// of its kernels. The CUDA loss objects, the host emulation and the launch-limit checks differ only in it.
pub struct Machine<'a> {
    /// The facts the planner reads.
    pub device: &'a dyn DeviceInfo,
    /// The family's workspace.
    pub scratch: &'a mut dyn Scratch,
    /// Runs the kernels.
    pub launcher: &'a mut dyn Launcher,
}

impl Machine<'_> {
    /// [`launch_or_reset`] on this machine's launcher and workspace.
    ///
    /// # Safety
    /// As for [`Launcher::launch`].
    pub(crate) unsafe fn launch_or_reset(
        &mut self,
        launch: &Launch,
        dtype: DType,
        args: *const c_void,
    ) -> Result<(), LaunchError> {
        // SAFETY: the caller's contract.
        unsafe { launch_or_reset(self.launcher, self.scratch, launch, dtype, args) }
    }

    /// Queues a plan's `launches` in order, every one with the family's one argument block `args`, through
    /// [`launch_or_reset`]; stops at the first failure. Every driver whose launches all share one block ends
    /// here, so that the counter reset on failure cannot be forgotten by one of them.
    ///
    /// # Safety
    /// `A` is the argument block type every kernel of `launches` takes, and its addresses hold what the
    /// kernels touch for its parameters (the caller's buffers and the workspace the plan sized).
    pub(crate) unsafe fn launch_all<A>(&mut self, launches: &[Launch], dtype: DType, args: &A) -> Result<()> {
        for launch in launches {
            // SAFETY: the caller's contract.
            unsafe { self.launch_or_reset(launch, dtype, (args as *const A).cast::<c_void>()) }
                .map_err(LaunchError::into_error)?;
        }
        Ok(())
    }
}

/// The outputs one call writes and how its gradients are scaled: the flags of `kernels/params.h`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct OutputSet {
    pub loss: bool,
    pub grad_student: bool,
    pub grad_teacher: bool,
    /// Gradients are multiplied by the device scalar d total / d loss.
    pub device_upstream: bool,
    /// Gradients are added into their buffers.
    pub accumulate: bool,
}

impl OutputSet {
    /// A training step's outputs, the loss and d loss / d student, overwritten: the call the families'
    /// workspace bounds plan for (the largest their workspaces get).
    pub(crate) const TRAINING: OutputSet =
        OutputSet { loss: true, grad_student: true, grad_teacher: false, device_upstream: false, accumulate: false };

    /// The outputs of a call that writes the loss and d loss / d student, given which of their addresses (and
    /// the upstream scalar's) are set; `other` says whether the call writes an output of its own besides, and
    /// `nothing` is the fix to give when it would write nothing at all.
    pub(crate) fn student(
        loss: bool,
        grad_student: bool,
        upstream: bool,
        other: bool,
        nothing: &'static str,
        options: GradOptions,
    ) -> Result<Self> {
        if !grad_student && upstream {
            return Err(KdError::OutputMismatch {
                what: "upstream",
                fix: "an upstream scalar needs the student gradient too",
            });
        }
        if !grad_student && !loss && !other {
            return Err(KdError::OutputMismatch { what: "loss/grad_student", fix: nothing });
        }
        Ok(OutputSet {
            loss,
            grad_student,
            grad_teacher: false,
            device_upstream: upstream,
            accumulate: options.accumulate,
        })
    }

    pub(crate) fn any_grad(&self) -> bool {
        self.grad_student || self.grad_teacher
    }

    pub(crate) fn flags(&self) -> i32 {
        let mut flags = 0;
        for (on, flag) in [
            (self.loss, ffi::KdOutputFlags_KD_WANT_LOSS),
            (self.grad_student, ffi::KdOutputFlags_KD_WANT_GRAD_STUDENT),
            (self.grad_teacher, ffi::KdOutputFlags_KD_WANT_GRAD_TEACHER),
            (self.device_upstream, ffi::KdOutputFlags_KD_SCALE_BY_UPSTREAM),
            (self.accumulate && self.any_grad(), ffi::KdOutputFlags_KD_ACCUMULATE_GRAD),
        ] {
            if on {
                flags |= flag;
            }
        }
        flags as i32
    }
}

/// Blocks of a 1-D grid, checked against the hardware limit.
pub(crate) fn grid_blocks(what: &'static str, blocks: usize) -> Result<u32> {
    if blocks == 0 || blocks > i32::MAX as usize {
        return Err(KdError::TooLarge { what, detail: format!("needs {blocks} thread blocks; the limit is 2^31 - 1") });
    }
    Ok(blocks as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters in host memory, as the kernels see them through the argument block.
    struct HostCounters(Vec<u32>);

    impl Scratch for HostCounters {
        fn prepare(&mut self, _floats: usize, counters: usize) -> Result<(u64, u64)> {
            self.0 = vec![0; counters];
            Ok((0, self.0.as_mut_ptr() as u64))
        }
        fn reset_counters(&mut self) -> Result<()> {
            self.0.fill(0);
            Ok(())
        }
    }

    /// Each launch takes a ticket of the call's counter (as a chunk of CWT's loss does: the last ticket, which
    /// returns it to zero, belongs to the last chunk), until launch `fail_at`, which fails to launch.
    struct TicketTaker {
        launched: usize,
        fail_at: usize,
    }

    impl Launcher for TicketTaker {
        unsafe fn launch(&mut self, _launch: &Launch, _dtype: DType, args: *const c_void) -> Result<(), LaunchError> {
            if self.launched == self.fail_at {
                return Err(LaunchError::Failed(KdError::Cuda { op: "cuLaunchKernel", error: "refused".into() }));
            }
            self.launched += 1;
            // SAFETY: the test passes the counter's address as the argument block.
            unsafe { **args.cast::<*mut u32>() += 1 };
            Ok(())
        }
    }

    #[test]
    fn a_failed_launch_leaves_the_counters_at_zero() {
        let mut scratch = HostCounters(Vec::new());
        let (_, counters) = scratch.prepare(0, 1).unwrap();
        let mut launcher = TicketTaker { launched: 0, fail_at: 2 };
        let counter = counters as *mut u32;
        let launch = Launch::new("chunk", 1);
        for _ in 0..2 {
            // SAFETY: the argument block is the counter's address, which TicketTaker increments.
            unsafe {
                launch_or_reset(&mut launcher, &mut scratch, &launch, DType::F32, (&counter as *const *mut u32).cast())
            }
            .unwrap();
        }
        assert_eq!(scratch.0, [2], "the chunks before the failure took their tickets");
        // SAFETY: as above.
        let failed = unsafe {
            launch_or_reset(&mut launcher, &mut scratch, &launch, DType::F32, (&counter as *const *mut u32).cast())
        };
        assert!(matches!(failed, Err(LaunchError::Failed(KdError::Cuda { op: "cuLaunchKernel", .. }))));
        assert_eq!(scratch.0, [0], "a failed launch resets the counters for the next call");
    }
}
