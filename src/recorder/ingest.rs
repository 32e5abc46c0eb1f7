//! The recorder's two write streams, each a WebSocket of frames from a proxy: one
//! session's recording, and a proxy's API events. What a session frame may be depends
//! only on where the stream stands ([`Stage`], as rustls's `Expect*` states), so
//! [`Stage::on_frame`] is pure and says what to do; the handlers here do it (store,
//! sync, acknowledge, close). Both acknowledge only what is durable, once per batch of
//! frames read together (group commit, see `websocket::FrameHandler::drained`).

use std::io::{self, Write};
use std::time::Instant;

use serde_json::Value;

use super::live::Publisher;
use super::metrics::Metrics;
use super::{reply, State, ACK_INTERVAL, HAND_OFF_WAIT, SESSION_IDLE_LIMIT};
use crate::net::conn::{Input, WriteHalf};
use crate::net::websocket::{self, Ended, Flow, FrameHandler};
use crate::record::protocol::{valid_id, Ack, ClientMessage, Outcome, SessionMeta, Status, EVENTS_SUBPROTOCOL, SUBPROTOCOL};
use crate::storage::fs::SessionFile;
use crate::storage::Recordings;
use crate::wire::http::RequestHead;
use crate::wire::status;
use crate::wire::time::now_rfc3339 as now;
use crate::wire::ws::{self, Frame};

/// The largest gap a resumed session may have (a marker line that long is written):
/// what a lost recorder had acknowledged but not uploaded, a flush interval of output
/// at most; a writer claiming more is refused.
const MAX_RESUME_GAP: usize = 256 * 1024 * 1024;

/// Why a stream ended before its end: logged, and sent to the proxy in the close frame.
#[derive(Debug, PartialEq, Eq)]
struct Failure(String);

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            // A frame that breaks RFC 6455 (`wire::ws` says how).
            io::ErrorKind::InvalidData => Failure(e.to_string()),
            _ => Failure(format!("reading from the proxy: {e}")),
        }
    }
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Failure(why)
    }
}

impl From<&str> for Failure {
    fn from(why: &str) -> Self {
        Failure(why.to_string())
    }
}

/// Answers a WebSocket upgrade for `subprotocol`; false (with a 400) otherwise.
fn accept(head: &RequestHead, out: &mut WriteHalf, subprotocol: &str) -> bool {
    match websocket::accept(head, &[subprotocol]) {
        Ok((resp, _)) => out.write_all(&resp.encode()).is_ok(),
        Err(_) => {
            let _ = reply(out, 400, &status::failure(400, &format!("expected a WebSocket upgrade with subprotocol {subprotocol}")));
            false
        }
    }
}

fn send_ack(out: &mut WriteHalf, acked: u64) -> io::Result<()> {
    out.write_all(&ws::encode_frame(true, ws::OP_TEXT, None, serde_json::to_string(&Ack { acked }).unwrap_or_default().as_bytes()))
}

// ---- sessions ----

/// Where a session's stream stands.
#[derive(Debug, PartialEq, Eq)]
enum Stage {
    ExpectStart,
    Recording,
}

/// What a session frame asks the recorder to do.
#[derive(Debug, PartialEq)]
enum Step {
    Create { id: String, header: Value, resume: Option<u64> },
    Append(Vec<u8>),
    Pong(Vec<u8>),
    Finish { status: Status, exit_code: Option<i32>, reason: Option<String> },
    Ignore,
}

