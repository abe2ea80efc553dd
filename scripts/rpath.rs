//! Build script shared by the workspace crates whose binaries, tests or examples link libtorch
//! through `tch` (`build = "../scripts/rpath.rs"` in their Cargo.toml).
//!
//! It bakes `<LIBTORCH>/lib` into the rpath of everything the crate links, so tests and
//! binaries find `libtorch_cpu.so` without `LD_LIBRARY_PATH` (which cannot be set for test
//! binaries through `.cargo/config.toml`). `libtorch_cpu.so` then finds its own dependencies
//! (`libcudart.so.13`, ...) through its `$ORIGIN` rpath.
//!
//! LIBTORCH normally comes from `.cargo/config.toml` (`<workspace>/.libtorch`, a symlink made
//! by `scripts/libtorch`). The path is canonicalized, so the rpath names the real directory in
//! the cache: re-pointing `.libtorch` takes effect once this script re-runs, which it does when
//! LIBTORCH or the `libtorch_cpu.so` behind it changes.
//!
//! Link arguments apply only to the crate that runs this script, not to crates depending on
//! it: every crate with binaries/tests that link tch, even indirectly, needs this script.

use std::env;
use std::path::Path;

fn main() {
    // The simulator links libtorch only with its `torch` feature.
    if env::var("CARGO_PKG_NAME").is_ok_and(|p| p == "medmesh-simulations")
        && env::var_os("CARGO_FEATURE_TORCH").is_none()
    {
        return;
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = env::var_os("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set, so tch cannot find libtorch: run scripts/libtorch \
             (or scripts/setup), which installs it and links .libtorch for .cargo/config.toml"
        );
        return;
    };
    let lib = Path::new(&libtorch).join("lib");
    let libtorch_cpu = lib.join("libtorch_cpu.so");
    // cargo follows symlinks when it checks this file's mtime, so a fresh install behind a
    // re-pointed .libtorch re-runs the script (a missing file re-runs it on every build).
    println!("cargo:rerun-if-changed={}", libtorch_cpu.display());
    if !libtorch_cpu.is_file() {
        println!(
            "cargo:warning=LIBTORCH={} has no lib/libtorch_cpu.so: run scripts/libtorch to \
             install libtorch (or point LIBTORCH at a libtorch directory)",
            Path::new(&libtorch).display()
        );
        return;
    }
    let lib = match lib.canonicalize() {
        Ok(lib) => lib,
        Err(err) => {
            println!("cargo:warning=cannot resolve {}: {err}", lib.display());
            return;
        }
    };
    let Some(lib) = lib.to_str() else {
        println!(
            "cargo:warning=libtorch path {} is not UTF-8; no rpath set",
            lib.display()
        );
        return;
    };
    // `-Wl,` splits its argument at commas, which would cut such a path apart.
    if lib.contains(',') {
        println!("cargo:warning=libtorch path {lib} contains a comma; no rpath set");
        return;
    }
    // Only ELF/Mach-O linkers know -rpath; scripts/libtorch supports Linux only anyway.
    let family = env::var("CARGO_CFG_TARGET_FAMILY").unwrap_or_default();
    if family.split(',').any(|f| f == "unix") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
