//! The snapshot of a node that `GET /status` serves and `medmesh status` prints: plain data that
//! the event loop fills in, the server clones and the client parses, with no I/O of its own.
//!
//! It must never carry keys, patient data or parameters — only counters, ids and aggregate
//! training metrics, since the endpoint that serves it has no authentication.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use medmesh_protocol::identity::{ContentId, MemberId};
use serde::{Deserialize, Serialize};

/// Where a node is in its round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// This key is not on the roster yet: waiting for the members to admit it.
    Admission,
    /// Waiting for the other members to join before the first round.
    #[default]
    Starting,
    /// Training locally.
    Training,
    /// Announced; pulling and merging the other members' versions.
    Gathering,
    /// Every round is done (the node lingers to serve slower members).
    Finished,
}

/// Connected peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peers {
    /// Peers with an open connection.
    pub connected: usize,
    /// Peers subscribed to the mesh's gossip topic.
    pub subscribed: usize,
    /// Payload pulls in flight (requested, not yet answered).
    #[serde(default)]
    pub pulls: usize,
}

/// The last round that closed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundSummary {
    /// The round.
    pub round: u64,
    /// Authors merged, this node first.
    pub contributors: Vec<MemberId>,
    /// Whether it closed on its timeout rather than on completed pulls.
    pub timed_out: bool,
}

/// The last local training.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Training {
    /// The round trained.
    pub round: u64,
    /// Wall time on the training thread, seconds.
    pub seconds: f64,
    /// What the learner reported (`loss`, ...).
    pub metrics: BTreeMap<String, f64>,
}

/// The final model on this hospital's own test split: a binary task's accuracy and AUC, or a
/// survival task's C-index (the other task's fields `null`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Test {
    /// Test rows.
    pub samples: usize,
    /// Accuracy at threshold 0.5 (a binary task).
    pub accuracy: Option<f64>,
    /// Area under the ROC curve, when both classes are present (a binary task).
    pub auc: Option<f64>,
    /// Harrell's C-index, when the split has a comparable pair (a survival task).
    #[serde(default)]
    pub c_index: Option<f64>,
}

/// The hospital's personalized model (fine-tuned locally from the shared final model).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Personalized {
    /// Fine-tuning steps from the shared model that cross-validation picked (0: none helped).
    pub steps: usize,
    /// The personalized model on the local test split.
    pub test: Test,
}

impl Test {
    /// Its defined figures as text ("accuracy 0.750, AUC 0.933"); `None` if none is defined.
    pub fn figures(&self) -> Option<String> {
        let figures: Vec<String> = [
            ("accuracy", self.accuracy),
            ("AUC", self.auc),
            ("C-index", self.c_index),
        ]
        .iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name} {v:.3}")))
        .collect();
        (!figures.is_empty()).then(|| figures.join(", "))
    }
}

impl From<&medmesh_learning::metrics::Evaluation> for Test {
    fn from(evaluation: &medmesh_learning::metrics::Evaluation) -> Self {
        Self {
            samples: evaluation.samples(),
            accuracy: evaluation.accuracy(),
            auc: evaluation.auc(),
            c_index: evaluation.c_index(),
        }
    }
}

/// A member of the roster, as the dashboard lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    /// Its member id.
    pub id: MemberId,
    /// Its roster name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Its country code.
    pub country: String,
    /// `hospital`, `validator`, `observer` or `relay`.
    pub role: String,
    /// Its group (two-level averaging), empty for none.
    pub group: String,
    /// This node itself.
    pub this: bool,
    /// `direct` or `relayed` while connected; none when not connected.
    pub connection: Option<String>,
    /// The last round-trip time measured to it, milliseconds.
    pub rtt_ms: Option<f64>,
    /// Blocked by this node's operator.
    pub blocked: bool,
}

/// One closed round, for the dashboard's charts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundPoint {
    /// The round.
    pub round: u64,
    /// Training loss this node reported for the round, if any.
    pub loss: Option<f64>,
    /// DP ε spent after the round's training, if training is differentially private.
    pub epsilon: Option<f64>,
    /// Versions merged (this node's included).
    pub merged: usize,
    /// How far this node's own version was from the merge (relative L2; the protocol's
    /// `spread`).
    pub spread: Option<f64>,
    /// Whether the round closed on its timeout.
    pub timed_out: bool,
    /// Messages refused so far, all reasons.
    pub rejections: u64,
    /// Seconds since the node started.
    pub at_seconds: f64,
}

/// Rounds the dashboard's history keeps (the newest).
pub const HISTORY: usize = 1000;