impl Stage {
    fn on_frame(&mut self, frame: Frame) -> Result<Step, Failure> {
        match frame.opcode {
            ws::OP_TEXT => {
                let msg = serde_json::from_slice::<ClientMessage>(&frame.payload).map_err(|e| format!("bad message: {e}"))?;
                match (&*self, msg) {
                    (Stage::ExpectStart, ClientMessage::Start { id, header, resume }) => {
                        if !valid_id(&id) {
                            return Err(format!("session id {id:?} is not valid").into());
                        }
                        *self = Stage::Recording;
                        Ok(Step::Create { id, header, resume })
                    }
                    (Stage::ExpectStart, ClientMessage::End { .. }) => Err("end before start".into()),
                    (Stage::Recording, ClientMessage::Start { .. }) => Err("a second start".into()),
                    (Stage::Recording, ClientMessage::End { outcome, exit_code, reason }) => {
                        let status = if outcome == Outcome::Complete { Status::Complete } else { Status::Truncated };
                        Ok(Step::Finish { status, exit_code, reason })
                    }
                }
            }
            ws::OP_BINARY | ws::OP_CONTINUATION if *self == Stage::ExpectStart => Err("events before start".into()),
            ws::OP_BINARY | ws::OP_CONTINUATION => Ok(Step::Append(frame.payload)),
            ws::OP_PING => Ok(Step::Pong(frame.payload)),
            ws::OP_CLOSE => Err("the proxy closed the session without an end".into()),
            _ => Ok(Step::Ignore),
        }
    }
}

/// One session being received.
struct SessionIngest<'a> {
    state: &'a State,
    out: WriteHalf,
    writer: String,
    peer: &'a str,
    stage: Stage,
    file: Option<SessionFile>,
    /// Tells followers what has become durable; set with `file`.
    live: Option<Publisher<'a>>,
    /// Appended since the last sync.
    unsynced: bool,
    /// The recorder is going away and asked the proxy to continue elsewhere.
    handed_off: bool,
    /// Continued here with bytes missing (a marker stands for them): it ends truncated.
    gap: Option<String>,
    /// The spool was full when this fail-open session started: its output is
    /// acknowledged but not kept, and it ends truncated saying why.
    not_kept: Option<(String, u64)>,
    last_ack: Instant,
    last_data: Instant,
}

/// A storage error, counted, as the stream's failure.
fn stored<T, E: std::fmt::Display>(metrics: &Metrics, r: Result<T, E>) -> Result<T, Failure> {
    r.map_err(|e| {
        metrics.storage_error();
        Failure(format!("storage: {e}"))
    })
}

