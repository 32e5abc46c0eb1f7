//! Forwarding: one request's exchange with the API server, in the phases ureq 3's
//! `run.rs` names (connect, send head, send body, receive head, receive body). Each
//! phase tags its errors with its [`Phase`], so the caller decides a refusal or a
//! retry from what failed where, not from error text. Each wait is bounded where it
//! happens: the connect, the client's body (between reads), the response head; a
//! sized response body keeps the head's bound, a stream has none.
//!
//! Bodies stream: chunked bodies are re-framed chunk by chunk (so no smuggled
//! message reaches the next hop) and streams (watches, `logs -f`) reach the reader
//! as each piece arrives.

use std::fmt;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::error::{Context, Error};
use crate::kube::client::ApiServer;
use crate::net::body::BodyReader;
use crate::net::conn::{Input, WriteHalf};
use crate::wire::http::{self, BodyLength, RequestHead, ResponseHead};

use super::respond::Refusal;
use super::MAX_HEAD;

const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body may pause this long between reads.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The API server must start answering within this (watches answer at once).
const UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// A connection idle for less than this is reused without a liveness check.
const REUSE_WITHOUT_CHECK: Duration = Duration::from_secs(1);
const COPY_CHUNK: usize = 32 * 1024;

/// The upstream half of a client connection, opened on first use.
pub struct Upstream {
    pub input: Input,
    pub output: WriteHalf,
    /// When its last response ended; a connection idle longer is checked before reuse.
    idle_since: Instant,
}

impl Upstream {
    /// Whether a connection kept from the last request may carry the next one: it has
    /// not spoken out of turn, and (after a second idle) has not been closed.
    fn reusable(&self) -> bool {
        self.input.buffered().is_empty() && (self.idle_since.elapsed() <= REUSE_WITHOUT_CHECK || self.input.half.is_reusable())
    }

    /// Keeps the connection for the next request, its idle time counted from now.
    pub fn keep(mut self, slot: &mut Option<Upstream>) {
        self.idle_since = Instant::now();
        *slot = Some(self);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Connect,
    SendHead,
    SendBody,
    ReceiveHead,
    ReceiveBody,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connecting to the API server",
            Phase::SendHead => "sending the request head",
            Phase::SendBody => "sending the request body",
            Phase::ReceiveHead => "receiving the response head",
            Phase::ReceiveBody => "receiving the response body",
        })
    }
}

/// Which peer of the exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// A failed phase: `source` is what the client is told of it; the phase and side say
/// where it happened, and the log names the phase too (`From<ForwardError> for Error`).
#[derive(Debug)]
pub struct ForwardError {
    pub phase: Phase,
    pub side: Side,
    pub source: Error,
}

impl ForwardError {
    fn new(phase: Phase, side: Side, source: impl Into<Error>) -> Self {
        ForwardError { phase, side, source: source.into() }
    }

    /// A request without a body is safe to send again on a fresh connection when the
    /// reused one failed; not after a response timeout (the API server may be working
    /// on it), never for the client's own failures, and a failed connect has no
    /// connection to blame but the fresh one.
    fn retryable(&self, framing: BodyLength) -> bool {
        framing == BodyLength::Empty && self.side == Side::Upstream && self.phase != Phase::Connect && !(self.phase == Phase::ReceiveHead && self.source.is_timeout())
    }

    /// What the client is told of a failed [`exchange`] (before any of the response
    /// reached it): a 400 for a malformed request body, a 504 for a response that
    /// never came, a 502 for any other failure of the API server's. Any other client
    /// failure (it went away, stalled) leaves nothing to tell: `Err`.
    pub fn refusal(self) -> Result<Refusal, Error> {
        Ok(match self.side {
            // A malformed chunked body is the client's fault and worth saying so; the
            // half-sent request died with its upstream connection.
            Side::Client if self.source.io_kind() == Some(std::io::ErrorKind::InvalidData) => Refusal::BadRequest(self.source.to_string()),
            Side::Client => return Err(self.into()),
            Side::Upstream if self.phase == Phase::ReceiveHead && self.source.is_timeout() => Refusal::UpstreamTimeout(self.source.to_string()),
            Side::Upstream => Refusal::UpstreamUnavailable(self.source.to_string()),
        })
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.phase, self.source)
    }
}

impl std::error::Error for ForwardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<ForwardError> for Error {
    fn from(e: ForwardError) -> Self {
        e.source.wrap(e.phase)
    }
}

/// A response head and the connection it came on, which the caller keeps, tunnels or
/// drops.
pub struct Exchange {
    pub upstream: Upstream,
    pub response: ResponseHead,
}

