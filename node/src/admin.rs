//! What an operator sees of a node: the local admin endpoint (`GET /status` as JSON, `GET /metrics`
//! in the Prometheus/OpenMetrics text format, `POST /roster` to hand the node a signed roster
//! update to apply and spread), its client (`medmesh status`, `medmesh roster publish`), and the
//! export of a stored model version as safetensors plus its signed metadata (`medmesh export`).
//!
//! The event loop owns the node's state. It keeps a [`Status`] and publishes it through a
//! [`Reporter`] (a `tokio::sync::watch` channel: one value, replaced, never queued) and counts
//! into [`Metrics`] (atomics shared through an `Arc`). The HTTP server runs as its own task and
//! only reads those: it never holds a lock the loop waits on for more than a clone of a small
//! struct, and never calls into the swarm, the peer or the store. An operator's request
//! (`POST /roster`) becomes a [`Command`] on a bounded channel that the loop carries out between
//! events, answering on a oneshot channel. Connections are bounded in
//! number, header size and lifetime; the server stops when its [`Server`] handle is stopped or
//! dropped.
//!
//! The endpoint has no authentication: bind it to loopback or a management network only (the
//! `admin` setting of the config; off by default). A posted roster gains nobody anything: the
//! node applies it only if a threshold of the current members signed it. It must never expose keys, patient data or
//! parameters — only counters, ids and aggregate training metrics.
//!
//! Export reads the store and writes files; it needs the store to itself (redb allows one
//! process), so it runs while the node is stopped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use medmesh_protocol::identity::{self, ContentId, MemberId, Verified};
use medmesh_protocol::roster::SignedRoster;
use medmesh_protocol::update::{self, Encoding, Version};
use medmesh_protocol::wire;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::bundle;
use crate::config::NodeConfig;
use crate::data::{Dataset, Table};
use crate::learner::{self, ModelSpec, TrainConfig};
use crate::store::{self, Store};
use crate::worker::{Setup, Worker};

/// Most admin connections served at once; further clients wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 16;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection (even a keep-alive one) is closed after this long.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Largest request head the server buffers (hyper's minimum).
const MAX_REQUEST_BUFFER: usize = 8 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The client gives up on the whole exchange after this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body the client reads.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// Largest request body the server reads (a signed roster fits in a gossip message).
const MAX_REQUEST_BODY: usize = medmesh_protocol::wire::MAX_GOSSIP;
/// Operator commands queued for the event loop at most.
const COMMAND_QUEUE: usize = 8;
/// How long a command waits for the event loop's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a validation may take (pulling the model from its author, evaluating it).
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(25);
/// Content type of `/metrics` (what `prometheus-client` encodes).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What can go wrong serving, querying the endpoint, or exporting a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The admin address cannot be bound (in use, not a local address, no permission).
    #[error("cannot serve the admin endpoint on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Nothing accepts connections at the address.
    #[error(
        "no medmesh admin endpoint at {addr} ({error}); is the node running with `admin = \"{addr}\"` in its config?"
    )]
    Connect {
        /// The address asked.
        addr: SocketAddr,
        /// The OS error (in the message, not chained: it is the whole story).
        error: std::io::Error,
    },
    /// The endpoint did not answer in time.
    #[error("admin endpoint {addr} did not answer within {} s", CLIENT_TIMEOUT.as_secs())]
    Timeout {
        /// The address asked.
        addr: SocketAddr,
    },
    /// The HTTP exchange failed (connection reset, not HTTP, a body over the size limit).
    #[error("admin endpoint {addr}: {source}")]
    Http {
        /// The address asked.
        addr: SocketAddr,
        /// What failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The endpoint answered with an error status.
    #[error("admin endpoint {addr} answered {status} for {path}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        /// The address asked.
        addr: SocketAddr,
        /// The path asked.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The reason the endpoint gave (its body, as text).
        message: String,
    },
    /// The answer is not a status document of this version of medmesh.
    #[error("admin endpoint {addr} did not answer with a medmesh status: {source}")]
    Decode {
        /// The address asked.
        addr: SocketAddr,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// Export: the store file does not exist (export never creates one).
    #[error("store {0} does not exist")]
    NoStore(PathBuf),
    /// Export: the store cannot be read (the error names the file).
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Export: no version with this id in the store.
    #[error("store {store} holds no model version {id}")]
    NotFound {
        /// The store file.
        store: PathBuf,
        /// The id asked for.
        id: ContentId,
    },
    /// Export: `latest` found no version (by this author, when one is given).
    #[error("store {store} holds no model version{}", author.map(|a| format!(" by {a}")).unwrap_or_default())]
    NoVersions {
        /// The store file.
        store: PathBuf,
        /// The author looked for.
        author: Option<MemberId>,
    },
    /// Export: the version is stored but its payload is not (pruned by retention).
    #[error("store {store} holds model version {id} but not its parameters (pruned by retention?)")]
    NoPayload {
        /// The store file.
        store: PathBuf,
        /// The version.
        id: ContentId,
    },
    /// Export: the payload is not usable (an encoding this build does not know, non-finite
    /// values).
    #[error("store {store}: the parameters of model version {id} cannot be decoded: {reason}")]
    Payload {
        /// The store file.
        store: PathBuf,
        /// The version.
        id: ContentId,
        /// Why.
        reason: String,
    },
    /// Export: the model spec lays out another number of parameters than the version holds.
    #[error(
        "store {store}: model version {id} has {found} parameters, the model spec lays out {expected}"
    )]
    Layout {
        /// The store file.
        store: PathBuf,
        /// The version.
        id: ContentId,
        /// Parameters in the layout.
        expected: usize,
        /// Parameters in the version.
        found: usize,
    },
    /// Export: the model spec cannot be built to learn its layout.
    #[error("cannot build the model spec to lay out its tensors: {0}")]
    Model(#[from] learner::Error),
    /// Export: the dataset of a TorchScript model (needed for its input width) cannot be read.
    #[error("cannot read the dataset for the model's input width: {0}")]
    Data(String),
    /// Export: a file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Export: the bundle around the weights (lineage, reports, roster, manifest) cannot be
    /// written.
    #[error(transparent)]
    Bundle(#[from] bundle::Error),
}

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

/// The final model on this hospital's own test split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Test {
    /// Test rows.
    pub samples: usize,
    /// Accuracy at threshold 0.5.
    pub accuracy: f64,
    /// Area under the ROC curve, when both classes are present.
    pub auc: Option<f64>,
}