impl SessionIngest<'_> {
    fn create(&mut self, id: String, header: Value, resume: Option<u64>) -> Result<(), Failure> {
        if let Some(full) = self.state.s3.as_ref().and_then(|s3| s3.spool_full()) {
            // A fail-closed session must not run unrecorded: refused before it starts
            // (the proxy tells the user this reason). A fail-open one runs, its
            // recording kept as far as its header and marked truncated.
            if header.pointer("/kubetape/failMode").and_then(Value::as_str) == Some("closed") {
                log::warn!("fail-closed session refused id={id} reason={full}");
                return Err(Failure(full));
            }
            log::warn!("fail-open session not kept id={id} reason={full}");
            self.not_kept = Some((full, 0));
        }
        let started = Instant::now();
        let m = &self.state.metrics;
        let (file, from) = match resume {
            None => {
                let meta = self.new_meta(&id, header.get("kubetape").cloned().unwrap_or(Value::Null), now());
                (stored(m, self.state.store.create(meta, format!("{header}\n").as_bytes()))?, "start")
            }
            Some(at) => {
                let (file, from, gap) = self.resume(&id, &header, at)?;
                self.gap = gap;
                (file, from)
            }
        };
        let acked = file.meta.bytes;
        m.synced(acked, started.elapsed());
        m.session_started();
        log::info!("recording started id={id} writer={} peer={} from={from} bytes={acked}", self.writer, self.peer);
        self.live = Some(self.state.live.start(&id, file.durable_lines()));
        send_ack(&mut self.out, acked)?;
        self.last_ack = Instant::now();
        self.file = Some(file);
        Ok(())
    }

    fn new_meta(&self, id: &str, session: Value, started: String) -> SessionMeta {
        SessionMeta {
            id: id.to_string(),
            status: Status::Recording,
            bytes: 0,
            exit_code: None,
            reason: None,
            started,
            ended: None,
            writer: self.writer.clone(),
            session,
            recorder: None,
        }
    }

    /// Takes up a session that was being recorded elsewhere (another recorder that went
    /// away, or this one before a restart) at stream offset `at`: its bytes come from
    /// this spool, else from the bucket; any it cannot find become a marker line of the
    /// same length, so the proxy's offsets still hold. Only the proxy that started it,
    /// with the same header, may continue it.
    fn resume(&self, id: &str, header: &Value, at: u64) -> Result<(SessionFile, &'static str, Option<String>), Failure> {
        let context = header.get("kubetape").cloned().unwrap_or(Value::Null);
        let check = |m: &SessionMeta| -> Result<(), Failure> {
            if m.writer != self.writer || m.session != context {
                return Err(format!("session {id} cannot be continued: its recording has another writer or header").into());
            }
            Ok(())
        };
        if self.state.live.get(id).is_some_and(|p| !p.seen().ended) {
            return Err(format!("session {id} is being recorded on another connection").into());
        }
        let store = &self.state.store;
        let m = &self.state.metrics;
        let found = |r: crate::error::Result<Option<(SessionMeta, crate::storage::Cast)>>| -> Result<Option<(SessionMeta, Vec<u8>)>, Failure> {
            match stored(m, r)? {
                Some((meta, cast)) => {
                    check(&meta)?;
                    Ok(Some((meta, stored(m, cast.into_bytes())?)))
                }
                None => Ok(None),
            }
        };
        let local = found(store.open(id))?.map(|p| (p, "spool"));
        let remote = match &self.state.s3 {
            Some(s3) => {
                let bucket = s3.store().ok_or_else(|| Failure(format!("session {id} cannot be continued before the S3 bucket is reached")))?;
                found(bucket.open(id))?.map(|p| (p, "bucket"))
            }
            None => None,
        };
        // The longer is the more complete: each is a prefix of the same stream.
        let (prior, from) = match (local, remote) {
            (Some(l), Some(r)) => Some(if r.0 .1.len() > l.0 .1.len() { r } else { l }),
            (l, r) => l.or(r),
        }
        .map_or((None, "header"), |(p, from)| (Some(p), from));
        if prior.as_ref().is_some_and(|(m, _)| m.status == Status::Complete) {
            return Err(format!("session {id} cannot be continued: its recording is complete").into());
        }
        let header_line = format!("{header}\n").into_bytes();
        let (meta, mut bytes) = prior.unwrap_or_else(|| {
            // Nothing of it here or in the bucket: its header, and its start day from it
            // (`startTime` is UTC, RFC 3339).
            let started = context.get("startTime").and_then(Value::as_str).and_then(|t| t.get(..19)).map(|t| format!("{t}Z")).unwrap_or_else(now);
            (self.new_meta(id, context.clone(), started), header_line.clone())
        });
        let at_len = usize::try_from(at).map_err(|_| Failure::from("resume offset too large"))?;
        if at_len < header_line.len() || at_len > bytes.len() + MAX_RESUME_GAP {
            return Err(format!("session {id} cannot be continued at byte {at}: it has {} here", bytes.len()).into());
        }
        bytes.truncate(at_len);
        let mut gap = None;
        if bytes.len() < at_len {
            let missing = at_len - bytes.len();
            let lost = format!("{missing} bytes of this session were lost with a recorder");
            let text = format!("kubetape: {lost}");
            gap = Some(format!("{lost} (a marker stands for them)"));
            let marker = crate::recording::cast::padded_marker(missing, crate::recording::cast::last_time(&bytes), &text)
                .ok_or_else(|| Failure(format!("session {id} cannot be continued at {at}: a gap of {missing} bytes")))?;
            log::warn!("recording continued with a gap id={id} missing_bytes={missing}");
            bytes.extend(marker);
        }
        // What this spool had of it is in `bytes` now; the uploader does not remove
        // the new files meanwhile (see `remove_uploaded`).
        let _files = crate::net::sync::lock(&self.state.spool_files);
        stored(m, store.remove_by_id(id))?;
        let meta = SessionMeta { status: Status::Recording, bytes: 0, exit_code: None, reason: None, ended: None, recorder: None, ..meta };
        let file = stored(m, store.create(meta, &bytes))?;
        if let Some(s3) = &self.state.s3 {
            // This recorder's before the proxy sends more: nobody adopts it meanwhile.
            stored(m, s3.announce(&file.meta, &file.day()))?;
        }
        Ok((file, from, gap))
    }

    fn finish(&mut self, status: Status, exit_code: Option<i32>, reason: Option<String>) -> Result<(), Failure> {
        let Some(f) = self.file.as_mut() else { return Err("end before start".into()) };
        let (status, reason) = match (&self.not_kept, &self.gap) {
            (Some((why, dropped)), _) => (Status::Truncated, Some(format!("{why}: the {dropped} bytes after the header were not kept"))),
            (None, Some(gap)) if status == Status::Complete => (Status::Truncated, Some(gap.clone())),
            _ => (status, reason),
        };
        stored(&self.state.metrics, f.finish(status, exit_code, reason.clone(), now()))?;
        self.state.metrics.session_ended(status);
        if let Some(live) = &self.live {
            live.end(f.meta.bytes);
        }
        log::info!("recording ended id={} status={status:?} bytes={} exit_code={exit_code:?} reason={}", f.meta.id, f.meta.bytes, reason.as_deref().unwrap_or("-"));
        // The recording is complete on disk; a proxy that has already hung up misses
        // only the courtesy of the last ack.
        let _ = send_ack(&mut self.out, f.meta.bytes + self.not_kept.as_ref().map_or(0, |(_, n)| *n));
        let _ = self.out.write_all(&ws::close_frame(1000, "", None));
        Ok(())
    }
}

