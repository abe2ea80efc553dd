//! The node's Prometheus metrics, served as `GET /metrics` in the OpenMetrics text format. Every
//! handle is an atomic shared through an `Arc`: the event loop counts into them and the server
//! encodes them, neither waiting on the other.
//!
//! It must never expose keys, patient data or parameters — only counters, gauges and aggregate
//! training metrics. Labels are fixed strings (`&'static str` reasons), never peer ids or
//! addresses, so the number of series stays bounded whatever peers send.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

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
    /// Bytes of payloads arriving whose transfer is not complete (`medmesh_payload_bytes_receiving`).
    pub payload_bytes_receiving: Gauge,
    /// Open direct connections (`medmesh_connections_direct`).
    pub connections_direct: Gauge,
    /// Open connections through a relay (`medmesh_connections_relayed`).
    pub connections_relayed: Gauge,
    /// Relays holding a reservation for this node (`medmesh_relay_reservations`).
    pub relay_reservations: Gauge,
    /// Hole punches tried (`medmesh_hole_punch_attempts`, a gauge mirroring the node's count).
    pub hole_punch_attempts: Gauge,
    /// Hole punches that gave a direct connection (`medmesh_hole_punch_successes`).
    pub hole_punch_successes: Gauge,
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
    /// Accuracy of the final model on the local test split (`medmesh_local_test_accuracy`);
    /// a binary task's only.
    pub local_test_accuracy: Gauge<f64, AtomicU64>,
    /// Harrell's C-index of the final model on the local test split
    /// (`medmesh_local_test_c_index`); a survival task's only, when the split has a comparable
    /// pair.
    pub local_test_c_index: Gauge<f64, AtomicU64>,
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
            payload_bytes_receiving: add(
                r,
                "payload_bytes_receiving",
                "Bytes of payloads arriving whose transfer is not complete",
            ),
            connections_direct: add(r, "connections_direct", "Open direct connections"),
            connections_relayed: add(r, "connections_relayed", "Open connections through a relay"),
            relay_reservations: add(
                r,
                "relay_reservations",
                "Relays holding a reservation for this node",
            ),
            hole_punch_attempts: add(r, "hole_punch_attempts", "Hole punches tried"),
            hole_punch_successes: add(
                r,
                "hole_punch_successes",
                "Hole punches that gave a direct connection",
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
                "Accuracy of the final model on the local test split (binary task)",
            ),
            local_test_c_index: add(
                r,
                "local_test_c_index",
                "Harrell's C-index of the final model on the local test split (survival task)",
            ),
            registry,
        }
    }

    /// Sets the gauges of the final model's test: the task's own figures, the others untouched.
    pub fn record_test(&self, test: &crate::admin::Test) {
        if let Some(accuracy) = test.accuracy {
            self.local_test_accuracy.set(accuracy);
        }
        if let Some(c_index) = test.c_index {
            self.local_test_c_index.set(c_index);
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

/// A count as a gauge's value. Gauges are `i64`; a count past that saturates rather than showing
/// a negative or wrapped value.
pub fn gauge(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}
