//! The read-only dashboard at the admin address: `GET /dashboard` (one embedded page, no
//! script from anywhere else), `GET /dashboard/data` (the [`Status`] it draws, polled every two
//! seconds) and `GET /dashboard/login?code=…`.
//!
//! The credential is the admin token's: `medmesh dashboard` (which holds the token) asks
//! `POST /session` for a one-time login code, valid for two minutes, and prints the login link;
//! the link trades the code for a session cookie (random, `HttpOnly`, `SameSite=Strict`, for
//! twelve hours) and redirects to the page. A request without a live session gets the login
//! page or a 401, never data. Every dashboard route is `GET` only (anything else is 405), and
//! the page shows what `/status` shows: counters, ids, names and aggregate metrics, never keys,
//! patient data or parameters.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::status::Status;

/// The page: HTML, CSS and a small script that draws SVG charts, all in one file.
const PAGE: &str = include_str!("dashboard.html");
/// How long a login code from `POST /session` stays valid.
const CODE_LIFETIME: Duration = Duration::from_secs(120);
/// How long a session lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions and codes held at most (the oldest are dropped beyond).
const MAX_SESSIONS: usize = 64;
/// The session cookie's name.
const COOKIE: &str = "medmesh_session";

/// One-time login codes and live sessions, by their random value.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    codes: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<String, Instant>>,
}

/// 32 random bytes from the operating system, as hex.
fn random_hex() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Keeps the live entries of `map` (expiring at their instant), at most [`MAX_SESSIONS`].
fn prune(map: &mut HashMap<String, Instant>, now: Instant) {
    map.retain(|_, expires| *expires > now);
    while map.len() >= MAX_SESSIONS {
        let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Sessions {
    /// A new one-time login code.
    pub(super) fn code(&self) -> Result<String, getrandom::Error> {
        let code = random_hex()?;
        let now = Instant::now();
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut codes, now);
        codes.insert(code.clone(), now + CODE_LIFETIME);
        Ok(code)
    }

    /// Trades a live code (once) for a new session.
    fn login(&self, code: &str) -> Option<String> {
        let now = Instant::now();
        let live = self
            .codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(code)
            .is_some_and(|expires| expires > now);
        if !live {
            return None;
        }
        let session = random_hex().ok()?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut sessions, now);
        sessions.insert(session.clone(), now + SESSION_LIFETIME);
        Some(session)
    }

    /// Whether the request's cookies carry a live session.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let now = Instant::now();
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE)
            .any(|(_, value)| {
                // Compared in constant time against each live session.
                sessions.iter().any(|(session, expires)| {
                    *expires > now
                        && session.len() == value.len()
                        && session
                            .bytes()
                            .zip(value.bytes())
                            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                            == 0
                })
            })
    }
}

/// The login page, answered to anyone without a session.
fn login_page(message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>medmesh \
         dashboard: log in</title><style>body{{font:16px system-ui,sans-serif;margin:3em;\
         max-width:40em;color:#222}}code{{background:#eee;padding:.1em .3em}}</style></head>\
         <body><h1>medmesh dashboard</h1><p id=\"login\">{message}</p><p>On the node's machine, \
         run <code>medmesh dashboard --config medmesh.toml</code>: it prints a login link that \
         works once, for two minutes.</p></body></html>"
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::CACHE_CONTROL, "no-store")],
        Html(body),
    )
        .into_response()
}

/// `GET /dashboard`: the page for a session, else the login page.
pub(super) fn page(sessions: &Sessions, headers: &HeaderMap) -> Response {
    if !sessions.admits(headers) {
        return login_page("Log in with a link from <code>medmesh dashboard</code>.");
    }
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:",
            ),
        ],
        Html(PAGE),
    )
        .into_response()
}

/// `GET /dashboard/login?code=…`: a live code becomes a session cookie and a redirect to the
/// page; anything else gets the login page.
pub(super) fn login(sessions: &Sessions, query: &HashMap<String, String>) -> Response {
    let Some(session) = query.get("code").and_then(|code| sessions.login(code)) else {
        return login_page("This login link is not valid (used, expired, or mistyped).");
    };
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/dashboard".to_owned()),
            (
                header::SET_COOKIE,
                format!(
                    "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age={}",
                    SESSION_LIFETIME.as_secs()
                ),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response()
}

/// `GET /dashboard/data`: the status the page draws, for a session only.
pub(super) fn data(
    sessions: &Sessions,
    headers: &HeaderMap,
    status: impl FnOnce() -> Status,
) -> Response {
    if !sessions.admits(headers) {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    }
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(status())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_a_session_admits_only_its_cookie() {
        let sessions = Sessions::default();
        let code = sessions.code().expect("random");
        let session = sessions.login(&code).expect("a live code");
        assert!(sessions.login(&code).is_none(), "a code works once");
        assert!(sessions.login("not-a-code").is_none());
        let cookie = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::COOKIE,
                format!("other=1; {COOKIE}={value}")
                    .parse()
                    .expect("header"),
            );
            headers
        };
        assert!(sessions.admits(&cookie(&session)));
        assert!(!sessions.admits(&cookie(&code)), "a code is not a session");
        assert!(!sessions.admits(&cookie("")));
        assert!(!sessions.admits(&HeaderMap::new()));
    }

    #[test]
    fn the_page_is_small_and_loads_nothing_from_elsewhere() {
        assert!(PAGE.len() < 300 * 1024, "{} bytes", PAGE.len());
        for outside in ["http://", "https://", "//cdn", "<script src", "<link"] {
            assert!(!PAGE.contains(outside), "the page refers to {outside}");
        }
    }
}