impl FrameHandler for SessionIngest<'_> {
    type Error = Failure;

    fn on_frame(&mut self, frame: Frame) -> Result<Flow, Failure> {
        self.last_data = Instant::now();
        match self.stage.on_frame(frame)? {
            Step::Create { id, header, resume } => self.create(id, header, resume)?,
            Step::Append(data) => {
                let Some(f) = self.file.as_mut() else { return Err("events before start".into()) };
                if let Some((_, dropped)) = self.not_kept.as_mut() {
                    *dropped += data.len() as u64;
                } else {
                    stored(&self.state.metrics, f.append(&data))?;
                    if let Some(s3) = &self.state.s3 {
                        s3.stats.spool_bytes.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                self.unsynced = true;
            }
            Step::Pong(payload) => self.out.write_all(&ws::encode_frame(true, ws::OP_PONG, None, &payload))?,
            Step::Finish { status, exit_code, reason } => {
                self.finish(status, exit_code, reason)?;
                return Ok(Flow::Stop);
            }
            Step::Ignore => {}
        }
        Ok(Flow::Continue)
    }

    /// One fsync for everything read so far, then one ack; an idle session is still
    /// acknowledged every [`ACK_INTERVAL`], which tells the proxy the recorder lives.
    fn drained(&mut self) -> Result<(), Failure> {
        let going = self.state.hand_off.asked();
        if let Some(f) = self.file.as_mut() {
            if going || self.unsynced || self.last_ack.elapsed() >= ACK_INTERVAL {
                let before = f.meta.bytes;
                let started = Instant::now();
                let durable = stored(&self.state.metrics, f.sync())?;
                self.state.metrics.synced(durable - before, started.elapsed());
                if let Some(live) = &self.live {
                    live.publish(f.durable_lines());
                }
                // What was not kept is acknowledged too: the proxy must not wait on it.
                send_ack(&mut self.out, durable + self.not_kept.as_ref().map_or(0, |(_, n)| *n))?;
                self.unsynced = false;
                self.last_ack = Instant::now();
            }
        }
        if going {
            // Everything received is durable and acknowledged: the proxy resends from there.
            if let Some(f) = self.file.as_ref() {
                // Parked, it still acknowledges every second: the proxy must not take
                // the pause for a lost recorder and move before the bytes are uploaded.
                let hand_off = &self.state.hand_off;
                hand_off.park();
                let acked = f.meta.bytes + self.not_kept.as_ref().map_or(0, |(_, n)| *n);
                let parked = Instant::now();
                while !hand_off.wait_uploaded(ACK_INTERVAL) && parked.elapsed() < HAND_OFF_WAIT * 2 {
                    send_ack(&mut self.out, acked)?;
                }
            }
            let _ = self.out.write_all(&ws::close_frame(1001, "the recorder is shutting down: continue on another", None));
            self.handed_off = true;
            return Err("handed off".into());
        }
        if self.last_data.elapsed() > SESSION_IDLE_LIMIT {
            return Err("the proxy sent nothing for an hour".into());
        }
        Ok(())
    }
}

/// Receives one session: upgrade, header, event lines; acknowledges durable bytes. A
/// stream that ends without its end message leaves the recording truncated.
pub(super) fn session(state: &State, head: &RequestHead, mut input: Input, mut out: WriteHalf, writer: String, peer: &str) {
    if !accept(head, &mut out, SUBPROTOCOL) {
        return;
    }
    let opened = Instant::now();
    let mut s = SessionIngest {
        state,
        out,
        writer,
        peer,
        stage: Stage::ExpectStart,
        file: None,
        live: None,
        unsynced: false,
        handed_off: false,
        gap: None,
        not_kept: None,
        last_ack: opened,
        last_data: opened,
    };
    let failure = match websocket::read_frames(&mut input, Some(ACK_INTERVAL), &mut s) {
        Ok(Ended::Stopped) => return,
        Ok(Ended::Closed) => Failure("the proxy closed the connection without an end".into()),
        Err(_) if s.handed_off => {
            log::info!("recording handed off id={} bytes={}", s.file.as_ref().map_or("-", |f| f.meta.id.as_str()), s.file.as_ref().map_or(0, |f| f.meta.bytes));
            return;
        }
        Err(f) => f,
    };
    log::warn!("recording stream failed writer={} peer={peer} error={}", s.writer, failure.0);
    let _ = s.out.write_all(&ws::close_frame(1011, &failure.0, None));
    if let Some(f) = s.file.as_mut() {
        if f.finish(Status::Truncated, None, Some(failure.0), now()).is_ok() {
            state.metrics.session_ended(Status::Truncated);
            if let Some(live) = &s.live {
                live.end(f.meta.bytes);
            }
        }
    }
}

// ---- API events ----

/// A proxy's event stream: NDJSON lines in binary frames.
struct EventsIngest<'a> {
    state: &'a State,
    out: WriteHalf,
    /// Where the log ends after the frames not yet synced, and how many events they hold.
    written: Option<u64>,
    unsynced: u64,
    acked: u64,
}

