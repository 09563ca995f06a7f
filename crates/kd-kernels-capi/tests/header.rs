//! `include/kd_kernels.h` is generated from this crate's source by cbindgen (configured by `cbindgen.toml`
//! beside the manifest): the declarations, their C names and their doc comments. This test generates it
//! again and fails when the committed header differs, so the header, the Rust ABI and (through
//! `python/tests/test_abi_layout.py`, which reads the header) the Python package's ctypes layouts cannot
//! drift apart. `KD_KERNELS_BLESS_HEADER=1 cargo test -p kd-kernels-capi --test header` rewrites the header.

use std::path::Path;

#[test]
fn committed_header_is_the_generated_one() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen parses the crate's source");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("cbindgen writes UTF-8");

    let header = crate_dir.join("../../include/kd_kernels.h");
    if std::env::var_os("KD_KERNELS_BLESS_HEADER").is_some() {
        std::fs::write(&header, &generated).expect("write include/kd_kernels.h");
        return;
    }
    let committed = std::fs::read_to_string(&header).expect("read include/kd_kernels.h");
    if committed != generated {
        let (line, (want, got)) = generated
            .lines()
            .chain(std::iter::repeat("<end of file>"))
            .zip(committed.lines().chain(std::iter::repeat("<end of file>")))
            .enumerate()
            .find(|(_, (want, got))| want != got)
            .expect("two different texts differ on some line");
        panic!(
            "include/kd_kernels.h is not what cbindgen generates from crates/kd-kernels-capi/src: line {}\n  \
             generated: {want}\n  committed: {got}\nRegenerate it with \
             `KD_KERNELS_BLESS_HEADER=1 cargo test -p kd-kernels-capi --test header`, review the diff, commit it.",
            line + 1
        );
    }
}
