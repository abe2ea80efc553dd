//! The dashboard in a real browser: four `medmesh` hospitals train while headless Chromium
//! (Debian's `chromium`, which `scripts/setup` installs) opens one node's dashboard through the
//! login link `medmesh dashboard` prints, and the test reads what the page rendered: the member
//! count, the round advancing between two visits, a chart drawn, the roster's connections and a
//! certification verdict with its reasons. It saves a screenshot to `target/dashboard.png`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use medmesh_lab::mesh::LocalNode;
use medmesh_protocol::validation::Policy;

mod common;

use common::{data, options, wait_for};

/// The headless browser: Debian's `chromium`.
fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the dashboard test needs a headless browser: install Debian's `chromium` package \
                 (scripts/setup does, when run as root)"
            )
        })
}

/// A fresh login link to `node`'s dashboard, from `medmesh dashboard`.
fn login_link(node: &LocalNode) -> String {
    let config = node.config_path().to_string_lossy().into_owned();
    let link = common::cli(&["dashboard", "--config", &config]);
    let link = link.trim().to_owned();
    assert!(link.contains("/dashboard/login?code="), "{link}");
    link
}

/// Chromium, headless in a fresh profile, opens `url` and runs its scripts for a few seconds of
/// virtual time; `extra` says what to produce (`--dump-dom`, `--screenshot=…`). Its stdout.
fn browse(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile");
    let output = Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=5000",
            "--window-size=1400,1200",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The text of the element with `id` in a dumped DOM (up to its first tag end).
fn text_of(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in the page: {dom}"));
    let rest = &dom[at..];
    let open = rest.find('>').expect("tag end") + 1;
    let close = rest[open..].find('<').expect("text end");
    rest[open..open + close].trim().to_owned()
}

#[test]
fn the_dashboard_shows_the_mesh_training_in_a_real_browser() {
    let browser = chromium();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // Many rounds, so the mesh is still training while the browser looks twice.
    let options = options(dir, 2_000);
    let sites = ["cleveland", "hungarian", "switzerland", "va"];
    let nodes = sites.map(|site| LocalNode::new(dir, site, data(site, None)).expect("node"));
    let all: Vec<&LocalNode> = nodes.iter().collect();
    let genesis = common::genesis(dir, &all);
    let spec = common::spec(&options, &genesis);
    let _children = common::start(&nodes, &spec, 3, |_, config| {
        config.experiment.certification = Some(Policy {
            metric: "auc".into(),
            min: 0.5,
            min_samples: 1_000,
            validators: 1,
            countries: 1,
        });
    });
    wait_for(
        "three rounds at Cleveland",
        Duration::from_secs(180),
        || nodes[0].status().filter(|s| s.round >= 3).map(|_| ()),
    );

    let first = browse(&login_link(&nodes[0]), &["--dump-dom"]);
    assert_eq!(text_of(&first, "member-count"), "4", "the roster's members");
    let round_before: u64 = text_of(&first, "round").parse().expect("a round number");
    assert!(round_before >= 3, "{round_before}");
    let loss = &first[first.find("id=\"loss-chart\"").expect("loss chart")..];
    assert!(
        loss[..loss.find("</svg>").expect("svg end")].contains("<polyline"),
        "no loss line drawn: {loss}"
    );
    assert!(first.contains("(this node)"), "the roster table");
    assert!(
        first.contains(">direct<"),
        "the other hospitals are connected directly: {first}"
    );

    // The mesh trains on: a later visit shows a later round.
    wait_for(
        "Cleveland's round to advance",
        Duration::from_secs(120),
        || {
            nodes[0]
                .status()
                .filter(|s| s.round >= round_before + 5)
                .map(|_| ())
        },
    );
    // A hospital validates a version on its own test split: 1,000 patients are required, so the
    // verdict says why it is not certified.
    let config = nodes[1].config_path().to_string_lossy().into_owned();
    common::cli(&["validate", "--config", &config, "--model", "latest"]);
    wait_for(
        "Cleveland to hold a verdict",
        Duration::from_secs(60),
        || {
            nodes[0]
                .status()
                .filter(|s| !s.verdicts.is_empty())
                .map(|_| ())
        },
    );
    let second = browse(&login_link(&nodes[0]), &["--dump-dom"]);
    let round_after: u64 = text_of(&second, "round").parse().expect("a round number");
    assert!(
        round_after > round_before,
        "{round_before} -> {round_after}"
    );
    assert!(second.contains("not certified"), "the verdict: {second}");
    assert!(
        second.contains("below min_samples 1000"),
        "the verdict says why: {second}"
    );

    // Without the login link the browser gets the login page and none of the data.
    let port = nodes[0].admin.port();
    let anonymous = browse(
        &format!("http://127.0.0.1:{port}/dashboard"),
        &["--dump-dom"],
    );
    assert!(anonymous.contains("id=\"login\""), "{anonymous}");
    assert!(!anonymous.contains("cleveland"), "{anonymous}");

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
    browse(
        &login_link(&nodes[0]),
        &[&format!("--screenshot={}", shot.display())],
    );
    let size = std::fs::metadata(&shot).expect("screenshot written").len();
    assert!(
        size > 20_000,
        "a {size}-byte screenshot is too small to show the page"
    );
    drop(browser);
}
