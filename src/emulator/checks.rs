//! The buffers an emulated call's kernels may touch, registered by name with the emulator's checks
//! (`kernels/emulator/checks.h`, docs/emulation.md).
//!
//! Every emulated launch copies the registered buffers of its thread's call into an arena of its own, rewrites
//! the argument block's addresses to the copies and checks every load and store of the kernels against them:
//! out of bounds, a store to an input, a workspace byte read before any kernel of the call wrote it. An
//! address in the argument block that lies in no registered buffer fails the launch, so a family's emulation
//! cannot forget one.

use std::ffi::{c_char, c_void, CString};

extern "C" {
    fn kd_emu_register(name: *const c_char, host: u64, bytes: usize, kind: i32);
    fn kd_emu_unregister(host: u64);
}

/// What a buffer holds (`kd_emu::BufferKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum BufferKind {
    /// Read-only for the kernels.
    Input = 0,
    /// Written by the kernels, initialised by the host.
    Output = 1,
    /// Scratch: each byte written by a kernel of the call before any reads it (initcheck).
    Workspace = 2,
    /// Zeroed by the host, left at zero by the kernels.
    Counters = 3,
}

/// Registers host buffers with the emulator for as long as it lives (the call's buffers).
#[derive(Default)]
pub(crate) struct HostBuffers {
    hosts: Vec<u64>,
}

impl HostBuffers {
    pub(crate) fn new() -> Self {
        HostBuffers::default()
    }

    /// Registers `data` (an empty slice registers nothing: its address is never dereferenced).
    pub(crate) fn register<T>(mut self, name: &str, data: &[T], kind: BufferKind) -> Self {
        self.add(name, data.as_ptr().cast::<c_void>(), std::mem::size_of_val(data), kind);
        self
    }

    /// An input of the call.
    pub(crate) fn input<T>(self, name: &str, data: &[T]) -> Self {
        self.register(name, data, BufferKind::Input)
    }

    /// An output of the call (the kernels read it too when they accumulate).
    pub(crate) fn output<T>(self, name: &str, data: &[T]) -> Self {
        self.register(name, data, BufferKind::Output)
    }

    pub(crate) fn add(&mut self, name: &str, host: *const c_void, bytes: usize, kind: BufferKind) {
        if bytes == 0 {
            return;
        }
        let name = CString::new(name).expect("buffer names have no NUL");
        // SAFETY: the name is a valid C string for the call; the emulator copies it.
        unsafe { kd_emu_register(name.as_ptr(), host as u64, bytes, kind as i32) };
        self.hosts.push(host as u64);
    }
}

impl Drop for HostBuffers {
    fn drop(&mut self) {
        for &host in &self.hosts {
            // SAFETY: forgets what `add` registered on this thread.
            unsafe { kd_emu_unregister(host) };
        }
    }
}

/// The argument block of the checks' own test kernels (`kernels/emulator/selftest/broken.cu`).
#[repr(C)]
struct SelftestArgs {
    input: u64,
    output: u64,
    workspace: u64,
    counter: u64,
    n: i64,
    mode: i32,
    reserved: i32,
}

/// Whether this build of the emulation runs under UndefinedBehaviorSanitizer (every build but one made with
/// `KD_EMU_SANITIZE=0`): undefined behaviour in an emulated kernel or in the emulator aborts the process with
/// the sanitizer's report.
#[doc(hidden)]
pub const UNDEFINED_BEHAVIOR_SANITIZER: bool = cfg!(kd_emulator_ubsan);

/// How [`selftest`] sets up its launch.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Selftest {
    /// The entry point without its `_f32` suffix, e.g. `selftest_oob_load`.
    pub kernel: &'static str,
    /// Blocks.
    pub grid: u32,
    /// Floats in the input and the output (the workspace has 64 more).
    pub n: usize,
    /// The kernel's variant.
    pub mode: i32,
    /// Register the output with the checks (false tests the check of unregistered addresses).
    pub register_output: bool,
}

/// Runs one of the checks' test kernels on an input of `0, 1, 2, ...` and returns the output, or the
/// launch's error (the failed check's message). For tests of the checks themselves.
#[doc(hidden)]
pub fn selftest(t: Selftest) -> crate::Result<Vec<f32>> {
    use crate::launch::{Launch, Launcher, Scratch};
    let input: Vec<f32> = (0..t.n).map(|i| i as f32).collect();
    let mut output = vec![f32::NAN; t.n];
    let mut registered = HostBuffers::new().input("input", &input);
    if t.register_output {
        registered = registered.output("output", &output);
    }
    let mut scratch = super::HostScratch::default();
    let (workspace, counter) = scratch.prepare(t.n + 64, 1)?;
    let args = SelftestArgs {
        input: input.as_ptr() as u64,
        output: output.as_mut_ptr() as u64,
        workspace,
        counter,
        n: t.n as i64,
        mode: t.mode,
        reserved: 0,
    };
    let launch = Launch::new(t.kernel, t.grid);
    // SAFETY: `args` is the block the selftest kernels take, its addresses live host buffers of n floats.
    unsafe { super::EmulatedLauncher.launch(&launch, crate::DType::F32, (&args as *const SelftestArgs).cast()) }
        .map_err(|e| e.into_error())?;
    drop(registered);
    scratch.check_counters("selftest")?;
    Ok(output)
}
