//! What an operator sees of a node: the local admin endpoint (`GET /status` as JSON, `GET /metrics`
//! in the Prometheus/OpenMetrics text format, `POST /roster` to hand the node a signed roster
//! update to apply and spread, `POST /validate`, `POST /block` and `POST /unblock`) and its client
//! (`medmesh status`, `medmesh roster publish`, `medmesh validate`, `medmesh block`). The export
//! of a stored model version (`medmesh export`) is `medmesh_record::export`.
//!
//! The event loop owns the node's state. It keeps a [`Status`] and publishes it through a
//! [`Reporter`] and counts into [`Metrics`]; the server only reads those, and turns an operator's
//! request into a [`Command`] that the loop carries out between events.
//!
//! Every request needs the node's admin token (`Authorization: Bearer …`, see
//! [`crate::keys::AdminToken`]); a request without it is answered 401 and does nothing. A POST
//! must be `Content-Type: application/json` (415 otherwise), which a web page cannot send to
//! another origin without asking first, and the `Host` header must name the bound address (403
//! otherwise), against DNS rebinding. The endpoint binds loopback unless the config opts in
//! (`admin_remote`), and no request names a file: `/validate` takes the name of a dataset the
//! config declares. It must never expose keys, patient data or parameters — only counters, ids
//! and aggregate training metrics — and no answer quotes a file's content.
//!
//! # Inside
//!
//! Private submodules, re-exported here: `status` (the [`Status`] document), `metrics` (the
//! [`Metrics`] registry), `server` (the HTTP server, [`Reporter`], [`Command`], [`Server`]) and
//! `client` ([`get`], [`post`], [`fetch_status`] and the other calls). This file holds what server
//! and client agree on: the request bodies, the timeouts of an operator's request, and [`Error`].
//! They are layered: `status` and `metrics` use nothing else here; `server` uses those two and
//! this file; `client` uses `status` and this file. Server and client never use each other (only
//! the server's tests drive it through the client).

mod client;
mod dashboard;
mod metrics;
mod server;
mod status;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::client::{Endpoint, block, fetch_status, get, post, publish_roster, validate};
pub use self::metrics::{Metrics, gauge};
pub use self::server::{Command, Reporter, Server};
pub use self::status::{
    HISTORY, MemberView, Peers, Personalized, Phase, RoundPoint, RoundSummary, Status, Test,
    Training,
};

/// The client gives up on the whole exchange after this long (here rather than in `client`
/// because [`Error::Timeout`] names it).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
// The server waits these long for the event loop; the client's deadlines add them, so that the
// server's answer, even a 503, arrives before the client gives up.
/// How long a command waits for the event loop's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a validation may take (pulling the model from its author, evaluating it).
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(25);

/// What can go wrong serving or querying the endpoint.
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
}

/// What `POST /block` and `POST /unblock` take and answer (JSON): members by roster name, site
/// or member id; the answer lists every member blocked afterwards, by roster name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Members {
    /// Roster names, sites or member ids.
    pub members: Vec<String>,
}

/// What `POST /validate` takes (JSON): the version, and optionally which of the node's declared
/// validation datasets to validate on (its `[[validation]]` entries, by name; never a path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    /// `latest` or a content id.
    pub model: String,
    /// The name of a `[[validation]]` dataset of the node's config (default: its `[data]`).
    #[serde(default)]
    pub dataset: Option<String>,
}