/// A snapshot of a node, as `GET /status` returns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This member.
    pub member: MemberId,
    /// Its libp2p peer id (what bootstrap addresses end with).
    pub peer_id: String,
    /// Its site in the dataset.
    pub site: String,
    /// Its group in the roster (the one it averages with first under two-level averaging);
    /// empty for none.
    #[serde(default)]
    pub group: String,
    /// The mesh's name.
    pub mesh: String,
    /// Version of the roster the node follows.
    pub roster_version: u64,
    /// The round in progress.
    pub round: u64,
    /// Where the node is in that round.
    pub phase: Phase,
    /// Whether every round is done.
    pub finished: bool,
    /// Connected peers.
    pub peers: Peers,
    /// Direct and relayed connections, relay reservations, NAT status, hole punches.
    #[serde(default)]
    pub reachability: crate::nat::Reachability,
    /// The last round that closed, if any since the node started.
    pub last_round: Option<RoundSummary>,
    /// Content id of this node's newest announced version, if any since the node started.
    pub own_version: Option<ContentId>,
    /// The last local training, if any since the node started.
    pub training: Option<Training>,
    /// The final model on the local test split, once finished.
    pub test: Option<Test>,
    /// This hospital's personalized model on the local test split, once derived.
    #[serde(default)]
    pub personalized: Option<Personalized>,
    /// Refused messages by reason (`Reason::label`).
    pub rejections: BTreeMap<String, u64>,
    /// Rounds that closed on their timeout.
    pub rounds_timed_out: u64,
    /// Model versions the experiment's certification policy certifies, as this node judges.
    #[serde(default)]
    pub certified: Vec<ContentId>,
    /// Members this node's operator blocked (`medmesh block`), by name.
    #[serde(default)]
    pub blocked: Vec<String>,
    /// The roster's members, with this node's connection to each.
    #[serde(default)]
    pub members: Vec<MemberView>,
    /// The closed rounds, oldest first (the newest [`HISTORY`]).
    #[serde(default)]
    pub history: Vec<RoundPoint>,
    /// Certification verdicts on the versions this node holds reports on, each with why it is
    /// not certified if it is not.
    #[serde(default)]
    pub verdicts: Vec<medmesh_protocol::validation::Certification>,
    /// Seconds since the node started (filled in when served).
    pub uptime_seconds: f64,
}

impl Status {
    /// A few readable lines, for `medmesh status`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let phase = match self.phase {
            Phase::Admission => "waiting to be admitted to the roster",
            Phase::Starting => "waiting for members",
            Phase::Training => "training",
            Phase::Gathering => "merging",
            Phase::Finished => "finished",
        };
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(", group {}", self.group)
        };
        let _ = writeln!(
            out,
            "member {} ({}{group}) in mesh {:?}, roster version {}",
            self.member.short(),
            self.site,
            self.mesh,
            self.roster_version
        );
        let progress = match (self.phase, &self.last_round) {
            (Phase::Finished, Some(last)) => format!("finished after round {}", last.round),
            _ => format!("round {}: {phase}", self.round),
        };
        let _ = writeln!(out, "{progress}; up {}", duration(self.uptime_seconds));
        let _ = writeln!(
            out,
            "peers: {} connected, {} subscribed; {} payload pull(s) in flight",
            self.peers.connected, self.peers.subscribed, self.peers.pulls
        );
        let r = &self.reachability;
        let _ = writeln!(
            out,
            "network: {} direct, {} relayed; NAT {}; {} relay reservation(s); hole punches {}/{} succeeded",
            r.direct,
            r.relayed,
            r.nat,
            r.reservations.len(),
            r.hole_punch_successes,
            r.hole_punch_attempts
        );
        if !self.blocked.is_empty() {
            let _ = writeln!(out, "blocked by the operator: {}", self.blocked.join(", "));
        }
        if let Some(last) = &self.last_round {
            let authors: Vec<String> = last.contributors.iter().map(MemberId::short).collect();
            let _ = writeln!(
                out,
                "last round {}: merged {} version(s) [{}]{}",
                last.round,
                authors.len(),
                authors.join(" "),
                if last.timed_out {
                    ", closed on its timeout"
                } else {
                    ""
                }
            );
        }
        if let Some(id) = &self.own_version {
            let _ = writeln!(out, "own newest version: {id}");
        }
        if let Some(t) = &self.training {
            let metrics: Vec<String> = t
                .metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect();
            let _ = writeln!(
                out,
                "training of round {}: {} in {:.2} s",
                t.round,
                if metrics.is_empty() {
                    "no metrics".to_owned()
                } else {
                    metrics.join(", ")
                },
                t.seconds
            );
        }
        if let Some(test) = &self.test {
            let _ = writeln!(
                out,
                "final model on the local test split: {} ({} rows)",
                test.figures()
                    .unwrap_or("no defined metric (a C-index needs a comparable pair)".to_owned()),
                test.samples
            );
        }
        if let Some(p) = &self.personalized {
            let _ = writeln!(
                out,
                "personalized model (the shared one fine-tuned {} steps here): {}",
                p.steps,
                p.test.figures().unwrap_or("no defined metric".to_owned())
            );
        }
        for verdict in &self.verdicts {
            let _ = writeln!(
                out,
                "version {}: {}",
                verdict.model.short(),
                if verdict.certified {
                    "certified".to_owned()
                } else {
                    format!("not certified: {}", verdict.reasons.join("; "))
                }
            );
        }
        let rejected: Vec<String> = self
            .rejections
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "rejected: {}; rounds timed out: {}",
            if rejected.is_empty() {
                "none".to_owned()
            } else {
                rejected.join(", ")
            },
            self.rounds_timed_out
        );
        out
    }
}

fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, s) => format!("{h}h {m:02}m {s:02}s"),
    }
}
