//! The admin endpoint's client (it sends the node's token with every request), for `medmesh status`, `medmesh roster publish`, `medmesh block`,
//! `medmesh validate` and the lab's tests: one HTTP/1 exchange per call, on a fresh connection.
//!
//! It must never wait without bound or read an unbounded answer: every call has a deadline and
//! every response body a size limit. A deadline covers the server's own wait for the event loop,
//! so a busy node's 503 arrives before the client gives up.

use std::net::SocketAddr;
use std::path::Path;

use axum::http::{StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use medmesh_protocol::roster::SignedRoster;
use tokio::net::TcpStream;

use super::status::Status;
use super::{CLIENT_TIMEOUT, COMMAND_TIMEOUT, Error, Members, VALIDATE_TIMEOUT, ValidateRequest};
use crate::keys::AdminToken;

/// Largest response body the client reads.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// A node's admin endpoint: where it listens and the token it asks for.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its address.
    pub addr: SocketAddr,
    /// Its credential.
    pub token: AdminToken,
}

impl Endpoint {
    /// The endpoint at `addr` whose token is in the file `token`.
    pub fn new(addr: SocketAddr, token: &Path) -> Result<Self, crate::keys::Error> {
        Ok(Self {
            addr,
            token: AdminToken::load(token)?,
        })
    }
}

/// `GET path` from the admin endpoint: the body of a 200 answer.
pub async fn get(endpoint: &Endpoint, path: &str) -> Result<Bytes, Error> {
    let addr = endpoint.addr;
    tokio::time::timeout(CLIENT_TIMEOUT, exchange(endpoint, path, None))
        .await
        .map_err(|_| Error::Timeout { addr })?
}

/// `POST path` with a JSON `body` to the admin endpoint: the body of a 200 answer.
pub async fn post(endpoint: &Endpoint, path: &str, body: Bytes) -> Result<Bytes, Error> {
    let addr = endpoint.addr;
    tokio::time::timeout(
        CLIENT_TIMEOUT + COMMAND_TIMEOUT,
        exchange(endpoint, path, Some(body)),
    )
    .await
    .map_err(|_| Error::Timeout { addr })?
}

async fn exchange(endpoint: &Endpoint, path: &str, body: Option<Bytes>) -> Result<Bytes, Error> {
    let addr = endpoint.addr;
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
            .header(header::AUTHORIZATION, endpoint.token.bearer())
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

/// The [`Status`] of the node behind `endpoint`, and the raw JSON it sent.
pub async fn fetch_status(endpoint: &Endpoint) -> Result<(Status, Bytes), Error> {
    let addr = endpoint.addr;
    let body = get(endpoint, "/status").await?;
    let status = serde_json::from_slice(&body).map_err(|source| Error::Decode { addr, source })?;
    Ok((status, body))
}

/// Hands a signed roster update to the node; the roster version it follows afterwards.
pub async fn publish_roster(endpoint: &Endpoint, update: &SignedRoster) -> Result<u64, Error> {
    let addr = endpoint.addr;
    let body = serde_json::to_vec(update).map_err(|source| Error::Decode { addr, source })?;
    let answer = post(endpoint, "/roster", Bytes::from(body)).await?;
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

/// Asks the node to block `members` (or lift their block, with `block` false); the members it
/// blocks afterwards.
pub async fn block(
    endpoint: &Endpoint,
    members: &[String],
    block: bool,
) -> Result<Vec<String>, Error> {
    let addr = endpoint.addr;
    let request = Members {
        members: members.to_vec(),
    };
    let body = serde_json::to_vec(&request).map_err(|source| Error::Decode { addr, source })?;
    let path = if block { "/block" } else { "/unblock" };
    let answer = post(endpoint, path, Bytes::from(body)).await?;
    let answer: Members =
        serde_json::from_slice(&answer).map_err(|source| Error::Decode { addr, source })?;
    Ok(answer.members)
}

/// Asks the node to validate a model and publish the report; its description.
pub async fn validate(endpoint: &Endpoint, request: &ValidateRequest) -> Result<String, Error> {
    let addr = endpoint.addr;
    let body = serde_json::to_vec(request).map_err(|source| Error::Decode { addr, source })?;
    let body = tokio::time::timeout(
        CLIENT_TIMEOUT + VALIDATE_TIMEOUT,
        exchange(endpoint, "/validate", Some(Bytes::from(body))),
    )
    .await
    .map_err(|_| Error::Timeout { addr })??;
    Ok(String::from_utf8_lossy(&body).into_owned())
}
