//! The CPU reference's tests, one module per family (fixtures, finite differences, properties, typed
//! errors) and the cross-family ones: `cargo test --release --test cpu [module::]`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../semckd_support/mod.rs"]
mod semckd_support;

mod cirkd;
mod cwt;
mod dist;
mod errors;
mod fixtures;
mod gradcheck;
mod icsd;
mod ifvd;
mod pkd;
mod properties;
mod semckd;
mod skd;
