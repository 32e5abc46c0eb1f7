//! Serving a recording's cast to readers: `GET /v1/recordings/{id}/cast` answers with
//! what is durable now (a running session: up to its last durable whole line), and
//! `?follow=true` streams it from the start (chunked) and then each new line as it
//! becomes durable, until the session ends.
//!
//! `GET /v1/recordings/{id}/live` is the same follow as a `text/event-stream` of the
//! cast's lines, which asciinema-player's `eventsource` driver plays as they come.
//!
//! All read the cast file, never the ingest: a follower waits on its session's
//! [`Progress`] (woken after every sync) and copies from its own file handle, so a
//! reader that stops reading blocks only its own thread, for at most
//! [`FOLLOW_WRITE_TIMEOUT`].

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use super::live::{Progress, Seen, MAX_FOLLOWERS, MAX_FOLLOWS_PER_VIEWER};
use super::State;
use crate::net::conn::{ReadHalf, WriteHalf};
use crate::playback::screen;
use crate::record::protocol::Status;
use crate::storage::{Cast, Recordings};
use crate::wire::asciicast;
use crate::wire::http::{self, ResponseHead};

const CONTENT_TYPE: &str = "application/x-asciicast";
/// Bytes read from the cast file and sent per write.
const COPY_CHUNK: usize = 64 * 1024;
/// A follower whose client takes longer than this to accept a write is dropped, so a
/// reader that stopped reading cannot keep a follower's place.
const FOLLOW_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a follower of an idle session looks whether its client is still there
/// (it has nothing to write that would tell).
const FOLLOW_PEER_CHECK: Duration = Duration::from_secs(5);

type Refusal = (u16, String);

/// How far a recording can be read, and whether that can still grow.
enum Extent {
    Live(Arc<Progress>),
    Done(u64),
}

/// The cast file and its readable extent. The live map is asked first: a session
/// removed from it has already written its final sidecar, so the sidecar read after
/// is never an earlier one.
fn open(state: &State, id: &str) -> Result<(Cast, Extent), Refusal> {
    let live = state.live.get(id);
    let (meta, file) = state.recordings()?.open(id).map_err(|e| (500, e.to_string()))?.ok_or((404, format!("recording {id:?} not found")))?;
    // Registered just after we looked (the sidecar is written first).
    let live = live.or_else(|| if meta.status == Status::Recording { state.live.get(id) } else { None });
    let extent = match live {
        Some(p) => Extent::Live(p),
        // Still `recording` in the spool but written by nobody (its ending could not
        // be stored): the sidecar counts no byte as durable. One from the bucket
        // (another recorder's) counts its segments' whole lines.
        None if meta.status == Status::Recording && matches!(file, Cast::File(_)) => Extent::Done(0),
        None => Extent::Done(meta.bytes),
    };
    Ok((file, extent))
}

