//! The kernels on the host (feature `emulator`) against the CPU reference, one module per registered family
//! (`tests/emulator/{module}.rs`, declared from the crate's registry: a family cannot be registered without
//! its emulator tests), what the pair families share (`pair`), and the emulation's own checks (`checks`):
//! `cargo test --release --features emulator --test emulator [module::]`.
#![cfg(feature = "emulator")]

#[path = "../common/mod.rs"]
mod common;

mod checks;
mod pair;

macro_rules! family_modules {
    ($($variant:ident => $module:ident :: $marker:ident, $name:literal, $fixtures:ident;)*) => {
        $(mod $module;)*
    };
}
kd_kernels::for_each_family!(family_modules);
