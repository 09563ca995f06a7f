//! The loss benches, one binary (`cargo bench --bench losses`): one module per family (`benches/{family}.rs`,
//! its `run`) and the set-up they share (`common`).
//!
//! ```text
//! cargo bench --bench losses                       # every family
//! cargo bench --bench losses -- dist               # one family: its name as criterion's filter
//! cargo bench --bench losses -- 8x19x64x128 --quick
//! ```
//!
//! A filter that names a family (`dist`, `dist_bf16/gpu_forward`) runs that family's module alone; any other
//! filter runs every family's, each skipping the benchmarks criterion would skip. One binary rather than one
//! per family: each links every kernel's fatbin, so the GPU bundle carries them once.

mod common;

/// One module per registered family (`benches/{module}.rs`, its `run`), from the crate's registry: a family
/// cannot be registered without its benches, and every registered family's run here.
macro_rules! family_benches {
    ($($variant:ident => $module:ident :: $marker:ident, $name:literal, $fixtures:ident;)*) => {
        $(mod $module;)*

        /// Every family's benches, in the registry's order.
        const FAMILIES: &[(&str, fn())] = &[$(($name, $module::run),)*];
    };
}
kd_kernels::for_each_family!(family_benches);

fn main() {
    let args = common::Args::from_env();
    let names: Vec<&str> = FAMILIES.iter().map(|&(name, _)| name).collect();
    for &(name, run) in FAMILIES {
        if args.wants_family(name, &names) {
            run();
        }
    }
}