/// Sends bytes `from..to` of `file` through `send`, a piece at a time.
fn copy(file: &Cast, from: u64, to: u64, send: &mut impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut at = from;
    while at < to {
        let want = usize::try_from(to - at).unwrap_or(COPY_CHUNK).min(COPY_CHUNK);
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the cast file is shorter than its durable count"));
        }
        send(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

fn head(content_type: &str, content_length: Option<u64>) -> Vec<u8> {
    let mut head = ResponseHead::new(200);
    head.headers.push("Content-Type", content_type);
    super::web::security_headers(&mut head.headers);
    match content_length {
        Some(n) => head.headers.push("Content-Length", n.to_string()),
        None => head.headers.push("Transfer-Encoding", "chunked"),
    }
    head.encode()
}

/// What the connection's handler does after a response that failed part-way.
pub(super) enum Sent {
    /// The response is complete; the connection may serve another request.
    Whole,
    /// The head went out but not the whole body: the connection must close.
    Broken,
}

/// `GET .../cast`: the durable bytes now, as one response.
/// The cast file and how many of its bytes may be read now.
pub(super) fn durable(state: &State, id: &str) -> Result<(Cast, u64), Refusal> {
    let (file, extent) = open(state, id)?;
    let end = match extent {
        Extent::Live(p) => p.seen().durable,
        Extent::Done(n) => n,
    };
    // A file cut short behind our back is served as it is, never with a false length.
    let end = end.min(file.size().map_err(|e| (500, e.to_string()))?);
    Ok((file, end))
}

/// The first `end` bytes of `file`, whole (for rendering).
pub(super) fn read_whole(file: &Cast, end: u64) -> Result<Vec<u8>, Refusal> {
    let mut bytes = Vec::with_capacity(usize::try_from(end).unwrap_or(0));
    copy(file, 0, end, &mut |piece| {
        bytes.extend_from_slice(piece);
        Ok(())
    })
    .map_err(|e| (500, e.to_string()))?;
    Ok(bytes)
}

pub(super) fn snapshot(state: &State, id: &str, out: &mut WriteHalf) -> Result<Sent, Refusal> {
    let (file, end) = durable(state, id)?;
    out.write_all(&head(CONTENT_TYPE, Some(end))).map_err(|e| (500, e.to_string()))?;
    Ok(match copy(&file, 0, end, &mut |piece| out.write_all(piece)) {
        Ok(()) => Sent::Whole,
        Err(e) => {
            log::debug!("cast response broken off id={id} error={e}");
            Sent::Broken
        }
    })
}

/// How a follow sends the cast.
#[derive(Clone, Copy)]
pub(super) enum Form {
    /// Its bytes, as they are.
    Cast,
    /// Server-sent events: the header as `{"cols","rows"}`, then each event line, then
    /// event `done`.
    EventStream,
}

/// Turns a cast's bytes, in pieces cut anywhere, into server-sent events.
#[derive(Default)]
struct EventStream {
    pending: Vec<u8>,
    header_seen: bool,
}

impl EventStream {
    fn messages(&mut self, piece: &[u8]) -> Vec<u8> {
        let before = self.pending.len();
        self.pending.extend_from_slice(piece);
        // Only the new piece can hold the line end that was missing.
        let Some(end) = piece.iter().rposition(|b| *b == b'\n').map(|i| before + i) else { return Vec::new() };
        let mut out = Vec::new();
        for line in self.pending[..=end].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let data = if self.header_seen {
                // An event line is one JSON array: no newline inside, safe as one
                // `data:`. Players know `o` only: stderr (`e`) shows as output too.
                // A resize is peer input: the player gets at most what `play` renders.
                match serde_json::from_slice::<serde_json::Value>(line) {
                    Ok(mut ev) if ev[1] == "e" => {
                        ev[1] = "o".into();
                        ev.to_string().into_bytes()
                    }
                    Ok(mut ev) if ev[1] == "r" => match ev[2].as_str().and_then(screen::resize_event) {
                        Some((cols, rows)) => {
                            ev[2] = format!("{cols}x{rows}").into();
                            ev.to_string().into_bytes()
                        }
                        None => continue,
                    },
                    _ => line.to_vec(),
                }
            } else {
                self.header_seen = true;
                let h: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
                let init = asciicast::without_terminal(&h).then_some(asciicast::NEWLINE_MODE);
                let (cols, rows) = screen::size(h["width"].as_u64(), h["height"].as_u64()).unwrap_or((80, 24));
                serde_json::json!({"cols": cols, "rows": rows, "init": init}).to_string().into_bytes()
            };
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\n\n");
        }
        self.pending.drain(..=end);
        out
    }
}

/// `GET .../cast?follow=true` (and `.../live`, as [`Form::EventStream`]): everything
/// durable, then each sync's new lines, until the session ends; then the last chunk.
/// `still_allowed` is asked before each piece sent and at every idle check: a viewer
/// whose token or RBAC binding went away stops being sent the session.
/// `viewer`: a token viewer's name (`None`: a reader certificate), whose follows are
/// counted apart. `noted` records the view, once a place is had and before anything
/// is sent.
pub(super) struct Follow<'a> {
    pub form: Form,
    pub viewer: Option<&'a str>,
    pub noted: &'a dyn Fn() -> Result<(), Refusal>,
    pub still_allowed: &'a dyn Fn() -> bool,
}

