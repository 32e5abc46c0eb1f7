//! A session's asciicast v2 recording (`wire::asciicast`): the header with the
//! `kubetape` context object, then event lines from what the taps saw (output held
//! back until its UTF-8 sequences are whole, resizes, failures on the error channel as
//! markers, and the exit status at the end). Pure: the caller hands in the time, so
//! the header and the lines for a sequence of events can be checked exactly. No I/O.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::kube::auth::UserInfo;
use crate::record::event::Impersonated;
use crate::recording::tap::TapEvent;
use crate::wire::asciicast::{self, Utf8Splitter};

/// The terminal size a recording starts with; the client's first resize follows as
/// an `r` event (the header is written before the upgrade, when no size is known).
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// An exec or attach session, as its request asked for it (and, for an attach, as
/// the pod it attaches to says: `kubectl debug` and `kubectl run -it` attach too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionRequest {
    /// `exec`, `attach`, `debug` (an ephemeral container) or `run` (a pod `kubectl
    /// run` made).
    pub kind: &'static str,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    pub tty: bool,
    /// The attached container's image, where the pod shows it.
    pub image: String,
    /// For `debug`: the container whose processes the debugger shares.
    pub target: String,
}

/// Everything the recording header says about a session.
pub struct HeaderContext<'a> {
    pub id: &'a str,
    pub request: &'a SessionRequest,
    /// The upgrade asked for (`SPDY/3.1`, `websocket`) and the subprotocols offered.
    pub protocol: &'a str,
    pub offered: &'a [String],
    pub user: Option<&'a UserInfo>,
    pub impersonated: Option<&'a Impersonated>,
    pub source: &'a str,
    pub proxy_id: &'a str,
    pub started: SystemTime,
    /// The grant's fail mode: the recorder keeps a fail-open session (truncated) when
    /// its spool is full, and refuses a fail-closed one.
    pub fail: crate::recording::fail::FailMode,
}

/// The asciicast v2 header with the `kubetape` context object.
pub fn header(c: &HeaderContext<'_>) -> Value {
    let r = c.request;
    json!({
        "version": 2,
        "width": DEFAULT_SIZE.0,
        "height": DEFAULT_SIZE.1,
        "timestamp": c.started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        "title": format!("kubectl {} {}/{} {}", r.kind, r.namespace, r.pod, r.command.join(" ")),
        // A terminal type only where there is a terminal.
        "env": if r.tty { json!({"TERM": "xterm-256color"}) } else { json!({}) },
        "kubetape": {
            "sessionId": c.id,
            "type": r.kind,
            "protocol": c.protocol,
            "subprotocols": c.offered,
            "tty": r.tty,
            "user": c.user.map(|u| json!({"name": u.name, "uid": u.uid, "groups": u.groups, "authenticatedBy": u.method, "sourceAddress": c.source}))
                .unwrap_or_else(|| json!({"name": "", "sourceAddress": c.source})),
            "impersonated": c.impersonated,
            "namespace": r.namespace,
            "pod": r.pod,
            "container": r.container,
            "command": r.command,
            "image": r.image,
            "targetContainer": r.target,
            "proxy": {"id": c.proxy_id, "version": env!("CARGO_PKG_VERSION")},
            "failMode": c.fail.as_str(),
            "startTime": crate::wire::time::rfc3339_millis(c.started),
        }
    })
}

/// The writer for one session.
#[derive(Default)]
pub struct CastWriter {
    /// stdout, stderr.
    splitters: [Utf8Splitter; 2],
    exit_code: Option<i32>,
    /// What the error channel said when the command failed (to start, say).
    failure: Option<String>,
}

