//! The one place that decides what a client is told when the proxy refuses or
//! cannot serve a request: an HTTP status and a Kubernetes `Status` body.

use std::io::{self, Write};

use crate::net::conn::WriteHalf;
use crate::net::head::BadHead;
use crate::wire::http::ResponseHead;
use crate::wire::status;

#[derive(Debug)]
pub enum Refusal {
    BadRequest(String),
    /// An `Expect` other than `100-continue`.
    ExpectationFailed(String),
    HeadTooLarge,
    /// The client was too slow in the named phase.
    Timeout(&'static str),
    Unauthenticated,
    Forbidden(String),
    /// The pool of authenticated connections is full.
    Busy,
    UpstreamUnavailable(String),
    UpstreamTimeout(String),
    /// The proxy cannot meet the caller's policy now (API events unrecordable).
    /// `discovery`: a non-resource request such as `/api`, whose errors kubectl
    /// reports only from a `text/plain` body and only for a 4xx status.
    Unrecordable {
        why: String,
        discovery: bool,
    },
}

impl From<BadHead> for Refusal {
    fn from(bad: BadHead) -> Self {
        match bad {
            BadHead::TooLarge => Refusal::HeadTooLarge,
            BadHead::Timeout => Refusal::Timeout("request head"),
            BadHead::Malformed(why) => Refusal::BadRequest(why),
        }
    }
}

/// The status code and message for a refusal.
pub fn decide(r: &Refusal) -> (u16, String) {
    match r {
        Refusal::BadRequest(why) => (400, format!("kubetape: bad request: {why}")),
        Refusal::ExpectationFailed(what) => (417, format!("kubetape: cannot meet the expectation {what:?}")),
        Refusal::HeadTooLarge => (431, "kubetape: request head too large".to_string()),
        Refusal::Timeout(phase) => (408, format!("kubetape: timed out waiting for the {phase}")),
        Refusal::Unauthenticated => (401, "Unauthorized".to_string()),
        Refusal::Forbidden(why) => (403, format!("kubetape: forbidden: {why}")),
        Refusal::Busy => (503, "kubetape: too many open connections, try again".to_string()),
        Refusal::UpstreamUnavailable(why) => (502, format!("kubetape: API server unavailable: {why}")),
        Refusal::UpstreamTimeout(why) => (504, format!("kubetape: API server did not answer in time: {why}")),
        Refusal::Unrecordable { why, discovery: false } => (503, format!("kubetape: {why}")),
        Refusal::Unrecordable { why, discovery: true } => (403, format!("kubetape: {why}")),
    }
}

/// Writes the refusal and marks the connection for closing.
pub fn refuse(out: &mut WriteHalf, r: &Refusal) -> io::Result<()> {
    let (code, message) = decide(r);
    // client-go decodes a Status on resource requests but shows discovery errors only
    // as text, so the reason reaches the user in both.
    let (content_type, body) = match r {
        Refusal::Unrecordable { discovery: true, .. } => ("text/plain; charset=utf-8", message),
        _ => ("application/json", status::failure(code, &message).to_string()),
    };
    let mut head = ResponseHead::new(code);
    head.headers.push("Content-Type", content_type);
    head.headers.push("Content-Length", body.len().to_string());
    head.headers.push("Connection", "close");
    if code == 401 {
        head.headers.push("WWW-Authenticate", "Bearer");
    }
    let mut bytes = head.encode();
    bytes.extend_from_slice(body.as_bytes());
    out.write_all(&bytes)
}

/// A short plain-text answer from the proxy itself (health checks).
pub fn plain(out: &mut WriteHalf, code: u16, text: &str) -> io::Result<()> {
    out.write_all(&crate::wire::http::response(code, "text/plain; charset=utf-8", text.as_bytes()))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let table: &[(Refusal, u16)] = &[
            (Refusal::BadRequest("x".into()), 400),
            (Refusal::ExpectationFailed("x".into()), 417),
            (Refusal::HeadTooLarge, 431),
            (Refusal::Timeout("request head"), 408),
            (Refusal::Unauthenticated, 401),
            (Refusal::Forbidden("x".into()), 403),
            (Refusal::Busy, 503),
            (Refusal::UpstreamUnavailable("x".into()), 502),
            (Refusal::UpstreamTimeout("x".into()), 504),
            (Refusal::Unrecordable { why: "x".into(), discovery: false }, 503),
            (Refusal::Unrecordable { why: "x".into(), discovery: true }, 403),
        ];
        for (r, code) in table {
            assert_eq!(decide(r).0, *code, "{r:?}");
        }
    }
}
