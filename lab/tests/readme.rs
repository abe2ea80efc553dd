//! README's "Three hospitals by hand", run as written: three network namespaces on one bridge
//! with the README's addresses (10.0.0.11–13, TCP port 4001 each), one folder per machine, and
//! the shell blocks of that section, taken from README.md itself, run in each machine's
//! namespace and folder. Only what the README says happens between machines is done here:
//! handing over the ids `medmesh id` printed (as the variables the commands use) and passing
//! `roster.json` along. The three train to the demo's bar. Needs root, like the network lab;
//! without it the test fails saying what is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use medmesh_lab::netlab::topology::Topology;

/// The machines of the README: (site, environment prefix, address).
const MACHINES: [(&str, &str, &str); 3] = [
    ("cleveland", "CLEVELAND", "10.0.0.11"),
    ("hungarian", "HUNGARIAN", "10.0.0.12"),
    ("va", "VA", "10.0.0.13"),
];

/// The shell block after the marker `<!-- readme-test: NAME -->` in README.md.
fn block(readme: &str, name: &str) -> String {
    let marker = format!("<!-- readme-test: {name} -->");
    let start = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README.md has no block {marker}"));
    let rest = &readme[start + marker.len()..];
    let open = rest.find("```sh\n").expect("a sh block after the marker") + "```sh\n".len();
    let close = rest[open..].find("```").expect("the block ends");
    rest[open..open + close].to_owned()
}

/// Three namespaces on a bridge in a fourth, removed on drop.
struct Lan {
    namespaces: Vec<String>,
    switch: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip runs");
    assert!(status.success(), "ip {args:?} failed");
}

impl Lan {
    fn build() -> Lan {
        let tag = format!("{:x}", std::process::id() % 0xffff);
        let switch = format!("mmrd{tag}sw");
        let lan = Lan {
            namespaces: MACHINES
                .iter()
                .map(|(site, _, _)| format!("mmrd{tag}{site}"))
                .collect(),
            switch,
        };
        ip(&["netns", "add", &lan.switch]);
        ip(&["-n", &lan.switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan.switch, "link", "set", "br0", "up"]);
        for (i, (ns, (_, _, address))) in lan.namespaces.iter().zip(MACHINES).enumerate() {
            ip(&["netns", "add", ns]);
            let (inside, outside) = (format!("mmrd{tag}h{i}"), format!("mmrd{tag}s{i}"));
            ip(&[
                "link", "add", &inside, "type", "veth", "peer", "name", &outside,
            ]);
            ip(&["link", "set", &inside, "netns", ns]);
            ip(&["link", "set", &outside, "netns", &lan.switch]);
            ip(&["-n", &lan.switch, "link", "set", &outside, "master", "br0"]);
            ip(&["-n", &lan.switch, "link", "set", &outside, "up"]);
            ip(&["-n", ns, "link", "set", &inside, "name", "eth0"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        lan
    }

    /// `bash` running `script` as machine `i` would: in its namespace and folder.
    fn shell(&self, i: usize, dir: &Path, script: &str, env: &[(String, String)]) -> Command {
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.namespaces[i],
                "bash",
                "-euo",
                "pipefail",
                "-c",
            ])
            .arg(script)
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (k, v)));
        command
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `command`, asserting success; its standard output.
fn output(mut command: Command, what: &str) -> String {
    let out = command.output().expect("bash runs");
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The value after `label` on a line of `text`.
fn after(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no line starting {label:?} in: {text}"))
        .trim()
        .to_owned()
}

#[test]
fn three_hospitals_set_up_by_the_readme_train_together() {
    if let Err(e) = Topology::check_capabilities() {
        panic!("README's three-machine walkthrough runs in network namespaces: {e}");
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let exe = common::exe();
    let bin = exe.parent().expect("the binaries' folder");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = MACHINES
        .iter()
        .map(|(site, _, _)| {
            let dir = root.path().join(site);
            std::fs::create_dir(&dir).expect("machine folder");
            dir
        })
        .collect();
    let lan = Lan::build();
    let mut env = vec![("PATH".to_owned(), path)];

    // Each machine: a key, its ids, its config.
    let each = block(&readme, "each machine");
    for (i, (site, prefix, _)) in MACHINES.iter().enumerate() {
        let mut vars = env.clone();
        vars.push(("SITE".into(), (*site).into()));
        vars.push(("DATA".into(), common::schema().display().to_string()));
        let printed = output(lan.shell(i, &dirs[i], &each, &vars), site);
        env.push((format!("{prefix}_ID"), after(&printed, "member id ")));
        env.push((format!("{prefix}_PEER"), after(&printed, "peer id ")));
        let config = std::fs::read_to_string(dirs[i].join("medmesh.toml")).expect("config");
        assert!(config.contains(&format!("site = \"{site}\"")), "{config}");
    }

    // The genesis, signed by each founder in turn, then handed to all.
    output(
        lan.shell(0, &dirs[0], &block(&readme, "first machine"), &env),
        "the genesis",
    );
    let others = block(&readme, "other machines");
    let mut shown = String::new();
    for i in 1..MACHINES.len() {
        std::fs::copy(dirs[i - 1].join("roster.json"), dirs[i].join("roster.json"))
            .expect("pass roster.json on");
        shown = output(lan.shell(i, &dirs[i], &others, &env), "signing");
    }
    assert!(
        shown.contains("complete: every founder signed") && shown.contains("genesis digest"),
        "{shown}"
    );
    let last = dirs[MACHINES.len() - 1].join("roster.json");
    for dir in &dirs[..MACHINES.len() - 1] {
        std::fs::copy(&last, dir.join("roster.json")).expect("hand out the complete roster");
    }

    // Every machine runs its node.
    let run = block(&readme, "every machine");
    let mut nodes: Vec<Child> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let log = std::fs::File::create(dir.join("node.log")).expect("log");
            lan.shell(i, dir, &run, &env)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("the node starts")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut statuses = vec![None; nodes.len()];
    while statuses.iter().any(Option::is_none) && Instant::now() < deadline {
        for (node, status) in nodes.iter_mut().zip(&mut statuses) {
            if status.is_none() {
                *status = node.try_wait().expect("wait");
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for node in &mut nodes {
        let _ = node.kill();
    }
    let mut accuracies = Vec::new();
    for ((dir, status), (site, _, _)) in dirs.iter().zip(&statuses).zip(MACHINES) {
        let log = std::fs::read_to_string(dir.join("node.log")).expect("log");
        assert!(
            status.is_some_and(|s| s.success()),
            "{site}'s node did not finish cleanly ({status:?}): {log}"
        );
        let line = log
            .lines()
            .find(|l| l.contains("final model on the local test split"))
            .unwrap_or_else(|| panic!("{site} logged no final accuracy: {log}"));
        assert!(
            !line.contains('\u{1b}'),
            "colour codes in a log file: {line}"
        );
        let accuracy: f64 = after(&line.replace(' ', "\n"), "accuracy=")
            .parse()
            .expect("a number");
        accuracies.push(accuracy);
    }
    let mean = accuracies.iter().sum::<f64>() / accuracies.len() as f64;
    eprintln!("final accuracies {accuracies:?}, mean {mean:.3}");
    assert!(mean >= 0.70, "mean final accuracy {mean} below 0.70");
}