/// A snapshot of a node, as `GET /status` returns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This member.
    pub member: MemberId,
    /// Its libp2p peer id (what bootstrap addresses end with).
    pub peer_id: String,
    /// Its site in the dataset.
    pub site: String,
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
    /// The last round that closed, if any since the node started.
    pub last_round: Option<RoundSummary>,
    /// Content id of this node's newest announced version, if any since the node started.
    pub own_version: Option<ContentId>,
    /// The last local training, if any since the node started.
    pub training: Option<Training>,
    /// The final model on the local test split, once finished.
    pub test: Option<Test>,
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
        let _ = writeln!(
            out,
            "member {} ({}) in mesh {:?}, roster version {}",
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
            let auc = test
                .auc
                .map(|a| format!(", AUC {a:.3}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "final model on the local test split: accuracy {:.3}{auc} ({} rows)",
                test.accuracy, test.samples
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

/// Label of `medmesh_rejections_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rejection {
    reason: &'static str,
}

/// The node's Prometheus metrics (all prefixed `medmesh_`). Every handle is an atomic shared with
/// the registry: update them from the event loop, encode from anywhere.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rejections: Family<Rejection, Counter>,
    /// Rounds closed (`medmesh_rounds_completed_total`).
    pub rounds_completed: Counter,
    /// Rounds closed on their timeout (`medmesh_rounds_timed_out_total`).
    pub rounds_timed_out: Counter,
    /// The round in progress (`medmesh_round`).
    pub round: Gauge,
    /// Version of the roster followed (`medmesh_roster_version`).
    pub roster_version: Gauge,
    /// Peers with an open connection (`medmesh_peers_connected`).
    pub peers_connected: Gauge,
    /// Peers subscribed to the mesh topic (`medmesh_peers_subscribed`).
    pub peers_subscribed: Gauge,
    /// Payload pulls in flight (`medmesh_payload_pulls_in_flight`).
    pub payload_pulls_in_flight: Gauge,
    /// Gossip messages received, after gossipsub's deduplication (`medmesh_gossip_messages_in_total`).
    pub gossip_messages_in: Counter,
    /// Gossip messages published (`medmesh_gossip_messages_out_total`).
    pub gossip_messages_out: Counter,
    /// Bytes of the gossip messages received (`medmesh_gossip_bytes_in_total`).
    pub gossip_bytes_in: Counter,
    /// Bytes of the gossip messages published (`medmesh_gossip_bytes_out_total`).
    pub gossip_bytes_out: Counter,
    /// Payload bytes pulled from peers (`medmesh_payload_bytes_in_total`).
    pub payload_bytes_in: Counter,
    /// Payload bytes served to peers (`medmesh_payload_bytes_out_total`).
    pub payload_bytes_out: Counter,
    /// Payload requests answered with the payload (`medmesh_payload_requests_served_total`).
    pub payload_requests_served: Counter,
    /// Incoming connections refused: keys not on the roster, over the limits, failed
    /// handshakes (`medmesh_connections_refused_total`).
    pub connections_refused: Counter,
    /// Seconds per local training round (`medmesh_train_seconds`, a histogram).
    pub train_seconds: Histogram,
    /// Training loss of the last round (`medmesh_last_train_loss`).
    pub last_train_loss: Gauge<f64, AtomicU64>,
    /// Accuracy of the final model on the local test split (`medmesh_local_test_accuracy`).
    pub local_test_accuracy: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("medmesh");
        let r = &mut registry;
        // 10 ms to ~5.5 min.
        let train_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        r.register(
            "train_seconds",
            "Seconds per local training round",
            train_seconds.clone(),
        );
        Self {
            rejections: add(r, "rejections", "Refused messages and payloads by reason"),
            rounds_completed: add(r, "rounds_completed", "Rounds closed"),
            rounds_timed_out: add(r, "rounds_timed_out", "Rounds closed on their timeout"),
            round: add(r, "round", "The round in progress"),
            roster_version: add(r, "roster_version", "Version of the roster followed"),
            peers_connected: add(r, "peers_connected", "Peers with an open connection"),
            peers_subscribed: add(r, "peers_subscribed", "Peers subscribed to the mesh topic"),
            payload_pulls_in_flight: add(
                r,
                "payload_pulls_in_flight",
                "Payload pulls requested and not yet answered",
            ),
            gossip_messages_in: add(r, "gossip_messages_in", "Gossip messages received"),
            gossip_messages_out: add(r, "gossip_messages_out", "Gossip messages published"),
            gossip_bytes_in: add(r, "gossip_bytes_in", "Bytes of gossip messages received"),
            gossip_bytes_out: add(r, "gossip_bytes_out", "Bytes of gossip messages published"),
            payload_bytes_in: add(r, "payload_bytes_in", "Payload bytes pulled from peers"),
            payload_bytes_out: add(r, "payload_bytes_out", "Payload bytes served to peers"),
            payload_requests_served: add(
                r,
                "payload_requests_served",
                "Payload requests answered with the payload",
            ),
            connections_refused: add(
                r,
                "connections_refused",
                "Incoming connections refused (not on the roster, limits, failed handshakes)",
            ),
            train_seconds,
            last_train_loss: add(r, "last_train_loss", "Training loss of the last round"),
            local_test_accuracy: add(
                r,
                "local_test_accuracy",
                "Accuracy of the final model on the local test split",
            ),
            registry,
        }
    }

    /// Counts a refusal (`reason` is a `Reason::label`).
    pub fn reject(&self, reason: &'static str) {
        self.rejections.get_or_create(&Rejection { reason }).inc();
    }

    /// The text exposition (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Registers a fresh metric under `name` and returns its handle.
fn add<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

fn gauge(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// The event loop's side: publishes [`Status`] snapshots and holds the [`Metrics`].
#[derive(Debug)]
pub struct Reporter {
    status: watch::Sender<Status>,
    metrics: Arc<Metrics>,
    started: Instant,
    commands: mpsc::Sender<Command>,
}

/// An operator's request, carried out by the event loop, which answers on `reply`.
#[derive(Debug)]
pub enum Command {
    /// Validate a model version on the node's local test split and publish the signed
    /// report; the answer is a line describing the report, or why it failed.
    Validate {
        /// Which version.
        model: Selection,
        /// Validate on this dataset's site's test split instead of the node's own `[data]`.
        data: Option<crate::config::DataConfig>,
        /// Where the loop answers (once the model was pulled and evaluated).
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Apply a signed roster update and spread it; the answer is the roster version followed
    /// afterwards, or why the update was refused.
    Roster {
        /// The update as posted.
        update: SignedRoster,
        /// Where the loop answers.
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Block members (close their connections, refuse them, drop nothing else) or lift the
    /// block; the answer is every member blocked afterwards, by name, or why it was refused.
    Block {
        /// Members by roster name, site or member id.
        members: Vec<String>,
        /// Block (`true`) or unblock (`false`).
        block: bool,
        /// Where the loop answers.
        reply: oneshot::Sender<Result<Vec<String>, String>>,
    },
}

impl Reporter {
    /// A reporter for a node that started at `started`, and the receiving end of the operator
    /// commands its endpoint will queue.
    pub fn new(status: Status, started: Instant) -> (Self, mpsc::Receiver<Command>) {
        let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
        let reporter = Self {
            status: watch::Sender::new(status),
            metrics: Arc::new(Metrics::new()),
            started,
            commands,
        };
        (reporter, inbox)
    }

    /// The metrics to count into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Publishes `status` if it changed (a compare and, rarely, a clone under the channel's
    /// lock) and sets the gauges that mirror it.
    pub fn publish(&self, status: &Status) {
        let m = &self.metrics;
        m.round.set(gauge(status.round));
        m.roster_version.set(gauge(status.roster_version));
        m.peers_connected.set(gauge(status.peers.connected));
        m.peers_subscribed.set(gauge(status.peers.subscribed));
        m.payload_pulls_in_flight.set(gauge(status.peers.pulls));
        self.status.send_if_modified(|current| {
            if current == status {
                false
            } else {
                current.clone_from(status);
                true
            }
        });
    }

    /// Starts the admin endpoint on `addr` (port 0 picks a free one).
    pub async fn serve(&self, addr: SocketAddr) -> Result<Server, Error> {
        serve(
            addr,
            Shared {
                status: self.status.subscribe(),
                metrics: self.metrics.clone(),
                started: self.started,
                commands: self.commands.clone(),
            },
        )
        .await
    }
}

/// What the endpoint's handlers share: snapshots to read and the loop's command queue.
#[derive(Clone)]
struct Shared {
    status: watch::Receiver<Status>,
    metrics: Arc<Metrics>,
    started: Instant,
    commands: mpsc::Sender<Command>,
}

/// A running admin endpoint. Dropping it stops the server too (without waiting).
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes open connections and waits for the server task to end.
    pub async fn stop(self) {
        let Server { stop, task, .. } = self;
        let _ = stop.send(());
        let _ = task.await;
    }
}

/// Starts the admin endpoint on `addr`.
async fn serve(addr: SocketAddr, shared: Shared) -> Result<Server, Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let router = Router::new()
        .route("/status", routing::get(status_handler))
        .route("/metrics", routing::get(metrics_handler))
        .route("/roster", routing::post(roster_handler))
        .route("/validate", routing::post(validate_handler))
        .route("/block", routing::post(block_handler))
        .route("/unblock", routing::post(unblock_handler))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .with_state(shared);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(accept(listener, router, stopped));
    tracing::info!(address = %local, "admin endpoint listening");
    Ok(Server {
        addr: local,
        stop,
        task,
    })
}

async fn status_handler(State(shared): State<Shared>) -> axum::Json<Status> {
    let mut status = shared.status.borrow().clone();
    status.uptime_seconds = shared.started.elapsed().as_secs_f64();
    axum::Json(status)
}

async fn metrics_handler(State(shared): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        shared.metrics.encode(),
    )
        .into_response()
}

/// `POST /roster`: a signed roster update (the JSON of a roster file) for the loop to apply.
/// 200 with the version followed afterwards; 400 for a body that is not a signed roster; 409
/// when the update does not extend the chain (fork, rollback, gap, too few signatures); 503
/// when the loop does not answer in time.
async fn roster_handler(State(shared): State<Shared>, body: Bytes) -> Response {
    let update: SignedRoster = match serde_json::from_slice(&body) {
        Ok(update) => update,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("not a signed roster: {e}")).into_response();
        }
    };
    let (reply, answer) = oneshot::channel();
    let queued = shared
        .commands
        .send_timeout(Command::Roster { update, reply }, COMMAND_TIMEOUT)
        .await;
    if queued.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is busy or stopping",
        )
            .into_response();
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
        Ok(Ok(Ok(version))) => {
            axum::Json(serde_json::json!({ "roster_version": version })).into_response()
        }
        Ok(Ok(Err(reason))) => (StatusCode::CONFLICT, reason).into_response(),
        Ok(Err(_)) | Err(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "the node did not answer").into_response()
        }
    }
}