/// Sends `head` and its body (read from `client`, its first bytes kept in `capture`)
/// and reads the response head, on the connection in `kept` when it is still good,
/// else on a fresh one. A failure on a reused connection is retried once on a fresh
/// one when [`ForwardError::retryable`]. `kept` is left empty.
pub fn exchange(
    api: &ApiServer,
    kept: &mut Option<Upstream>,
    head: &RequestHead,
    framing: BodyLength,
    client: &mut Input,
    mut capture: Option<&mut Capture>,
) -> Result<Exchange, ForwardError> {
    loop {
        let (mut upstream, fresh) = match kept.take().filter(Upstream::reusable) {
            Some(up) => (up, false),
            None => (connect(api)?, true),
        };
        let sent = send(&mut upstream, head, framing, client, capture.as_deref_mut());
        match sent.and_then(|()| receive_head(&mut upstream)) {
            Ok(response) => return Ok(Exchange { upstream, response }),
            // A fresh connection is never retried, so this happens once at most.
            Err(e) if !fresh && e.retryable(framing) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn connect(api: &ApiServer) -> Result<Upstream, ForwardError> {
    let c = api.connect(UPSTREAM_CONNECT_TIMEOUT).map_err(|e| ForwardError::new(Phase::Connect, Side::Upstream, e))?;
    Ok(Upstream { input: Input::new(c.read), output: c.write, idle_since: Instant::now() })
}

/// The send phases: the head, then the body as it arrives from the client.
fn send(up: &mut Upstream, head: &RequestHead, framing: BodyLength, client: &mut Input, capture: Option<&mut Capture>) -> Result<(), ForwardError> {
    client.half.set_timeout(Some(BODY_IDLE_TIMEOUT)).map_err(|e| ForwardError::new(Phase::SendBody, Side::Client, e))?;
    copy_body(client, framing, head.encode(), &mut up.output, capture, &mut 0).map_err(|e| match e {
        CopyError::Read(e) => ForwardError::new(Phase::SendBody, Side::Client, e),
        CopyError::WriteHead(e) => ForwardError::new(Phase::SendHead, Side::Upstream, e),
        CopyError::WriteBody(e) => ForwardError::new(Phase::SendBody, Side::Upstream, e),
    })
}

fn receive_head(up: &mut Upstream) -> Result<ResponseHead, ForwardError> {
    let failed = |e| ForwardError::new(Phase::ReceiveHead, Side::Upstream, e);
    loop {
        let head = up
            .input
            .read_head(http::parse_response, MAX_HEAD, UPSTREAM_RESPONSE_TIMEOUT, UPSTREAM_RESPONSE_TIMEOUT)
            .context("reading response from API server")
            .map_err(failed)?
            .ok_or_else(|| failed(Error::new("API server closed the connection")))?;
        // Interim responses (100 Continue) are consumed here; kubectl never asks for them.
        if head.status >= 200 || head.status == 101 {
            return Ok(head);
        }
    }
}

/// Writes the client's response head `head`, then the body, re-framed as `framing`;
/// `forwarded` counts the body bytes the client was sent, failure or not.
pub fn receive_body(up: &mut Upstream, framing: BodyLength, head: &ResponseHead, client: &mut WriteHalf, forwarded: &mut u64) -> Result<(), ForwardError> {
    if matches!(framing, BodyLength::Chunked | BodyLength::UntilClose) {
        // Streams (watches, logs -f) may be silent for long; a sized body keeps the
        // response timeout (left in place: one setsockopt fewer per request).
        up.input.half.set_timeout(None).context("setting upstream timeout").map_err(|e| ForwardError::new(Phase::ReceiveBody, Side::Upstream, e))?;
    }
    copy_body(&mut up.input, framing, head.encode(), client, None, forwarded).or_else(|e| match e {
        CopyError::Read(e) => Err(e).context("reading response body from API server").map_err(|e| ForwardError::new(Phase::ReceiveBody, Side::Upstream, e)),
        CopyError::WriteHead(e) | CopyError::WriteBody(e) => Err(e).context("writing response body to client").map_err(|e| ForwardError::new(Phase::ReceiveBody, Side::Client, e)),
    })
}

/// The first bytes of a request body, kept for its API event.
pub struct Capture {
    pub data: Vec<u8>,
    limit: usize,
    pub truncated: bool,
}

impl Capture {
    pub fn new(limit: usize) -> Self {
        Capture { data: Vec::new(), limit, truncated: false }
    }
}

/// Where a copy stopped: reading the body, or writing the head or the body.
enum CopyError {
    Read(Error),
    WriteHead(Error),
    WriteBody(Error),
}

/// Writes `head`, then copies one body, re-framing chunked bodies chunk by chunk so
/// streams (watches, `logs -f`) reach the reader as soon as each piece arrives. The
/// head goes out with the first piece of body (one TLS record for small messages).
/// Keeps the body's first bytes in `capture` when given. `forwarded` counts the body
/// bytes written so far, so a copy that fails part way still says how much got through.
fn copy_body(from: &mut Input, framing: BodyLength, head: Vec<u8>, to: &mut WriteHalf, capture: Option<&mut Capture>, forwarded: &mut u64) -> Result<(), CopyError> {
    thread_local! {
        // One copy buffer per connection thread, not one allocation per message.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; COPY_CHUNK]);
    }
    let mut out = Outgoing { to, pending: head, pending_body: 0, head_sent: false, forwarded };
    BUF.with(|b| copy_body_with(from, framing, &mut out, capture, &mut b.borrow_mut()))
}

/// What waits to be written, and what has been.
struct Outgoing<'a> {
    to: &'a mut WriteHalf,
    pending: Vec<u8>,
    /// Body bytes in `pending` (the rest is the head and chunk framing).
    pending_body: u64,
    head_sent: bool,
    forwarded: &'a mut u64,
}

impl Outgoing<'_> {
    fn flush(&mut self) -> Result<(), CopyError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // The head is the start of the first write; a failure after it is the body's.
        let written = self.to.write_all(&self.pending).map_err(|e| if self.head_sent { CopyError::WriteBody(e.into()) } else { CopyError::WriteHead(e.into()) });
        self.head_sent = true;
        written?;
        *self.forwarded += self.pending_body;
        self.pending.clear();
        self.pending_body = 0;
        Ok(())
    }
}