impl EventsIngest<'_> {
    /// Tells the proxy the events cannot be stored (it counts them as lost).
    fn storage<T>(&mut self, r: io::Result<T>) -> Result<T, Failure> {
        r.map_err(|e| {
            let _ = self.out.write_all(&ws::close_frame(1011, "event storage failed", None));
            Failure(format!("event storage failed: {e}"))
        })
    }
}

impl FrameHandler for EventsIngest<'_> {
    type Error = Failure;

    fn on_frame(&mut self, frame: Frame) -> Result<Flow, Failure> {
        match frame.opcode {
            ws::OP_BINARY => {
                self.unsynced += check_event_lines(&frame.payload)?;
                let r = self.state.events.write(&frame.payload);
                self.written = Some(self.storage(r)?);
            }
            ws::OP_CLOSE => return Ok(Flow::Stop),
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn drained(&mut self) -> Result<(), Failure> {
        let Some(pos) = self.written.take() else { return Ok(()) };
        let r = self.state.events.sync_to(pos);
        if self.storage(r)? {
            self.state.metrics.event_log_synced();
        }
        self.state.metrics.events(self.unsynced);
        self.acked += std::mem::take(&mut self.unsynced);
        send_ack(&mut self.out, self.acked)?;
        Ok(())
    }
}

/// Receives a proxy's API events. Every frame read so far is appended to the event
/// log, made durable (group commit across connections too) and acknowledged by count.
pub(super) fn events(state: &State, head: &RequestHead, mut input: Input, mut out: WriteHalf, peer: &str) {
    if !accept(head, &mut out, EVENTS_SUBPROTOCOL) {
        return;
    }
    let mut e = EventsIngest { state, out, written: None, unsynced: 0, acked: 0 };
    if let Err(failure) = websocket::read_frames(&mut input, None, &mut e) {
        log::warn!("event stream failed peer={peer} error={}", failure.0);
    }
}

/// A cheap shape check of a batch (writers are authenticated proxies, and the query
/// side skips any line that does not parse); returns the number of events.
fn check_event_lines(payload: &[u8]) -> Result<u64, Failure> {
    if !payload.ends_with(b"\n") {
        return Err("an event frame must hold whole lines".into());
    }
    let mut count = 0;
    for line in payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        if line.first() != Some(&b'{') || line.last() != Some(&b'}') || std::str::from_utf8(line).is_err() {
            return Err("an event is not a JSON object on one line".into());
        }
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(msg: &str) -> Frame {
        Frame { fin: true, opcode: ws::OP_TEXT, payload: msg.as_bytes().to_vec() }
    }

    fn binary(data: &[u8]) -> Frame {
        Frame { fin: true, opcode: ws::OP_BINARY, payload: data.to_vec() }
    }

    const START: &str = r#"{"type":"start","id":"s1","header":{"version":2}}"#;
    const END: &str = r#"{"type":"end","outcome":"truncated","exitCode":3,"reason":"lost"}"#;

    #[test]
    fn each_stage_allows_only_its_frames() {
        let fail = |why: &str| Err(Failure(why.into()));
        let cases: Vec<(Stage, Frame, Result<Step, Failure>, Stage)> = vec![
            (Stage::ExpectStart, text(START), Ok(Step::Create { id: "s1".into(), header: serde_json::json!({"version": 2}), resume: None }), Stage::Recording),
            (Stage::ExpectStart, binary(b"[0.1,\"o\",\"x\"]\n"), fail("events before start"), Stage::ExpectStart),
            (Stage::ExpectStart, text(END), fail("end before start"), Stage::ExpectStart),
            (Stage::ExpectStart, text(r#"{"type":"start","id":"../x","header":{}}"#), fail(r#"session id "../x" is not valid"#), Stage::ExpectStart),
            (Stage::Recording, binary(b"line\n"), Ok(Step::Append(b"line\n".to_vec())), Stage::Recording),
            (Stage::Recording, Frame { fin: true, opcode: ws::OP_CONTINUATION, payload: b"more".to_vec() }, Ok(Step::Append(b"more".to_vec())), Stage::Recording),
            (Stage::Recording, text(START), fail("a second start"), Stage::Recording),
            (Stage::Recording, text(END), Ok(Step::Finish { status: Status::Truncated, exit_code: Some(3), reason: Some("lost".into()) }), Stage::Recording),
            (Stage::Recording, Frame { fin: true, opcode: ws::OP_PING, payload: b"p".to_vec() }, Ok(Step::Pong(b"p".to_vec())), Stage::Recording),
            (Stage::Recording, Frame { fin: true, opcode: ws::OP_PONG, payload: vec![] }, Ok(Step::Ignore), Stage::Recording),
            (Stage::Recording, Frame { fin: true, opcode: ws::OP_CLOSE, payload: vec![] }, fail("the proxy closed the session without an end"), Stage::Recording),
        ];
        for (mut stage, frame, want, after) in cases {
            let what = format!("{stage:?} + {:?}", String::from_utf8_lossy(&frame.payload));
            assert_eq!(stage.on_frame(frame), want, "{what}");
            assert_eq!(stage, after, "{what}");
        }
        let mut stage = Stage::ExpectStart;
        assert!(stage.on_frame(text("{not json")).is_err_and(|f| f.0.starts_with("bad message: ")));
    }

    #[test]
    fn event_batches_must_be_whole_json_lines() {
        assert_eq!(check_event_lines(b"{\"a\":1}\n{}\n"), Ok(2));
        assert_eq!(check_event_lines(b"{}"), Err(Failure("an event frame must hold whole lines".into())));
        assert_eq!(check_event_lines(b"[1]\n"), Err(Failure("an event is not a JSON object on one line".into())));
    }
}