/// What `POST /block` and `POST /unblock` take and answer (JSON): members by roster name, site
/// or member id; the answer lists every member blocked afterwards, by roster name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Members {
    /// Roster names, sites or member ids.
    pub members: Vec<String>,
}

async fn block_handler(State(shared): State<Shared>, body: Bytes) -> Response {
    block_command(shared, body, true).await
}

async fn unblock_handler(State(shared): State<Shared>, body: Bytes) -> Response {
    block_command(shared, body, false).await
}

/// `POST /block` / `POST /unblock` with [`Members`]: 200 with the members blocked afterwards;
/// 400 for a body that names no members; 422 when one is not on the roster or is this node;
/// 503 when the loop does not answer in time.
async fn block_command(shared: Shared, body: Bytes, block: bool) -> Response {
    let request: Members = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a list of members: {e}"),
            )
                .into_response();
        }
    };
    if request.members.is_empty() {
        return (StatusCode::BAD_REQUEST, "name at least one member").into_response();
    }
    let (reply, answer) = oneshot::channel();
    let command = Command::Block {
        members: request.members,
        block,
        reply,
    };
    if shared
        .commands
        .send_timeout(command, COMMAND_TIMEOUT)
        .await
        .is_err()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is busy or stopping",
        )
            .into_response();
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
        Ok(Ok(Ok(members))) => axum::Json(Members { members }).into_response(),
        Ok(Ok(Err(reason))) => (StatusCode::UNPROCESSABLE_ENTITY, reason).into_response(),
        Ok(Err(_)) | Err(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "the node did not answer").into_response()
        }
    }
}

