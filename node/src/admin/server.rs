//! The admin endpoint's HTTP server: `GET /status` (a [`Status`] as JSON), `GET /metrics` (the
//! [`Metrics`] as OpenMetrics text), and the operator's requests `POST /roster`, `/validate`,
//! `/block` and `/unblock`, which it hands to the event loop.
//!
//! The event loop owns the node's state. It keeps a [`Status`] and publishes it through a
//! [`Reporter`] (a `tokio::sync::watch` channel: one value, replaced, never queued) and counts
//! into [`Metrics`] (atomics shared through an `Arc`). The server runs as its own task and only
//! reads those: it never holds a lock the loop waits on for more than a clone of a small struct,
//! and never calls into the swarm, the peer or the store. An operator's request becomes a
//! [`Command`] on a bounded channel that the loop carries out between events, answering on a
//! oneshot channel. Connections are bounded in number, header size and lifetime; the server
//! stops when its [`Server`] handle is stopped or dropped.
//!
//! Every request passes [`guard`] first: the `Host` header must name the bound address (403),
//! the node's admin token must come as `Authorization: Bearer …` (401), and a POST must be
//! `Content-Type: application/json` (415). Only then does a handler run. A posted roster gains
//! nobody anything beyond that: the node applies it only if a threshold of the current members
//! signed it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use medmesh_protocol::roster::SignedRoster;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::dashboard::{self, Sessions};
use super::metrics::{Metrics, gauge};
use super::status::Status;
use super::{COMMAND_TIMEOUT, Error, Members, VALIDATE_TIMEOUT, ValidateRequest};
use crate::keys::AdminToken;

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
/// Largest request body the server reads (a signed roster fits in a gossip message).
const MAX_REQUEST_BODY: usize = medmesh_protocol::wire::MAX_GOSSIP;
/// Operator commands queued for the event loop at most.
const COMMAND_QUEUE: usize = 8;
/// Content type of `/metrics` (what `prometheus-client` encodes).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
        model: medmesh_record::store::Selection,
        /// Validate on this `[[validation]]` dataset of the config instead of `[data]`.
        dataset: Option<String>,
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

    /// The metrics to count into, shared (for a counter that outlives a borrow of the
    /// reporter).
    pub fn shared_metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
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
    pub async fn serve(&self, addr: SocketAddr, token: AdminToken) -> Result<Server, Error> {
        serve(
            addr,
            token,
            Shared {
                status: self.status.subscribe(),
                metrics: self.metrics.clone(),
                started: self.started,
                commands: self.commands.clone(),
                sessions: Arc::new(Sessions::default()),
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
    sessions: Arc<Sessions>,
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
async fn serve(addr: SocketAddr, token: AdminToken, shared: Shared) -> Result<Server, Error> {
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
        .route("/session", routing::post(session_handler))
        .route("/dashboard", routing::get(dashboard_page))
        .route("/dashboard/login", routing::get(dashboard_login))
        .route("/dashboard/data", routing::get(dashboard_data))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(Guard { token, addr: local }),
            guard,
        ))
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

/// What every request is checked against before a handler runs.
struct Guard {
    token: AdminToken,
    /// The address the endpoint is bound to.
    addr: SocketAddr,
}

impl Guard {
    /// Whether `host` (a `Host` header) names this endpoint: its address, or `localhost` with its
    /// port when it is bound to loopback; when bound to every interface, any IP address with its
    /// port. A name that is not ours is how DNS rebinding reaches a local server.
    fn host_matches(&self, host: &str) -> bool {
        let Some((name, port)) = host.rsplit_once(':') else {
            return false;
        };
        if port.parse::<u16>().ok() != Some(self.addr.port()) {
            return false;
        }
        let name = name.trim_start_matches('[').trim_end_matches(']');
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => ip == self.addr.ip() || self.addr.ip().is_unspecified(),
            Err(_) => name.eq_ignore_ascii_case("localhost") && self.addr.ip().is_loopback(),
        }
    }
}

/// The checks every request passes first, in this order: `Host` names the bound address (403),
/// the admin token (401), and JSON for a POST (415).
async fn guard(
    State(guard): State<Arc<Guard>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !guard.host_matches(host) {
        return (
            StatusCode::FORBIDDEN,
            "the Host header does not name this endpoint",
        )
            .into_response();
    }
    // The dashboard's routes take a session cookie instead of the token (a browser cannot send
    // the header); each checks it and answers the login page or 401 without one.
    if request.uri().path() == "/dashboard" || request.uri().path().starts_with("/dashboard/") {
        return next.run(request).await;
    }
    let admitted = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|a| guard.token.admits(a.as_bytes()));
    if !admitted {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "this endpoint needs the node's admin token (its admin.token file)",
        )
            .into_response();
    }
    if request.method() == axum::http::Method::POST {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.split(';').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send Content-Type: application/json",
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn status_handler(State(shared): State<Shared>) -> axum::Json<Status> {
    axum::Json(snapshot(&shared))
}

/// The newest status, with its uptime.
fn snapshot(shared: &Shared) -> Status {
    let mut status = shared.status.borrow().clone();
    status.uptime_seconds = shared.started.elapsed().as_secs_f64();
    status
}

/// `POST /session` (the token, JSON `{}`): a one-time login code for the dashboard.
async fn session_handler(State(shared): State<Shared>) -> Response {
    match shared.sessions.code() {
        Ok(code) => axum::Json(serde_json::json!({ "code": code })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the operating system's random source failed: {e}"),
        )
            .into_response(),
    }
}

async fn dashboard_page(State(shared): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    dashboard::page(&shared.sessions, &headers)
}

async fn dashboard_login(
    State(shared): State<Shared>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    dashboard::login(&shared.sessions, &query)
}

async fn dashboard_data(State(shared): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    dashboard::data(&shared.sessions, &headers, || snapshot(&shared))
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

/// `POST /validate` with a [`ValidateRequest`]: 200 with the report's description once the node
/// pulled, evaluated and published it; 400 for a bad request; 422 when it cannot; 503 when busy.
async fn validate_handler(State(shared): State<Shared>, body: Bytes) -> Response {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m).into_response();
    let request: ValidateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("not a validation request: {e}")),
    };
    let model: medmesh_record::store::Selection = match request.model.trim().parse() {
        Ok(model) => model,
        Err(e) => return bad(format!("not `latest` or a content id: {e}")),
    };
    let dataset = request.dataset;
    let (reply, answer) = oneshot::channel();
    let queued = shared
        .commands
        .send_timeout(
            Command::Validate {
                model,
                dataset,
                reply,
            },
            COMMAND_TIMEOUT,
        )
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use medmesh_protocol::identity::ContentId;
    use medmesh_testkit::key;

    use super::*;
    // The client is the test's harness: the server is exercised as `medmesh` uses it.
    use crate::admin::client::{Endpoint, block, fetch_status, get, post, publish_roster};
    use crate::admin::status::{Peers, Phase, RoundSummary, Test, Training};

    /// Serves `reporter` on a loopback port with a fresh token; the server and its endpoint.
    async fn serving(reporter: &Reporter) -> (Server, Endpoint) {
        let token = AdminToken::generate().expect("random");
        let server = reporter
            .serve("127.0.0.1:0".parse().expect("addr"), token.clone())
            .await
            .expect("serves");
        let endpoint = Endpoint {
            addr: server.local_addr(),
            token,
        };
        (server, endpoint)
    }

    /// Sends `request` (raw HTTP/1.1, closing) to `addr`; the status code and the body.
    async fn raw(addr: SocketAddr, request: String) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        stream.write_all(request.as_bytes()).await.expect("sends");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("reads");
        let code = answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (code, body)
    }

    /// Sends `request` to `addr`; the whole answer (status line, headers, body).
    async fn raw_answer(addr: SocketAddr, request: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        stream.write_all(request.as_bytes()).await.expect("sends");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("reads");
        answer
    }

    #[tokio::test]
    async fn the_dashboard_needs_a_session_from_a_one_time_code_and_takes_no_writes() {
        let (reporter, _commands) = Reporter::new(fake_status(), Instant::now());
        let (server, endpoint) = serving(&reporter).await;
        let addr = endpoint.addr;
        let get = |path: &str, cookie: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{cookie}\r\n")
        };
        // Without a session: the login page or a 401, and none of the node's data.
        for path in [
            "/dashboard",
            "/dashboard/data",
            "/dashboard/login?code=0123",
        ] {
            let (code, body) = raw(addr, get(path, "")).await;
            assert_eq!(code, 401, "{path}");
            assert!(
                !body.contains("cleveland") && !body.contains("national"),
                "{path}: {body}"
            );
        }
        let (code, body) = raw(addr, get("/dashboard", "")).await;
        assert_eq!(code, 401);
        assert!(body.contains("medmesh dashboard --config"), "{body}");
        // A login code needs the token.
        let session = |auth: &str| {
            format!(
                "POST /session HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
                 Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            )
        };
        let (code, _) = raw(addr, session("")).await;
        assert_eq!(code, 401);
        let (code, body) = raw(
            addr,
            session(&format!("Authorization: {}\r\n", endpoint.token.bearer())),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let code_value: serde_json::Value = serde_json::from_str(&body).expect("json");
        let login = format!(
            "/dashboard/login?code={}",
            code_value["code"].as_str().expect("code")
        );
        let answer = raw_answer(addr, get(&login, "")).await;
        assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
        let cookie = answer
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .expect("a session cookie");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let session_cookie = cookie.split(';').next().expect("name=value");
        // The code worked once.
        let (code, _) = raw(addr, get(&login, "")).await;
        assert_eq!(code, 401);
        let with = format!("Cookie: {session_cookie}\r\n");
        let (code, page) = raw(addr, get("/dashboard", &with)).await;
        assert_eq!(code, 200);
        assert!(page.contains("/dashboard/data"), "the page polls its data");
        let (code, data) = raw(addr, get("/dashboard/data", &with)).await;
        assert_eq!(code, 200);
        assert!(data.contains("\"site\":\"cleveland\""), "{data}");
        // No dashboard route takes a write, with a session or without.
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            for path in ["/dashboard", "/dashboard/data", "/dashboard/login"] {
                let request = format!(
                    "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{with}\
                     Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
                );
                let (code, _) = raw(addr, request).await;
                assert_eq!(code, 405, "{method} {path}");
            }
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn every_request_needs_the_token_json_and_our_host_and_names_no_file() {
        let (reporter, mut commands) = Reporter::new(fake_status(), Instant::now());
        let (server, endpoint) = serving(&reporter).await;
        let addr = endpoint.addr;
        let bearer = endpoint.token.bearer();
        // A stand-in for the event loop: records every command that reaches it.
        let loop_task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(command) = commands.recv().await {
                if let Command::Validate { dataset, reply, .. } = command {
                    seen.push(dataset.clone());
                    let _ = reply.send(Err(format!("no validation dataset {dataset:?}")));
                } else if let Command::Block { reply, .. } = command {
                    seen.push(Some("block".into()));
                    let _ = reply.send(Ok(Vec::new()));
                }
            }
            seen
        });
        let request = |method: &str, path: &str, headers: &str, body: &str| {
            format!(
                "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n{body}",
                body.len()
            )
        };
        let block = r#"{"members":["a"]}"#;
        // What a web page in a browser on this machine can send: no token, text/plain.
        let host = format!("Host: {addr}\r\n");
        let (code, _) = raw(
            addr,
            request(
                "POST",
                "/block",
                &format!("{host}Content-Type: text/plain\r\n"),
                block,
            ),
        )
        .await;
        assert_eq!(code, 401);
        let (code, _) = raw(addr, request("GET", "/status", &host, "")).await;
        assert_eq!(code, 401);
        let wrong = format!("{host}Authorization: Bearer {}\r\n", "0".repeat(64));
        let (code, _) = raw(addr, request("GET", "/metrics", &wrong, "")).await;
        assert_eq!(code, 401);
        // With the token, but not JSON.
        let auth = format!("{host}Authorization: {bearer}\r\n");
        let (code, _) = raw(
            addr,
            request(
                "POST",
                "/block",
                &format!("{auth}Content-Type: text/plain\r\n"),
                block,
            ),
        )
        .await;
        assert_eq!(code, 415);
        // With the token, from a page whose name resolves here (DNS rebinding).
        let rebound = format!(
            "Host: evil.example:{}\r\nAuthorization: {bearer}\r\n",
            addr.port()
        );
        let (code, _) = raw(addr, request("GET", "/status", &rebound, "")).await;
        assert_eq!(code, 403);
        let localhost = format!(
            "Host: localhost:{}\r\nAuthorization: {bearer}\r\n",
            addr.port()
        );
        let (code, _) = raw(addr, request("GET", "/status", &localhost, "")).await;
        assert_eq!(code, 200);
        // A request that names a file is refused before anything reads it.
        let json = format!("{auth}Content-Type: application/json\r\n");
        let named = r#"{"model":"latest","schema":"/etc/passwd","site":"x"}"#;
        let (code, body) = raw(addr, request("POST", "/validate", &json, named)).await;
        assert_eq!(code, 400);
        assert!(!body.contains("root:"), "{body}");
        // A dataset is a name the loop looks up in the config, never a path it opens.
        let by_name = r#"{"model":"latest","dataset":"/etc/passwd"}"#;
        let (code, body) = raw(addr, request("POST", "/validate", &json, by_name)).await;
        assert_eq!(code, 422, "{body}");
        assert!(!body.contains("root:"), "{body}");
        let (code, _) = raw(addr, request("POST", "/block", &json, block)).await;
        assert_eq!(code, 200);
        server.stop().await;
        drop(reporter);
        assert_eq!(
            loop_task.await.expect("loop"),
            vec![Some("/etc/passwd".to_owned()), Some("block".to_owned())],
            "only the authorized JSON requests reached the loop"
        );
    }

    fn fake_status() -> Status {
        Status {
            member: key(1).id(),
            peer_id: "12D3KooWtest".into(),
            site: "cleveland".into(),
            group: "centre-a".into(),
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
            reachability: crate::nat::Reachability {
                direct: 2,
                relayed: 1,
                reservations: vec!["12D3KooWrelay".into()],
                nat: "private".into(),
                hole_punch_attempts: 3,
                hole_punch_successes: 2,
            },
            last_round: Some(RoundSummary {
                round: 6,
                contributors: vec![key(1).id(), key(2).id()],
                timed_out: true,
            }),
            own_version: Some(ContentId([9; 32])),
            training: Some(Training {
                round: 7,
                seconds: 0.25,
                metrics: BTreeMap::from([("loss".to_owned(), 0.5)]),
            }),
            test: None,
            personalized: None,
            rejections: BTreeMap::from([("duplicate".to_owned(), 4)]),
            rounds_timed_out: 1,
            certified: Vec::new(),
            blocked: vec!["hungarian".into()],
            members: Vec::new(),
            history: Vec::new(),
            verdicts: Vec::new(),
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

        let (server, endpoint) = serving(&reporter).await;
        let addr = endpoint.addr;
        assert_ne!(addr.port(), 0);

        let (got, raw) = fetch_status(&endpoint).await.expect("status");
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
        assert!(text.contains("(cleveland, group centre-a)"), "{text}");
        assert_eq!(json["group"], "centre-a");
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
        let test = Test {
            samples: 60,
            accuracy: Some(0.75),
            auc: Some(0.8),
            c_index: None,
        };
        status.test = Some(test);
        reporter.publish(&status);
        m.record_test(&test);
        // A survival model's test sets the C-index gauge and leaves the accuracy's alone.
        m.record_test(&Test {
            samples: 63,
            accuracy: None,
            auc: None,
            c_index: Some(0.71),
        });
        let (got, _) = fetch_status(&endpoint).await.expect("status");
        assert_eq!(got.phase, Phase::Finished);
        let text = got.to_text();
        assert!(text.contains("finished after round 6"), "{text}");
        assert!(
            text.contains("accuracy 0.750, AUC 0.800 (60 rows)"),
            "{text}"
        );
        assert_eq!(got.test.and_then(|t| t.accuracy), Some(0.75));
        let survival = Status {
            test: Some(Test {
                samples: 63,
                c_index: Some(0.71),
                ..Test::default()
            }),
            ..got.clone()
        };
        let text = survival.to_text();
        assert!(
            text.contains("final model on the local test split: C-index 0.710 (63 rows)"),
            "{text}"
        );
        let json = serde_json::to_value(&survival).expect("json");
        assert_eq!(json["test"]["c_index"], 0.71);
        assert!(json["test"]["accuracy"].is_null());

        let metrics =
            String::from_utf8(get(&endpoint, "/metrics").await.expect("metrics").to_vec())
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
            "medmesh_local_test_c_index 0.71",
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "missing {line:?} in\n{metrics}"
            );
        }
        assert!(metrics.trim_end().ends_with("# EOF"));

        assert!(matches!(
            get(&endpoint, "/nope").await,
            Err(Error::Status { status: 404, .. })
        ));

        // Stopped: nothing listens any more, and the client says so.
        server.stop().await;
        let err = fetch_status(&endpoint).await.expect_err("stopped");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[tokio::test]
    async fn posted_rosters_reach_the_loop_and_its_answer_comes_back() {
        use medmesh_protocol::roster::{Role, Roster};
        use medmesh_testkit::member;

        let (reporter, mut commands) = Reporter::new(fake_status(), Instant::now());
        let (server, endpoint) = serving(&reporter).await;
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
        let roster = Roster::genesis("m", 1, vec![member(3, Role::Hospital)]).expect("roster");
        let genesis = SignedRoster::new(roster);
        assert_eq!(
            publish_roster(&endpoint, &genesis).await.expect("applied"),
            1
        );

        let mut next = genesis.roster().clone();
        next.version = 7;
        let err = publish_roster(&endpoint, &SignedRoster::new(next))
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, Error::Status { status: 409, message, .. } if message.contains("version 7")),
            "{err}"
        );
        // Not a roster at all: refused by the endpoint, never queued.
        let err = post(
            &endpoint,
            "/roster",
            Bytes::from_static(b"{\"members\": 3}"),
        )
        .await
        .expect_err("bad body");
        assert!(
            matches!(&err, Error::Status { status: 400, message, .. } if message.contains("not a signed roster")),
            "{err}"
        );
        // Too big: refused before it is parsed.
        let big = Bytes::from(vec![b' '; MAX_REQUEST_BODY + 1]);
        assert!(matches!(
            post(&endpoint, "/roster", big).await,
            Err(Error::Status { status: 413, .. })
        ));
        server.stop().await;
        drop(reporter);
        assert_eq!(loop_task.await.expect("loop"), vec![0, 7]);
    }

    #[tokio::test]
    async fn block_requests_reach_the_loop_and_bad_ones_do_not() {
        let (reporter, mut commands) = Reporter::new(fake_status(), Instant::now());
        let (server, endpoint) = serving(&reporter).await;

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
            block(&endpoint, &names(&["b", "a"]), true)
                .await
                .expect("blocked"),
            names(&["a", "b"])
        );
        assert_eq!(
            block(&endpoint, &names(&["a"]), false)
                .await
                .expect("unblocked"),
            names(&["b"])
        );
        let err = block(&endpoint, &names(&["zz"]), true)
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
            let err = post(&endpoint, "/block", Bytes::copy_from_slice(body))
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
        let (server, endpoint) = serving(&reporter).await;
        let addr = endpoint.addr;
        let err = reporter
            .serve(addr, AdminToken::generate().expect("random"))
            .await
            .expect_err("in use");
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
}
