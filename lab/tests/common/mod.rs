//! What the multi-process tests share: a local mesh's settings, waiting on conditions with a
//! deadline, and running the `medmesh` CLI.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use medmesh_lab::mesh::{self, Children, LocalNode, MeshSpec, Options};
use medmesh_learning::data::Task;
use medmesh_learning::learner::ModelSpec;
use medmesh_node::config::{DataConfig, NodeConfig, Shard};
use medmesh_node::node::write_roster;

/// The `medmesh` binary under test, with its training worker `medmesh-train` beside it (built
/// first if missing or stale: see `programs::built`).
pub(crate) fn exe() -> &'static Path {
    medmesh_lab::programs::built().expect("the peer's programs for the process tests")
}

/// The shipped heart-disease schema.
pub(crate) fn schema() -> PathBuf {
    std::fs::canonicalize(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/heart-disease/schema.toml"),
    )
    .expect("shipped schema")
}

/// A site's records, whole or one shard.
pub(crate) fn data(site: &str, shard: Option<(usize, usize)>) -> DataConfig {
    DataConfig {
        schema: schema(),
        site: site.into(),
        shard: shard.map(|(index, count)| Shard { index, count }),
    }
}

/// FLamby-like settings with short round timeouts (a missing member costs seconds, not a
/// minute), for a mesh in `dir`.
pub(crate) fn options(dir: &Path, rounds: u64) -> Options {
    Options {
        data: schema(),
        dir: dir.to_owned(),
        rounds: Some(rounds),
        steps: Some(100),
        lr: Some(0.01),
        seed: 42,
        seeds: Vec::new(),
        round_timeout: 8,
        timeout: 600,
        json: None,
        resume: false,
        no_validator: true,
        outer: None,
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or fails naming `what` at the deadline.
pub(crate) fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `medmesh ARGS`, asserting success; its stdout.
pub(crate) fn cli(args: &[&str]) -> String {
    let output = Command::new(exe())
        .args(args)
        .output()
        .expect("medmesh runs");
    assert!(
        output.status.success(),
        "medmesh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A log file's text (empty if missing).
pub(crate) fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The founders' genesis roster of `nodes` (every one a US hospital, a majority to sign
/// updates), written to `dir/roster.json`; its path.
pub(crate) fn genesis(dir: &Path, nodes: &[&LocalNode]) -> PathBuf {
    let path = dir.join("roster.json");
    write_roster(
        &path,
        &mesh::genesis("heart-disease-mesh", nodes, "US").expect("genesis"),
    )
    .expect("write genesis");
    path
}

/// The heart-disease experiment of `options` on the roster at `genesis`.
pub(crate) fn spec<'a>(options: &'a Options, genesis: &'a Path) -> MeshSpec<'a> {
    MeshSpec {
        options,
        model: ModelSpec::Logistic { inputs: 13 },
        budget: options.budget(Task::Binary),
        experiment: "heart-disease",
        genesis,
    }
}

/// Starts a `medmesh run` process for each of `nodes`, its config made for `spec` with `fanout`
/// and then changed by `edit` (given the node's index).
pub(crate) fn start(
    nodes: &[LocalNode],
    spec: &MeshSpec<'_>,
    fanout: usize,
    edit: impl Fn(usize, &mut NodeConfig),
) -> Children {
    let all: Vec<&LocalNode> = nodes.iter().collect();
    let mut children = Children::default();
    for (i, node) in nodes.iter().enumerate() {
        let mut config = node.config(spec, i, fanout, &all).expect("config");
        edit(i, &mut config);
        node.write_config(&config).expect("write config");
        children.set(i, node.spawn(exe()).expect("spawn"));
    }
    children
}
