//! The kernels on the host (feature `emulator`) against the CPU reference, one module per family, and the
//! emulation's own checks (`checks`): `cargo test --release --features emulator --test emulator [module::]`.
#![cfg(feature = "emulator")]

#[path = "../common/mod.rs"]
mod common;
#[path = "../semckd_support/mod.rs"]
mod semckd_support;

mod checks;
mod cwt;
mod dist;
mod icsd;
mod ifvd;
mod pair;
mod pkd;
mod semckd;
mod skd;
