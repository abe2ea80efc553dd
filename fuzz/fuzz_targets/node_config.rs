//! A hospital's node config file: TOML text through `NodeConfig::load` (read, parse, resolve
//! relative paths, check the rules that span sections).
//!
//! The input is written to `node.toml` in a temporary folder made once per process. Checks:
//! nothing panics; a config that loads serializes back to TOML (as `medmesh-lab mesh` writes the
//! configs it generates) and that TOML parses to the same config.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use medmesh_node::config::NodeConfig;

static DIR: LazyLock<tempfile::TempDir> =
    LazyLock::new(|| tempfile::tempdir().expect("a temporary folder"));
static PATH: LazyLock<PathBuf> = LazyLock::new(|| DIR.path().join("node.toml"));

fuzz_target!(|data: &[u8]| {
    medmesh_fuzz::replace_file(&PATH, data);
    let Ok(config) = NodeConfig::load(&PATH) else {
        return;
    };
    let text = toml::to_string(&config).expect("a loaded config serializes");
    let back: NodeConfig = toml::from_str(&text).expect("a serialized config parses");
    assert_eq!(back, config, "the config changed through TOML:\n{text}");
});