/// Asks the node at `addr` to block `members` (or lift their block, with `block` false); the
/// members it blocks afterwards.
pub async fn block(
    addr: SocketAddr,
    members: &[String],
    block: bool,
) -> Result<Vec<String>, Error> {
    let request = Members {
        members: members.to_vec(),
    };
    let body = serde_json::to_vec(&request).map_err(|source| Error::Decode { addr, source })?;
    let path = if block { "/block" } else { "/unblock" };
    let answer = post(addr, path, Bytes::from(body)).await?;
    let answer: Members =
        serde_json::from_slice(&answer).map_err(|source| Error::Decode { addr, source })?;
    Ok(answer.members)
}

/// What `POST /validate` takes (JSON): the version, and optionally other local data to
/// validate on (a schema file the node can read and a site in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    /// `latest` or a content id.
    pub model: String,
    /// A dataset schema file (default: the node's `[data]`).
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// The site of that schema whose test split to use.
    #[serde(default)]
    pub site: Option<String>,
}

/// `POST /validate` with a [`ValidateRequest`]: 200 with the report's description once the node
/// pulled, evaluated and published it; 400 for a bad request; 422 when it cannot; 503 when busy.
async fn validate_handler(State(shared): State<Shared>, body: Bytes) -> Response {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m).into_response();
    let request: ValidateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("not a validation request: {e}")),
    };
    let model: Selection = match request.model.trim().parse() {
        Ok(model) => model,
        Err(e) => return bad(format!("not `latest` or a content id: {e}")),
    };
    let data = match (request.schema, request.site) {
        (Some(schema), Some(site)) => Some(crate::config::DataConfig {
            schema,
            site,
            shard: None,
        }),
        (None, None) => None,
        _ => return bad("give both a schema and a site, or neither".into()),
    };
    let (reply, answer) = oneshot::channel();
    let queued = shared
        .commands
        .send_timeout(Command::Validate { model, data, reply }, COMMAND_TIMEOUT)
        .await;
    if queued.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is busy or stopping",
        )
            .into_response();
    }
    match tokio::time::timeout(VALIDATE_TIMEOUT, answer).await {
        Ok(Ok(Ok(line))) => line.into_response(),
        Ok(Ok(Err(reason))) => (StatusCode::UNPROCESSABLE_ENTITY, reason).into_response(),
        Ok(Err(_)) | Err(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "the node did not answer").into_response()
        }
    }
}

/// Asks the node at `addr` to validate a model and publish the report; its description.
pub async fn validate(addr: SocketAddr, request: &ValidateRequest) -> Result<String, Error> {
    let body = serde_json::to_vec(request).map_err(|source| Error::Decode { addr, source })?;
    let body = tokio::time::timeout(
        CLIENT_TIMEOUT + VALIDATE_TIMEOUT,
        exchange(addr, "/validate", Some(Bytes::from(body))),
    )
    .await
    .map_err(|_| Error::Timeout { addr })??;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Accepts connections until `stop` fires (or its sender is dropped), at most
/// [`MAX_CONNECTIONS`] at a time, then aborts the open ones.
async fn accept(listener: TcpListener, router: Router, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            tokio::select! {
                _ = connections.join_next() => continue,
                _ = &mut stop => break,
            }
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, router.clone()));
                }
                Err(error) => {
                    tracing::debug!(%error, "admin endpoint: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = &mut stop => break,
        }
    }
    connections.shutdown().await;
    tracing::debug!("admin endpoint stopped");
}

async fn connection(stream: TcpStream, router: Router) {
    let _ = stream.set_nodelay(true);
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BUFFER)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    match tokio::time::timeout(CONNECTION_LIFETIME, served).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "admin connection failed"),
        Err(_) => tracing::debug!("admin connection closed at its time limit"),
    }
}

/// `GET path` from the admin endpoint at `addr`: the body of a 2xx answer.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Bytes, Error> {
    tokio::time::timeout(CLIENT_TIMEOUT, exchange(addr, path, None))
        .await
        .map_err(|_| Error::Timeout { addr })?
}

/// `POST path` with a JSON `body` to the admin endpoint at `addr`: the body of a 2xx answer.
pub async fn post(addr: SocketAddr, path: &str, body: Bytes) -> Result<Bytes, Error> {
    tokio::time::timeout(
        CLIENT_TIMEOUT + COMMAND_TIMEOUT,
        exchange(addr, path, Some(body)),
    )
    .await
    .map_err(|_| Error::Timeout { addr })?
}

/// Hands a signed roster update to the node at `addr`; the roster version it follows afterwards.
pub async fn publish_roster(addr: SocketAddr, update: &SignedRoster) -> Result<u64, Error> {
    let body = serde_json::to_vec(update).map_err(|source| Error::Decode { addr, source })?;
    let answer = post(addr, "/roster", Bytes::from(body)).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&answer).map_err(|source| Error::Decode { addr, source })?;
    value["roster_version"]
        .as_u64()
        .ok_or_else(|| Error::Status {
            addr,
            path: "/roster".into(),
            status: 200,
            message: "the answer names no roster version".into(),
        })
}

async fn exchange(addr: SocketAddr, path: &str, body: Option<Bytes>) -> Result<Bytes, Error> {
    let http = |source: Box<dyn std::error::Error + Send + Sync>| Error::Http { addr, source };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| Error::Connect { addr, error })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(e.into()))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let builder = match body {
            Some(_) => hyper::Request::post(path).header(header::CONTENT_TYPE, "application/json"),
            None => hyper::Request::get(path),
        };
        let request = builder
            .header(header::HOST, addr.to_string())
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| http(e.into()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http(e.into()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(http)?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(Error::Status {
                addr,
                path: path.to_owned(),
                status: status.as_u16(),
                message: String::from_utf8_lossy(&body).chars().take(500).collect(),
            });
        }
        Ok(body)
    }
    .await;
    driver.abort();
    result
}