impl CastWriter {
    /// The lines for `events` seen `seconds` into the session (newline-terminated;
    /// empty when there is nothing to write yet).
    pub fn lines(&mut self, seconds: f64, events: Vec<TapEvent>) -> String {
        let mut out = String::new();
        for e in events {
            match e {
                TapEvent::Output { stream, data } => {
                    let i = usize::from(stream == asciicast::STDERR);
                    if let Some(piece) = self.splitters[i].push(&data) {
                        out.push_str(&asciicast::output_lines(seconds, stream, &piece));
                    }
                }
                TapEvent::Resize(s) => push_line(&mut out, asciicast::event_line(seconds, "r", &format!("{}x{}", s.width, s.height))),
                TapEvent::Exit(code) => self.exit_code = Some(code),
                TapEvent::Failure(msg) => {
                    push_line(&mut out, marker(seconds, &format!("error:{msg}")));
                    // The Status's message, as kubectl prints it; the marker keeps it whole.
                    let message = serde_json::from_str::<Value>(&msg).ok().and_then(|s| s["message"].as_str().map(String::from));
                    self.failure = Some(message.unwrap_or(msg));
                }
            }
        }
        out
    }

    /// The lines that end the session: output still held back, then the exit status.
    pub fn finish(&mut self, seconds: f64) -> String {
        let mut out = String::new();
        for (i, stream) in [asciicast::STDOUT, asciicast::STDERR].into_iter().enumerate() {
            if let Some(piece) = self.splitters[i].finish() {
                out.push_str(&asciicast::output_lines(seconds, stream, &piece));
            }
        }
        if let Some(code) = self.exit_code {
            push_line(&mut out, marker(seconds, &format!("exit:{code}")));
        }
        out
    }

    /// The exit status the error channel reported, if it did.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    /// An exit status learnt elsewhere (an attach's error channel carries none: the
    /// pod's status does), when the stream gave none; `finish` then records it.
    pub fn learn_exit_code(&mut self, code: Option<i32>) {
        self.exit_code = self.exit_code.or(code);
    }

    /// Why the command failed, as the error channel said.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
}

/// One marker (`m`) line, newline-terminated.
pub fn marker_line(seconds: f64, text: &str) -> String {
    format!("{}\n", marker(seconds, text))
}

fn marker(seconds: f64, text: &str) -> String {
    asciicast::event_line(seconds, "m", text)
}

fn push_line(out: &mut String, line: String) {
    out.push_str(&line);
    out.push('\n');
}

/// A marker line (`"m"` event at `seconds`) saying `text`, padded with spaces to
/// exactly `len` bytes so the lines after it keep their offsets; the text is dropped
/// if it does not fit. `None` if even an empty marker is longer than `len`.
pub fn padded_marker(len: usize, seconds: f64, text: &str) -> Option<Vec<u8>> {
    let fits = |line: &String| line.len() < len;
    let line = Some(marker(seconds, text)).filter(fits).or_else(|| Some(marker(seconds, "")).filter(fits))?;
    // Spaces before the closing bracket are JSON whitespace.
    let mut line = line.strip_suffix(']').unwrap_or(&line).to_string();
    line.extend(std::iter::repeat_n(' ', len - line.len() - 2));
    line.push_str("]\n");
    Some(line.into_bytes())
}