pub(super) fn follow(state: &State, id: &str, peer: &ReadHalf, out: &mut WriteHalf, how: Follow<'_>) -> Result<Sent, Refusal> {
    let Follow { form, viewer, noted, still_allowed } = how;
    let Some(_place) = state.live.follower(viewer) else {
        let whose = if viewer.is_some() {
            format!("you have {MAX_FOLLOWS_PER_VIEWER} follows open, or viewers hold every place viewers may")
        } else {
            format!("{MAX_FOLLOWERS} follows are open already")
        };
        return Err((503, format!("{whose}; try again later")));
    };
    noted()?;
    let (file, extent) = open(state, id)?;
    // The write half's socket is this one: the timeout bounds a client that stopped reading.
    peer.shutdown_handle().and_then(|s| s.set_write_timeout(Some(FOLLOW_WRITE_TIMEOUT))).map_err(|e| (500, e.to_string()))?;
    let content_type = match form {
        Form::Cast => CONTENT_TYPE,
        Form::EventStream => "text/event-stream",
    };
    out.write_all(&head(content_type, None)).map_err(|e| (500, e.to_string()))?;
    let mut events = EventStream::default();
    let mut send = |piece: &[u8]| match form {
        Form::Cast => out.write_all(&http::encode_chunk(piece)),
        Form::EventStream => match events.messages(piece) {
            m if m.is_empty() => Ok(()),
            m => out.write_all(&http::encode_chunk(&m)),
        },
    };
    let mut sent = 0;
    let result = loop {
        let seen = match &extent {
            Extent::Live(p) => p.wait_past(sent, FOLLOW_PEER_CHECK),
            Extent::Done(n) => Seen { durable: *n, ended: true },
        };
        if !still_allowed() {
            break Err(io::Error::new(io::ErrorKind::PermissionDenied, "the reader may no longer watch this recording"));
        }
        if seen.durable > sent {
            if let Err(e) = copy(&file, sent, seen.durable, &mut send) {
                break Err(e);
            }
            sent = seen.durable;
        } else if !seen.ended && !peer.is_reusable() {
            break Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the reader went away"));
        }
        if seen.ended {
            if matches!(form, Form::EventStream) {
                if let Err(e) = out.write_all(&http::encode_chunk(b"event: done\ndata: {}\n\n")) {
                    break Err(e);
                }
            }
            break out.write_all(http::LAST_CHUNK);
        }
    };
    let _ = peer.shutdown_handle().and_then(|s| s.set_write_timeout(None));
    Ok(match result {
        Ok(()) => Sent::Whole,
        Err(e) => {
            log::debug!("follower stopped id={id} bytes={sent} error={e}");
            Sent::Broken
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cast_becomes_events_whatever_the_pieces() {
        let cast = b"{\"version\":2,\"width\":100,\"height\":30,\"kubetape\":{\"tty\":true}}\n[0.5,\"o\",\"a\\nb\"]\n[1.0,\"r\",\"80x24\"]\n[1.5,\"e\",\"oops\"]\n[1.6,\"r\",\"65535x65535\"]\n[1.7,\"r\",\"junk\"]\n";
        let want = "data: {\"cols\":100,\"init\":null,\"rows\":30}\n\ndata: [0.5,\"o\",\"a\\nb\"]\n\ndata: [1.0,\"r\",\"80x24\"]\n\ndata: [1.5,\"o\",\"oops\"]\n\ndata: [1.6,\"r\",\"500x200\"]\n\n";
        for cut in 1..cast.len() {
            let mut es = EventStream::default();
            let mut got = es.messages(&cast[..cut]);
            got.extend(es.messages(&cast[cut..]));
            assert_eq!(String::from_utf8(got).unwrap(), want, "cut at {cut}");
        }
        let mut es = EventStream::default();
        let first = String::from_utf8(es.messages(b"{\"width\":80,\"height\":24,\"kubetape\":{\"tty\":false}}\n")).unwrap();
        let mut huge = EventStream::default();
        assert_eq!(String::from_utf8(huge.messages(b"{\"width\":100000,\"height\":9}\n")).unwrap(), "data: {\"cols\":500,\"init\":null,\"rows\":9}\n\n");
        assert_eq!(first, "data: {\"cols\":80,\"init\":\"\\u001b[20h\",\"rows\":24}\n\n", "no terminal: line feeds return the carriage");
    }
}