/// The [`Status`] of the node whose admin endpoint is at `addr`, and the raw JSON it sent.
pub async fn fetch_status(addr: SocketAddr) -> Result<(Status, Bytes), Error> {
    let body = get(addr, "/status").await?;
    let status = serde_json::from_slice(&body).map_err(|source| Error::Decode { addr, source })?;
    Ok((status, body))
}

/// Which stored version to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The newest version by the given author (by anyone when no author is known).
    Latest,
    /// The version with this content id.
    Id(ContentId),
}

impl FromStr for Selection {
    type Err = identity::Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim() == "latest" {
            Ok(Selection::Latest)
        } else {
            text.parse().map(Selection::Id)
        }
    }
}

impl Selection {
    /// The stored version this selects: for `Latest`, the highest round by `author` (by anyone
    /// when `None`), ties broken by content id; `None` when nothing matches.
    pub fn find(
        &self,
        store: &Store,
        author: Option<MemberId>,
    ) -> Result<Option<Verified<Version>>, store::Error> {
        match self {
            Selection::Id(id) => store.version(id),
            Selection::Latest => Ok(store
                .versions()?
                .into_iter()
                .filter(|v| author.is_none_or(|a| v.author == a))
                .max_by_key(|v| (v.round, v.id()))),
        }
    }
}

/// Names and shapes of a model's tensors, in the order its parameters flatten.
pub type Layout = Vec<(String, Vec<i64>)>;

/// The layout of the model in `config`, from a training worker ([`crate::worker`]): built-in
/// models are built on one dummy row of their input width; a TorchScript module's input width
/// comes from the config's dataset.
pub fn model_layout(config: &NodeConfig) -> Result<Layout, Error> {
    let inputs = match &config.model {
        ModelSpec::Logistic { inputs }
        | ModelSpec::Cox { inputs }
        | ModelSpec::Mlp { inputs, .. } => {
            Some(usize::try_from(*inputs).map_err(|e| Error::Data(e.to_string()))?)
        }
        ModelSpec::TorchScript { .. } => None,
    };
    let table = match inputs {
        Some(cols) => Table {
            x: vec![0.0; cols],
            rows: 1,
            cols,
            y: vec![0.0],
            time: vec![1.0],
            event: vec![1.0],
        },
        None => {
            let dataset =
                Dataset::load(&config.data.schema).map_err(|e| Error::Data(e.to_string()))?;
            let site = dataset.site(&config.data.site).ok_or_else(|| {
                Error::Data(format!(
                    "site {:?} is not in {}",
                    config.data.site,
                    config.data.schema.display()
                ))
            })?;
            site.train.clone()
        }
    };
    let mut worker = Worker::start()?;
    let built = worker.build(&Setup {
        spec: config.model.clone(),
        training: TrainConfig::default(),
        init_seed: 0,
        data: table,
    })?;
    Ok(built.layout)
}

/// A signed model version as `version.json` holds it: its content id and the version's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Content id of the signed version.
    pub id: ContentId,
    /// The version as signed.
    #[serde(flatten)]
    pub version: Version,
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The version's fields.
    pub version: VersionRecord,
    /// Tensors in `model.safetensors`.
    pub tensors: usize,
    /// The files written.
    pub files: Vec<PathBuf>,
    /// What the bundle around the weights holds.
    pub bundle: bundle::Written,
}

impl Exported {
    /// One line per file, for `medmesh export`.
    pub fn to_text(&self) -> String {
        let v = &self.version.version;
        let mut out = format!(
            "model version {} (round {}, author {}, {} parameters)\n",
            self.version.id,
            v.round,
            v.author.short(),
            v.payload.params
        );
        for file in &self.files {
            let _ = writeln!(out, "wrote {}", file.display());
        }
        let b = &self.bundle;
        let _ = writeln!(
            out,
            "lineage: {} versions ({} ancestors not stored), {} reports, roster version {}",
            b.versions,
            b.missing,
            b.reports,
            b.roster.map_or("none".to_owned(), |v| v.to_string())
        );
        if b.roster.is_none() {
            out.push_str(
                "warning: the store holds no roster, so `medmesh verify` cannot check who trained \
                 and validated: it will refuse this bundle\n",
            );
        }
        out
    }
}

