//! Where the peer's programs are: `medmesh` (the node) and `medmesh-train` (its training
//! worker, which the node finds by itself next to `medmesh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use anyhow::Context;

/// The node program's file name.
pub const NODE: &str = "medmesh";
/// Environment variable naming the node program.
pub const NODE_ENV: &str = "MEDMESH";

/// The node program: `MEDMESH` if set, else `medmesh` next to the running executable (or next
/// to its parent folder, for test binaries in `target/<profile>/deps`), else `medmesh` on the
/// `PATH`.
pub fn node() -> PathBuf {
    if let Some(path) = std::env::var_os(NODE_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let name = format!("{NODE}{}", std::env::consts::EXE_SUFFIX);
    if let Some(dir) = profile_dir()
        && dir.join(&name).is_file()
    {
        return dir.join(&name);
    }
    PathBuf::from(name)
}

/// The folder of the running executable's cargo profile (`target/<profile>`), where cargo puts
/// the workspace's binaries.
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir.parent().map(Path::to_owned)
    } else {
        Some(dir.to_owned())
    }
}

/// For tests run by cargo: `medmesh` and `medmesh-train` of the current profile, built first
/// (once per process) when either is missing or older than a source file of the crates they
/// are made of, so that `cargo test -p medmesh-lab` on a clean target tests fresh binaries.
/// `cargo test --workspace` has built them already and nothing is rebuilt.
pub fn built() -> anyhow::Result<&'static Path> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            build(
                &[NODE, "medmesh-train"],
                &["medmesh-node", "medmesh-trainer"],
                &["protocol", "learning", "record", "node", "trainer"],
            )
            .map_err(|e| format!("{e:#}"))
        })
        .as_deref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// For tests run by cargo: the simulator `medmesh-sim` of the current profile, built first as
/// [`built`] builds the peer's programs (the lab's tests compare a mesh with its simulation).
pub fn simulator() -> anyhow::Result<&'static Path> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            build(
                &["medmesh-sim"],
                &["medmesh-simulations"],
                &["protocol", "learning", "trainer", "simulations"],
            )
            .map_err(|e| format!("{e:#}"))
        })
        .as_deref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The programs `names` of the current profile, built from `packages` when one is missing or
/// older than a source file of the workspace folders `crates`; the first program's path.
fn build(names: &[&str], packages: &[&str], crates: &[&str]) -> anyhow::Result<PathBuf> {
    let dir = profile_dir().context("cannot tell where the test binary is")?;
    let exe = |name: &str| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let binaries: Vec<PathBuf> = names.iter().map(|n| exe(n)).collect();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the lab crate sits in the workspace")?;
    let newest_source = crates
        .iter()
        .filter_map(|krate| newest(&workspace.join(krate)))
        .max();
    let stale = binaries.iter().any(|b| {
        let built = std::fs::metadata(b).and_then(|m| m.modified()).ok();
        built.is_none() || newest_source.is_some_and(|s| Some(s) > built)
    });
    if stale {
        let profile = match dir.file_name().and_then(|d| d.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let target = dir.parent().context("the profile folder has a parent")?;
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let what = names.join(" and ");
        eprintln!("building {what} ({profile}) for the process tests");
        let mut command = Command::new(cargo);
        command.current_dir(workspace).args(["build", "--bins"]);
        for package in packages {
            command.args(["-p", package]);
        }
        let status = command
            .args(["--profile", &profile, "--target-dir"])
            .arg(target)
            .status()
            .with_context(|| format!("cannot run {cargo}"))?;
        anyhow::ensure!(status.success(), "building {what} failed");
    }
    for binary in &binaries {
        anyhow::ensure!(binary.is_file(), "{} is missing", binary.display());
    }
    Ok(binaries[0].clone())
}

/// The newest modification time of a `.rs` or `Cargo.toml` file under `dir`.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                || path.file_name().is_some_and(|n| n == "Cargo.toml")
            {
                let modified = entry.metadata().and_then(|m| m.modified()).ok();
                newest = newest.max(modified);
            }
        }
    }
    newest
}