/// The time of the last event line in `cast` (0 if there is none).
pub fn last_time(cast: &[u8]) -> f64 {
    let body = cast.strip_suffix(b"\n").unwrap_or(cast);
    let last = body.rsplit(|b| *b == b'\n').next().unwrap_or(b"");
    serde_json::from_slice::<Value>(last).ok().and_then(|v| v.get(0).and_then(Value::as_f64)).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::channel::TerminalSize;

    #[test]
    fn the_header_says_who_what_where_and_when() {
        let request = SessionRequest {
            kind: "exec",
            namespace: "default".into(),
            pod: "web-0".into(),
            container: "main".into(),
            command: vec!["sh".into(), "-c".into(), "id".into()],
            tty: true,
            ..SessionRequest::default()
        };
        let groups = vec!["sre".to_string(), "system:masters".to_string()];
        let started = UNIX_EPOCH + std::time::Duration::from_millis(1_796_000_000_123);
        let h = header(&HeaderContext {
            id: "s-1",
            request: &request,
            protocol: "SPDY/3.1",
            offered: &["v5.channel.k8s.io".to_string()],
            user: None,
            impersonated: Some(&Impersonated { user: "alice".into(), uid: "alice-uid".into(), groups: groups.clone() }),
            source: "192.0.2.1",
            proxy_id: "p1",
            started,
            fail: crate::recording::fail::FailMode::Closed,
        });
        assert_eq!(h["timestamp"], 1_796_000_000);
        assert_eq!(h["title"], "kubectl exec default/web-0 sh -c id");
        let k = &h["kubetape"];
        assert_eq!(k["startTime"], "2026-11-30T00:53:20.123Z");
        assert_eq!(k["protocol"], "SPDY/3.1");
        assert_eq!(k["subprotocols"], json!(["v5.channel.k8s.io"]));
        assert_eq!(k["impersonated"], json!({"user": "alice", "uid": "alice-uid", "groups": groups}));
        assert_eq!(k["command"], json!(["sh", "-c", "id"]));
        assert_eq!(k["failMode"], "closed");
        assert_eq!(k["user"], json!({"name": "", "sourceAddress": "192.0.2.1"}));
        assert_eq!(h["env"], json!({"TERM": "xterm-256color"}), "a terminal session");
        let plain = SessionRequest { tty: false, ..request.clone() };
        let h = header(&HeaderContext {
            request: &plain,
            impersonated: None,
            id: "s-2",
            protocol: "SPDY/3.1",
            offered: &[],
            user: None,
            source: "192.0.2.1",
            proxy_id: "p1",
            started,
            fail: Default::default(),
        });
        assert_eq!((&h["env"], &h["kubetape"]["impersonated"]), (&json!({}), &Value::Null), "no terminal, no TERM");
    }

    #[test]
    fn events_become_lines_and_the_exit_comes_last() {
        let mut w = CastWriter::default();
        let euro = "€".as_bytes();
        let first = w.lines(
            1.5,
            vec![
                TapEvent::Resize(TerminalSize { width: 120, height: 40 }),
                TapEvent::Output { stream: asciicast::STDOUT, data: [b"a".as_slice(), &euro[..1]].concat() },
                TapEvent::Exit(3),
            ],
        );
        assert_eq!(first, "[1.500000, \"r\", \"120x40\"]\n[1.500000, \"o\", \"a\"]\n", "a split UTF-8 sequence is held back");
        let second = w.lines(2.0, vec![TapEvent::Output { stream: asciicast::STDOUT, data: euro[1..].to_vec() }, TapEvent::Failure("x".into())]);
        assert_eq!(second, "[2.000000, \"o\", \"€\"]\n[2.000000, \"m\", \"error:x\"]\n");
        let tail = w.lines(2.5, vec![TapEvent::Output { stream: asciicast::STDERR, data: euro[..2].to_vec() }]);
        assert_eq!(tail, "");
        let end = w.finish(3.0);
        // An unfinished sequence is shown as U+FFFD, its bytes kept in a `v` event.
        assert_eq!(end, "[3.000000, \"v\", \"stderr:4oI=\"]\n[3.000000, \"e\", \"\u{fffd}\"]\n[3.000000, \"m\", \"exit:3\"]\n");
        assert_eq!(w.exit_code(), Some(3));
        assert_eq!(w.failure(), Some("x"), "not a Status: kept as it came");
        w.lines(4.0, vec![TapEvent::Failure(r#"{"status":"Failure","message":"exec: \"nope\": not found"}"#.into())]);
        assert_eq!(w.failure(), Some("exec: \"nope\": not found"), "a Status: its message");
    }

    #[test]
    fn padded_markers_are_exactly_as_long_as_the_gap_and_valid_lines() {
        for len in [21, 30, 64, 300] {
            let m = padded_marker(len, 12.5, "kubetape: 300 bytes were not recorded").expect("fits");
            assert_eq!(m.len(), len);
            let v: Value = serde_json::from_slice(&m).expect("one JSON event line");
            assert_eq!((v[0].as_f64(), v[1].as_str()), (Some(12.5), Some("m")));
        }
        assert_eq!(padded_marker(20, 12.5, "x"), None, "an empty marker needs 21 bytes here");
        assert_eq!(last_time(b"{\"version\":2}\n[0.5, \"o\", \"a\"]\n[1.25, \"o\", \"b\"]\n"), 1.25);
        assert_eq!(last_time(b"{\"version\":2}\n"), 0.0);
    }
}