/// Writes the selected version of the store at `store_path` into `out` (created if missing) as a
/// [`bundle`]: `model.safetensors` (tensors named and shaped by `layout`, or one flat `params`
/// tensor when there is none), `version.json` ([`VersionRecord`]) and `version.bin` (the signed
/// envelope as stored: `wire::encode` of a `Signed<Version>`), then `model.json` (with `spec`
/// when known), the signed lineage, reports and roster chain, and `MANIFEST.json`. `Latest`
/// picks the highest round by `author` (by anyone when `None`). Everything read is verified
/// again: signature, content id, payload digest, finite values.
pub fn export(
    store_path: &Path,
    selection: Selection,
    author: Option<MemberId>,
    spec: Option<&ModelSpec>,
    layout: Option<&[(String, Vec<i64>)]>,
    out: &Path,
) -> Result<Exported, Error> {
    if !store_path.is_file() {
        return Err(Error::NoStore(store_path.to_owned()));
    }
    let store = Store::open(store_path)?;
    let where_ = || store_path.to_owned();
    let version = selection
        .find(&store, author)?
        .ok_or_else(|| match selection {
            Selection::Id(id) => Error::NotFound {
                store: where_(),
                id,
            },
            Selection::Latest => Error::NoVersions {
                store: where_(),
                author,
            },
        })?;
    let id = version.id();
    let payload = store.payload(&id)?.ok_or_else(|| Error::NoPayload {
        store: where_(),
        id,
    })?;
    let bad = |reason: String| Error::Payload {
        store: where_(),
        id,
        reason,
    };
    match version.payload.encoding {
        Encoding::F32Le => {}
        other => return Err(bad(format!("unknown encoding {other:?}"))),
    }
    // Checks length, digest and that every value is finite.
    let mut params = Vec::new();
    update::decode_payload(&version.payload, &payload, &mut params)
        .map_err(|e| bad(e.to_string()))?;

    let flat = [("params".to_owned(), vec![params.len() as i64])];
    let layout = layout.unwrap_or(&flat);
    let mut shapes = Vec::with_capacity(layout.len());
    for (name, shape) in layout {
        let dims: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| bad(format!("tensor {name} has a negative dimension")))?;
        shapes.push((name.as_str(), dims));
    }
    let expected: usize = shapes
        .iter()
        .map(|(_, d)| d.iter().product::<usize>())
        .sum();
    if expected != params.len() {
        return Err(Error::Layout {
            store: where_(),
            id,
            expected,
            found: params.len(),
        });
    }
    let model_file = bundle::ModelFile::new(&version, spec, &shapes);

    std::fs::create_dir_all(out).map_err(|e| Error::Write {
        path: out.to_owned(),
        source: e.into(),
    })?;
    // The payload is little-endian f32, as safetensors stores F32: the tensors are slices of it.
    let mut views = Vec::with_capacity(shapes.len());
    let mut offset = 0;
    for (name, dims) in shapes {
        let len = dims.iter().product::<usize>() * 4;
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            dims,
            &payload[offset..offset + len],
        )
        .map_err(|e| bad(e.to_string()))?;
        views.push((name, view));
        offset += len;
    }
    let record = VersionRecord {
        id,
        version: version.value().clone(),
    };
    let info = bundle::tensor_metadata(id, &record.version);
    let tensors = views.len();
    let model = out.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(info), &model).map_err(|e| Error::Write {
        path: model.clone(),
        source: e.into(),
    })?;
    let json = out.join("version.json");
    let text = serde_json::to_string_pretty(&record).map_err(|e| Error::Write {
        path: json.clone(),
        source: e.into(),
    })?;
    write(&json, (text + "\n").as_bytes())?;
    let bin = out.join("version.bin");
    write(&bin, &wire::encode(version.signed()))?;
    let bundle = bundle::write(&store, &version, &model_file, out)?;
    let mut files = vec![model, json, bin];
    files.extend(bundle.files.iter().cloned());
    Ok(Exported {
        version: record,
        tensors,
        files,
        bundle,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| Error::Write {
        path: path.to_owned(),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use medmesh_protocol::identity::{Digest, Keypair, Signed, Verified};
    use medmesh_protocol::peer::Item;

    use super::*;

    fn fake_status() -> Status {
        Status {
            member: Keypair::from_seed([1; 32]).id(),
            peer_id: "12D3KooWtest".into(),
            site: "cleveland".into(),
            mesh: "national".into(),
            roster_version: 2,
            round: 7,
            phase: Phase::Gathering,
            finished: false,
            peers: Peers {
                connected: 3,
                subscribed: 2,
                pulls: 1,
            },
            last_round: Some(RoundSummary {
                round: 6,
                contributors: vec![
                    Keypair::from_seed([1; 32]).id(),
                    Keypair::from_seed([2; 32]).id(),
                ],
                timed_out: true,
            }),
            own_version: Some(ContentId([9; 32])),
            training: Some(Training {
                round: 7,
                seconds: 0.25,
                metrics: BTreeMap::from([("loss".to_owned(), 0.5)]),
            }),
            test: None,
            rejections: BTreeMap::from([("duplicate".to_owned(), 4)]),
            rounds_timed_out: 1,
            certified: Vec::new(),
            blocked: vec!["hungarian".into()],
            uptime_seconds: 0.0,
        }
    }

    #[tokio::test]
    async fn admin_serves_status_and_metrics_over_loopback() {
        let started = Instant::now() - Duration::from_secs(5);
        let (reporter, _commands) = Reporter::new(Status::default(), started);
        let mut status = fake_status();
        reporter.publish(&status);
        let m = reporter.metrics();
        m.rounds_completed.inc_by(6);
        m.rounds_timed_out.inc();
        m.gossip_messages_in.inc_by(12);
        m.gossip_bytes_in.inc_by(3000);
        m.gossip_messages_out.inc_by(7);
        m.gossip_bytes_out.inc_by(1500);
        m.payload_bytes_in.inc_by(52);
        m.payload_bytes_out.inc_by(104);
        m.payload_requests_served.inc_by(2);
        m.train_seconds.observe(0.25);
        m.last_train_loss.set(0.5);
        m.reject("duplicate");
        m.reject("duplicate");
        m.reject("bad_signature");

        let server = reporter
            .serve("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("serves");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let (got, raw) = fetch_status(addr).await.expect("status");
        assert!(got.uptime_seconds >= 5.0, "{}", got.uptime_seconds);
        status.uptime_seconds = got.uptime_seconds;
        assert_eq!(got, status);
        let json: serde_json::Value = serde_json::from_slice(&raw).expect("json");
        assert_eq!(json["member"], status.member.to_string());
        assert_eq!(json["site"], "cleveland");
        assert_eq!(json["mesh"], "national");
        assert_eq!(json["roster_version"], 2);
        assert_eq!(json["round"], 7);
        assert_eq!(json["phase"], "gathering");
        assert_eq!(json["finished"], false);
        assert_eq!(json["peers"]["connected"], 3);
        assert_eq!(json["peers"]["subscribed"], 2);
        assert_eq!(json["last_round"]["timed_out"], true);
        assert_eq!(
            json["last_round"]["contributors"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(json["own_version"], ContentId([9; 32]).to_string());
        assert_eq!(json["training"]["metrics"]["loss"], 0.5);
        assert!(json["test"].is_null());
        let text = got.to_text();
        assert!(text.contains("round 7: merging"), "{text}");
        assert!(
            text.contains("3 connected, 2 subscribed; 1 payload pull(s) in flight"),
            "{text}"
        );
        assert!(
            text.contains("blocked by the operator: hungarian"),
            "{text}"
        );
        assert!(text.contains("closed on its timeout"), "{text}");

        // A later snapshot is what the next request sees.
        status.phase = Phase::Finished;
        status.finished = true;
        status.test = Some(Test {
            samples: 60,
            accuracy: 0.75,
            auc: Some(0.8),
        });
        reporter.publish(&status);
        m.local_test_accuracy.set(0.75);
        let (got, _) = fetch_status(addr).await.expect("status");
        assert_eq!(got.phase, Phase::Finished);
        let text = got.to_text();
        assert!(text.contains("finished after round 6"), "{text}");
        assert!(
            text.contains("accuracy 0.750, AUC 0.800 (60 rows)"),
            "{text}"
        );
        assert_eq!(got.test.map(|t| t.accuracy), Some(0.75));

        let metrics = String::from_utf8(get(addr, "/metrics").await.expect("metrics").to_vec())
            .expect("utf-8");
        for line in [
            "medmesh_rounds_completed_total 6",
            "medmesh_rounds_timed_out_total 1",
            "medmesh_round 7",
            "medmesh_roster_version 2",
            "medmesh_peers_connected 3",
            "medmesh_peers_subscribed 2",
            "medmesh_payload_pulls_in_flight 1",
            "medmesh_gossip_messages_in_total 12",
            "medmesh_gossip_messages_out_total 7",
            "medmesh_gossip_bytes_in_total 3000",
            "medmesh_gossip_bytes_out_total 1500",
            "medmesh_payload_bytes_in_total 52",
            "medmesh_payload_bytes_out_total 104",
            "medmesh_payload_requests_served_total 2",
            "medmesh_rejections_total{reason=\"duplicate\"} 2",
            "medmesh_rejections_total{reason=\"bad_signature\"} 1",
            "medmesh_train_seconds_count 1",
            "medmesh_train_seconds_sum 0.25",
            "medmesh_last_train_loss 0.5",
            "medmesh_local_test_accuracy 0.75",
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "missing {line:?} in\n{metrics}"
            );
        }
        assert!(metrics.trim_end().ends_with("# EOF"));

        assert!(matches!(
            get(addr, "/nope").await,
            Err(Error::Status { status: 404, .. })
        ));

        // Stopped: nothing listens any more, and the client says so.
        server.stop().await;
        let err = fetch_status(addr).await.expect_err("stopped");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[tokio::test]
    async fn posted_rosters_reach_the_loop_and_its_answer_comes_back() {
        use medmesh_protocol::identity::Keypair;
        use medmesh_protocol::roster::{Member, Role, Roster};

        let (reporter, mut commands) = Reporter::new(fake_status(), Instant::now());
        let server = reporter
            .serve("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("serves");
        let addr = server.local_addr();
        // A stand-in for the event loop: accepts version 0 (and then follows 1), refuses the rest.
        let loop_task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(Command::Roster { update, reply }) = commands.recv().await {
                let version = update.roster().version;
                seen.push(version);
                let answer = if version == 0 {
                    Ok(1)
                } else {
                    Err(format!("version {version} does not extend the chain"))
                };
                let _ = reply.send(answer);
            }
            seen
        });
        let key = Keypair::from_seed([3; 32]);
        let member = Member {
            id: key.id(),
            name: "a".into(),
            site: "a".into(),
            country: "NL".into(),
            role: Role::Hospital,
            addresses: Vec::new(),
        };
        let genesis = SignedRoster::new(Roster::genesis("m", 1, vec![member]).expect("roster"));
        assert_eq!(publish_roster(addr, &genesis).await.expect("applied"), 1);

        let mut next = genesis.roster().clone();
        next.version = 7;
        let err = publish_roster(addr, &SignedRoster::new(next))
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, Error::Status { status: 409, message, .. } if message.contains("version 7")),
            "{err}"
        );
        // Not a roster at all: refused by the endpoint, never queued.
        let err = post(addr, "/roster", Bytes::from_static(b"{\"members\": 3}"))
            .await
            .expect_err("bad body");
        assert!(
            matches!(&err, Error::Status { status: 400, message, .. } if message.contains("not a signed roster")),
            "{err}"
        );
        // Too big: refused before it is parsed.
        let big = Bytes::from(vec![b' '; MAX_REQUEST_BODY + 1]);
        assert!(matches!(
            post(addr, "/roster", big).await,
            Err(Error::Status { status: 413, .. })
        ));
        server.stop().await;
        drop(reporter);
        assert_eq!(loop_task.await.expect("loop"), vec![0, 7]);
    }

    #[tokio::test]
    async fn block_requests_reach_the_loop_and_bad_ones_do_not() {
        let (reporter, mut commands) = Reporter::new(fake_status(), Instant::now());
        let server = reporter
            .serve("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("serves");
        let addr = server.local_addr();
        // A stand-in for the event loop: knows members "a" and "b".
        let loop_task = tokio::spawn(async move {
            let mut blocked: Vec<String> = Vec::new();
            let mut seen = Vec::new();
            while let Some(Command::Block {
                members,
                block,
                reply,
            }) = commands.recv().await
            {
                seen.push((members.clone(), block));
                let answer = match members.iter().find(|m| !["a", "b"].contains(&m.as_str())) {
                    Some(unknown) => Err(format!("{unknown:?} is not a member")),
                    None => {
                        blocked.retain(|b| !members.contains(b));
                        if block {
                            blocked.extend(members);
                        }
                        blocked.sort();
                        Ok(blocked.clone())
                    }
                };
                let _ = reply.send(answer);
            }
            seen
        });
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            block(addr, &names(&["b", "a"]), true)
                .await
                .expect("blocked"),
            names(&["a", "b"])
        );
        assert_eq!(
            block(addr, &names(&["a"]), false).await.expect("unblocked"),
            names(&["b"])
        );
        let err = block(addr, &names(&["zz"]), true)
            .await
            .expect_err("unknown");
        assert!(
            matches!(&err, Error::Status { status: 422, message, .. } if message.contains("zz")),
            "{err}"
        );
        // Malformed or empty requests never reach the loop.
        for body in [
            &b"{\"members\": []}"[..],
            b"[\"a\"]",
            b"{\"member\": [\"a\"]}",
        ] {
            let err = post(addr, "/block", Bytes::copy_from_slice(body))
                .await
                .expect_err("bad body");
            assert!(matches!(&err, Error::Status { status: 400, .. }), "{err}");
        }
        server.stop().await;
        drop(reporter);
        assert_eq!(
            loop_task.await.expect("loop"),
            vec![
                (names(&["b", "a"]), true),
                (names(&["a"]), false),
                (names(&["zz"]), true)
            ]
        );
    }

    #[tokio::test]
    async fn admin_bind_errors_name_the_address() {
        let (reporter, _commands) = Reporter::new(fake_status(), Instant::now());
        let server = reporter
            .serve("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("serves");
        let addr = server.local_addr();
        let err = reporter.serve(addr).await.expect_err("in use");
        assert!(
            matches!(err, Error::Bind { .. }) && err.to_string().contains(&addr.to_string()),
            "{err}"
        );
        // Dropping the handle stops the server too.
        drop(server);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still listening after drop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn key(n: u8) -> Keypair {
        Keypair::from_seed([n; 32])
    }

    fn version(author: &Keypair, round: u64, params: &[f32]) -> (Verified<Version>, Bytes) {
        let mut bytes = Vec::new();
        let payload = update::encode_f32(params, &mut bytes);
        let version = author.sign(Version {
            experiment: "heart".into(),
            model: Digest([3; 32]),
            round,
            author: author.id(),
            samples: 100,
            degree: 3,
            parents: vec![ContentId([7; 32])],
            metrics: BTreeMap::from([("loss".to_string(), 0.5)]),
            payload,
        });
        (version, Bytes::from(bytes))
    }

    fn put(store: &Store, v: &Verified<Version>, bytes: &Bytes) {
        store
            .put_all(&[
                Item::Version(v.signed().clone()),
                Item::Payload {
                    id: v.id(),
                    bytes: bytes.clone(),
                },
            ])
            .expect("stores");
    }

    #[test]
    fn export_writes_safetensors_and_the_signed_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let params: Vec<f32> = (0..14).map(|i| i as f32 * 0.5 - 3.0).collect();
        let (mine, mine_bytes) = version(&key(1), 3, &params);
        let (old, old_bytes) = version(&key(1), 2, &[1.0; 14]);
        let (theirs, theirs_bytes) = version(&key(2), 9, &[2.0; 14]);
        {
            let store = Store::open(&path).expect("opens");
            put(&store, &mine, &mine_bytes);
            put(&store, &old, &old_bytes);
            put(&store, &theirs, &theirs_bytes);
        }

        // `latest` for member 1, laid out as a logistic regression over 13 inputs.
        let layout: Layout = vec![
            ("layer0.bias".into(), vec![1]),
            ("layer0.weight".into(), vec![1, 13]),
        ];
        let out = dir.path().join("export");
        let exported = export(
            &path,
            Selection::Latest,
            Some(key(1).id()),
            None,
            Some(&layout),
            &out,
        )
        .expect("exports");
        assert_eq!(exported.version.id, mine.id());
        assert_eq!(exported.tensors, 2);
        assert!(exported.to_text().contains(&mine.id().to_string()));

        let file = std::fs::read(out.join("model.safetensors")).expect("written");
        let tensors = safetensors::SafeTensors::deserialize(&file).expect("safetensors");
        let values = |name: &str| -> (Vec<usize>, Vec<f32>) {
            let t = tensors.tensor(name).expect("tensor");
            assert_eq!(t.dtype(), safetensors::Dtype::F32);
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (t.shape().to_vec(), v)
        };
        assert_eq!(values("layer0.bias"), (vec![1], params[..1].to_vec()));
        assert_eq!(values("layer0.weight"), (vec![1, 13], params[1..].to_vec()));
        let (_, header) = safetensors::SafeTensors::read_metadata(&file).expect("header");
        let info = header.metadata().clone().expect("metadata");
        assert_eq!(info["medmesh.version"], mine.id().to_string());

        let record: VersionRecord = serde_json::from_str(
            &std::fs::read_to_string(out.join("version.json")).expect("written"),
        )
        .expect("json");
        assert_eq!(record.id, mine.id());
        assert_eq!(&record.version, mine.value());
        assert_eq!(
            record.version.payload.digest,
            update::payload_digest(&mine_bytes)
        );
        let envelope: Signed<Version> =
            wire::decode(&std::fs::read(out.join("version.bin")).expect("written"))
                .expect("decodes");
        let verified = envelope.verify().expect("still verifies");
        assert_eq!(verified.id(), mine.id());

        // By id, without a layout: one flat tensor. `latest` with no author: the highest round.
        let flat = dir.path().join("flat");
        export(&path, Selection::Id(old.id()), None, None, None, &flat).expect("exports");
        let file = std::fs::read(flat.join("model.safetensors")).expect("written");
        let tensors = safetensors::SafeTensors::deserialize(&file).expect("safetensors");
        let t = tensors.tensor("params").expect("params");
        assert_eq!(t.shape(), &[14]);
        assert!(t.data().chunks_exact(4).all(|c| c == 1.0f32.to_le_bytes()));
        let any = export(
            &path,
            Selection::Latest,
            None,
            None,
            None,
            &dir.path().join("any"),
        )
        .expect("exports");
        assert_eq!(any.version.id, theirs.id());
    }

    #[test]
    fn export_errors_name_the_store_and_the_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let out = dir.path().join("out");
        let err = export(&path, Selection::Latest, None, None, None, &out).expect_err("no store");
        assert!(matches!(err, Error::NoStore(_)));
        assert!(!path.exists(), "export never creates a store");

        let (v, bytes) = version(&key(1), 1, &[0.5; 4]);
        {
            let store = Store::open(&path).expect("opens");
            put(&store, &v, &bytes);
        }
        let missing = ContentId([5; 32]);
        let err =
            export(&path, Selection::Id(missing), None, None, None, &out).expect_err("missing");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains(&missing.to_string()),
            "{text}"
        );
        let err = export(
            &path,
            Selection::Latest,
            Some(key(2).id()),
            None,
            None,
            &out,
        )
        .expect_err("nothing by member 2");
        assert!(matches!(err, Error::NoVersions { .. }), "{err}");
        let layout: Layout = vec![("w".into(), vec![3])];
        let err = export(
            &path,
            Selection::Id(v.id()),
            None,
            None,
            Some(&layout),
            &out,
        )
        .expect_err("wrong layout");
        assert!(
            matches!(
                err,
                Error::Layout {
                    expected: 3,
                    found: 4,
                    ..
                }
            ) && err.to_string().contains(&v.id().to_string()),
            "{err}"
        );
        assert!(!out.exists(), "nothing written on error");

        assert_eq!(
            "latest".parse::<Selection>().expect("parses"),
            Selection::Latest
        );
        assert_eq!(
            v.id().to_string().parse::<Selection>().expect("parses"),
            Selection::Id(v.id())
        );
        assert!("nope".parse::<Selection>().is_err());
    }
}