fn copy_body_with(from: &mut Input, framing: BodyLength, out: &mut Outgoing<'_>, mut capture: Option<&mut Capture>, buf: &mut [u8]) -> Result<(), CopyError> {
    let chunked = framing == BodyLength::Chunked;
    let mut body = BodyReader::new(from, framing);
    loop {
        // Whatever waits to be written goes out before a read that may block.
        if !body.is_done() && body.available() == 0 {
            out.flush()?;
        }
        let n = body.read(buf).map_err(|e| CopyError::Read(e.into()))?;
        if n == 0 {
            if chunked {
                out.pending.extend_from_slice(http::LAST_CHUNK);
            }
            return out.flush();
        }
        if let Some(c) = capture.as_deref_mut() {
            let room = c.limit.saturating_sub(c.data.len());
            c.data.extend_from_slice(&buf[..n.min(room)]);
            c.truncated |= n > room;
        }
        if chunked {
            out.pending.extend_from_slice(&http::encode_chunk(&buf[..n]));
        } else {
            out.pending.extend_from_slice(&buf[..n]);
        }
        out.pending_body += n as u64;
        if !body.is_done() {
            out.flush()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::respond;
    use std::io::ErrorKind;

    fn failed(phase: Phase, side: Side, kind: ErrorKind) -> ForwardError {
        ForwardError::new(phase, side, std::io::Error::from(kind))
    }

    #[test]
    fn retry_rule_and_what_the_client_is_told() {
        use BodyLength::{Empty, Length};
        use ErrorKind::{BrokenPipe, ConnectionReset, InvalidData, TimedOut};
        // (phase, side, error, framing, retried on a fresh connection, status told or None)
        let cases = [
            (Phase::SendHead, Side::Upstream, BrokenPipe, Empty, true, Some(502)),
            (Phase::SendHead, Side::Upstream, BrokenPipe, Length(3), false, Some(502)),
            (Phase::SendBody, Side::Upstream, ConnectionReset, Length(3), false, Some(502)),
            (Phase::SendBody, Side::Client, InvalidData, Length(3), false, Some(400)),
            (Phase::SendBody, Side::Client, TimedOut, Length(3), false, None),
            (Phase::SendBody, Side::Client, ConnectionReset, Empty, false, None),
            (Phase::ReceiveHead, Side::Upstream, ConnectionReset, Empty, true, Some(502)),
            (Phase::ReceiveHead, Side::Upstream, TimedOut, Empty, false, Some(504)),
            (Phase::ReceiveHead, Side::Upstream, TimedOut, Length(3), false, Some(504)),
            (Phase::Connect, Side::Upstream, TimedOut, Empty, false, Some(502)),
        ];
        for (phase, side, kind, framing, retried, told) in cases {
            let e = failed(phase, side, kind);
            let name = format!("{e} ({side:?}, {framing:?})");
            assert_eq!(e.retryable(framing), retried, "{name}");
            assert_eq!(e.refusal().ok().map(|r| respond::decide(&r).0), told, "{name}");
        }
    }

    #[test]
    fn errors_name_their_phase_and_keep_the_source() {
        let e = failed(Phase::ReceiveHead, Side::Upstream, ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "receiving the response head: timed out");
        assert_eq!(std::error::Error::source(&e).map(|s| s.to_string()).as_deref(), Some("timed out"));
        let logged = Error::from(e);
        assert_eq!(logged.to_string(), "receiving the response head: timed out");
        assert!(logged.is_timeout(), "still a timeout");
    }
}
