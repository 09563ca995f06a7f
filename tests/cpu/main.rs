//! The CPU reference's tests: one module per registered family (`tests/cpu/{module}.rs`, declared from the
//! crate's registry: a family cannot be registered without its CPU tests; fixtures, finite differences,
//! properties, typed errors), and the cross-family ones: the recorded fixtures (`fixtures`), the typed errors
//! (`errors`), finite differences and `backward`'s scaling (`gradcheck`), and what CWD and pixel KD share
//! (`properties`): `cargo test --release --test cpu [module::]`.

#[path = "../common/mod.rs"]
mod common;

mod errors;
mod fixtures;
mod gradcheck;
mod properties;

macro_rules! family_modules {
    ($($variant:ident => $module:ident :: $marker:ident, $name:literal, $fixtures:ident;)*) => {
        $(mod $module;)*
    };
}
kd_kernels::for_each_family!(family_modules);
