//! Taps: read a copy of each direction of an exec/attach stream and say what happened
//! in it (output, resizes, the exit status), over SPDY/3.1 or WebSocket. No I/O.
//!
//! Each direction has its own tap; the two share what the client's SYN_STREAMs say
//! about SPDY stream ids. A tap never holds bytes back from the session: it parses
//! what it is given, streaming frame payloads as they arrive, and keeps only frame
//! heads and control frames until they are whole. An error in the client's direction
//! is a protocol violation no real kubectl commits (the session ends); in the server's
//! direction it is a frame the tap cannot parse (the fail mode decides).
//!
//! The client-side tap holds the client to what the kubelet accepts, so the tap and
//! the kubelet can never disagree about which stream carries what: SPDY stream ids
//! are odd, rising and never reused (spdystream), each stream type is opened once and
//! must be one the remote-command protocol defines; WebSocket client frames are
//! masked binary frames on the stdin, resize or close channels.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::net::sync::lock;

use crate::wire::channel::{self, TerminalSize};
use crate::wire::spdy::{self, Frame, FrameHead, FrameKind, HeaderInflater, SpdyError};
use crate::wire::ws::{self, WsError};

/// Control frames (header blocks) larger than this are refused.
const MAX_CONTROL_FRAME: usize = 1024 * 1024;
/// A resize or error-channel message larger than this is not one.
const MAX_SMALL_MESSAGE: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapEvent {
    Output {
        stream: u8,
        data: Vec<u8>,
    },
    Resize(TerminalSize),
    Exit(i32),
    /// The error channel carried a Status without an exit code.
    Failure(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

/// Why a tap stopped: a frame the wire layer cannot parse, a limit, or a rule of the
/// remote-command protocol the client broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapError {
    Spdy(SpdyError),
    Ws(WsError),
    /// A SPDY control frame longer than [`MAX_CONTROL_FRAME`]; its length.
    ControlFrameTooLarge(usize),
    /// An error-channel message longer than [`MAX_SMALL_MESSAGE`].
    MessageTooLarge,
    /// What the client may not do (the rules in this module's comment).
    Violation(String),
}

impl fmt::Display for TapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TapError::Spdy(e) => e.fmt(f),
            TapError::Ws(e) => e.fmt(f),
            TapError::ControlFrameTooLarge(len) => write!(f, "SPDY control frame of {len} bytes"),
            TapError::MessageTooLarge => write!(f, "control message exceeds {MAX_SMALL_MESSAGE} bytes"),
            TapError::Violation(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for TapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TapError::Spdy(e) => Some(e),
            TapError::Ws(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SpdyError> for TapError {
    fn from(e: SpdyError) -> Self {
        TapError::Spdy(e)
    }
}

impl From<WsError> for TapError {
    fn from(e: WsError) -> Self {
        TapError::Ws(e)
    }
}

pub trait Tap: Send {
    /// Parses a copy of bytes that flowed in this tap's direction.
    fn feed(&mut self, data: &[u8], events: &mut Vec<TapEvent>) -> Result<(), TapError>;
    /// Whether everything fed so far ends on a frame boundary, so a frame of ours may
    /// be written to the client without corrupting the stream.
    fn at_boundary(&self) -> bool;
    /// Frames that tell the client the session ends and why (server-to-client taps).
    fn goodbye(&self, message: &str) -> Vec<u8>;
    /// Shows every channel's payload, as it is parsed, to `observer` too.
    fn observe(&mut self, observer: Box<dyn Observer>);
}

/// Sees each channel's payload as a tap parses it, stdin included, without it becoming
/// a [`TapEvent`]: what a `kubectl cp`'s tar names (`recording::transfer`). It cannot
/// fail, so whatever it does, the session and its recording go on unchanged.
pub trait Observer: Send {
    fn observe(&mut self, channel: u8, data: &[u8]);
}

/// Collects a small message (resize, error Status) split over frames.
#[derive(Default)]
struct Small(Vec<u8>);

impl Small {
    fn push(&mut self, data: &[u8]) -> Result<(), TapError> {
        if self.0.len() + data.len() > MAX_SMALL_MESSAGE {
            return Err(TapError::MessageTooLarge);
        }
        self.0.extend_from_slice(data);
        Ok(())
    }
}

fn status_event(status: &[u8]) -> Option<TapEvent> {
    if status.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(match channel::exit_code(status) {
        Some(code) => TapEvent::Exit(code),
        None => TapEvent::Failure(String::from_utf8_lossy(status).into_owned()),
    })
}

/// Complete resize messages from the front of `buf`; a partial one stays.
fn take_resizes(buf: &mut Vec<u8>, events: &mut Vec<TapEvent>) {
    events.extend(channel::take_resizes(buf).into_iter().map(TapEvent::Resize));
}

// ---- SPDY ----

/// What the client's SYN_STREAMs said: stream id → channel, and the last id opened.
#[derive(Default)]
pub struct SpdyStreams(Mutex<StreamTable>);

#[derive(Default)]
struct StreamTable {
    channels: HashMap<u32, u8>,
    last_id: u32,
}

impl SpdyStreams {
    fn get(&self, id: u32) -> Option<u8> {
        lock(&self.0).channels.get(&id).copied()
    }

    /// Records a stream the client opened, or says which rule it breaks.
    fn open(&self, id: u32, stream_type: Option<&str>) -> Result<(), TapError> {
        let mut t = lock(&self.0);
        if id % 2 == 0 {
            return Err(TapError::Violation(format!("client opened SPDY stream {id}, an even (server) id")));
        }
        if id <= t.last_id {
            return Err(TapError::Violation(format!("client opened SPDY stream {id} after {}: ids must rise and are never reused", t.last_id)));
        }
        let Some(ch) = stream_type.and_then(channel::channel_for_stream_type) else {
            return Err(TapError::Violation(format!("client opened SPDY stream {id} with stream type {stream_type:?}, which the remote-command protocol does not define")));
        };
        if t.channels.values().any(|c| *c == ch) {
            return Err(TapError::Violation(format!("client opened a second {:?} stream ({id})", stream_type.unwrap_or_default())));
        }
        t.last_id = id;
        t.channels.insert(id, ch);
        Ok(())
    }

    fn id_of(&self, ch: u8) -> Option<u32> {
        lock(&self.0).channels.iter().find(|(_, c)| **c == ch).map(|(id, _)| *id)
    }
}

pub struct SpdyTap {
    dir: Direction,
    streams: Arc<SpdyStreams>,
    inflater: HeaderInflater,
    at: SpdyAt,
    /// Bytes of an incomplete frame head, or of a control frame's payload.
    pending: Vec<u8>,
    error: Small,
    resize: Vec<u8>,
    observer: Option<Box<dyn Observer>>,
}

/// Where in the stream the next byte fed falls.
#[derive(Clone, Copy)]
enum SpdyAt {
    Head,
    /// A control frame's payload, collected whole.
    Control(FrameHead),
    /// A data frame's payload, passed on as it comes: bytes still to come, FIN.
    Data {
        stream_id: u32,
        left: usize,
        fin: bool,
    },
}

impl SpdyTap {
    pub fn pair() -> (SpdyTap, SpdyTap) {
        let streams = Arc::new(SpdyStreams::default());
        let tap = |dir| SpdyTap {
            dir,
            streams: streams.clone(),
            inflater: HeaderInflater::default(),
            at: SpdyAt::Head,
            pending: Vec::new(),
            error: Small::default(),
            resize: Vec::new(),
            observer: None,
        };
        (tap(Direction::ClientToServer), tap(Direction::ServerToClient))
    }

    fn data(&mut self, id: u32, payload: &[u8], fin: bool, events: &mut Vec<TapEvent>) -> Result<(), TapError> {
        let ch = self.streams.get(id);
        if let (Some(o), Some(ch)) = (&mut self.observer, ch) {
            o.observe(ch, payload);
        }
        match (self.dir, ch) {
            (Direction::ServerToClient, Some(ch @ (channel::STDOUT | channel::STDERR))) if !payload.is_empty() => {
                events.push(TapEvent::Output { stream: ch, data: payload.to_vec() });
            }
            (Direction::ServerToClient, Some(channel::ERROR)) => {
                self.error.push(payload)?;
                if fin {
                    events.extend(status_event(&std::mem::take(&mut self.error.0)));
                }
            }
            (Direction::ClientToServer, Some(channel::RESIZE)) => {
                self.resize.extend_from_slice(payload);
                // Whole messages first: the limit is on what is left, however the
                // stream was split.
                take_resizes(&mut self.resize, events);
                if self.resize.len() > MAX_SMALL_MESSAGE {
                    return Err(TapError::Violation("resize stream carries no JSON".into()));
                }
            }
            _ => {} // stdin is never recorded
        }
        Ok(())
    }

    fn control(&mut self, head: FrameHead, payload: &[u8], events: &mut Vec<TapEvent>) -> Result<(), TapError> {
        match spdy::parse_payload(head, payload)? {
            Frame::SynStream { stream_id, header_block, flags, .. } => {
                let headers = self.inflater.inflate(header_block)?;
                if self.dir == Direction::ClientToServer {
                    self.streams.open(stream_id, spdy::header(&headers, "streamtype"))?;
                }
                if flags & spdy::FLAG_FIN != 0 {
                    self.data(stream_id, &[], true, events)?;
                }
            }
            Frame::SynReply { header_block, .. } | Frame::Headers { header_block, .. } => {
                // Every header block is inflated, in order, to keep zlib in step.
                self.inflater.inflate(header_block)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Moves bytes from the front of `data` into `buf` until it holds `want`; whether it does.
fn fill(buf: &mut Vec<u8>, want: usize, data: &mut &[u8]) -> bool {
    let (take, rest) = data.split_at(want.saturating_sub(buf.len()).min(data.len()));
    buf.extend_from_slice(take);
    *data = rest;
    buf.len() >= want
}

impl Tap for SpdyTap {
    fn feed(&mut self, mut data: &[u8], events: &mut Vec<TapEvent>) -> Result<(), TapError> {
        while !data.is_empty() {
            match self.at {
                SpdyAt::Data { stream_id, left, fin } => {
                    let (chunk, rest) = data.split_at(left.min(data.len()));
                    data = rest;
                    let last = chunk.len() == left;
                    self.at = if last { SpdyAt::Head } else { SpdyAt::Data { stream_id, left: left - chunk.len(), fin } };
                    self.data(stream_id, chunk, fin && last, events)?;
                }
                SpdyAt::Head => {
                    if !fill(&mut self.pending, spdy::FRAME_HEAD_LEN, &mut data) {
                        continue;
                    }
                    let Some(head) = spdy::parse_head(&self.pending)? else { continue };
                    self.pending.clear();
                    match head.kind {
                        FrameKind::Data { stream_id } if head.payload_len == 0 => self.data(stream_id, &[], head.fin(), events)?,
                        FrameKind::Data { stream_id } => self.at = SpdyAt::Data { stream_id, left: head.payload_len, fin: head.fin() },
                        FrameKind::Control(_) if head.payload_len > MAX_CONTROL_FRAME => return Err(TapError::ControlFrameTooLarge(head.payload_len)),
                        FrameKind::Control(_) if head.payload_len == 0 => self.control(head, &[], events)?,
                        FrameKind::Control(_) => self.at = SpdyAt::Control(head),
                    }
                }
                SpdyAt::Control(head) => {
                    if fill(&mut self.pending, head.payload_len, &mut data) {
                        self.at = SpdyAt::Head;
                        let payload = std::mem::take(&mut self.pending);
                        self.control(head, &payload, events)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn at_boundary(&self) -> bool {
        self.pending.is_empty() && matches!(self.at, SpdyAt::Head)
    }

    fn goodbye(&self, message: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(id) = self.streams.id_of(channel::ERROR) {
            out.extend(spdy::encode_data(id, spdy::FLAG_FIN, &channel::encode_status(&channel::failure_status(message))));
        }
        for ch in [channel::STDOUT, channel::STDERR] {
            if let Some(id) = self.streams.id_of(ch) {
                out.extend(spdy::encode_data(id, spdy::FLAG_FIN, &[]));
            }
        }
        out.extend(spdy::encode_goaway(0, 0));
        out
    }

    fn observe(&mut self, observer: Box<dyn Observer>) {
        self.observer = Some(observer);
    }
}

// ---- WebSocket ----

pub struct WsTap {
    dir: Direction,
    head: Vec<u8>,
    /// Inside a frame's payload.
    frame: Option<WsFrame>,
    /// The channel of the message in progress (first byte of its first frame).
    message: Option<Option<u8>>,
    error: Small,
    resize: Vec<u8>,
    observer: Option<Box<dyn Observer>>,
}

struct WsFrame {
    left: u64,
    mask: Option<[u8; 4]>,
    offset: usize,
    data: bool,
    fin: bool,
}

impl WsTap {
    pub fn pair() -> (WsTap, WsTap) {
        let tap = |dir| WsTap { dir, head: Vec::new(), frame: None, message: None, error: Small::default(), resize: Vec::new(), observer: None };
        (tap(Direction::ClientToServer), tap(Direction::ServerToClient))
    }

    fn payload(&mut self, mut bytes: Vec<u8>, events: &mut Vec<TapEvent>) -> Result<(), TapError> {
        let ch = match self.message {
            Some(Some(ch)) => ch,
            Some(None) | None => {
                if bytes.is_empty() {
                    return Ok(());
                }
                let ch = bytes.remove(0);
                if self.dir == Direction::ClientToServer && !matches!(ch, channel::STDIN | channel::RESIZE | channel::CLOSE) {
                    return Err(TapError::Violation(format!("client wrote to channel {ch}, which only the server writes or no protocol defines")));
                }
                self.message = Some(Some(ch));
                ch
            }
        };
        if let Some(o) = &mut self.observer {
            o.observe(ch, &bytes);
        }
        match (self.dir, ch) {
            (Direction::ServerToClient, channel::STDOUT | channel::STDERR) if !bytes.is_empty() => {
                events.push(TapEvent::Output { stream: ch, data: bytes });
            }
            (Direction::ServerToClient, channel::ERROR) => self.error.push(&bytes)?,
            (Direction::ClientToServer, channel::RESIZE) => {
                self.resize.extend_from_slice(&bytes);
                take_resizes(&mut self.resize, events);
                if self.resize.len() > MAX_SMALL_MESSAGE {
                    return Err(TapError::Violation("resize channel carries no JSON".into()));
                }
            }
            _ => {} // stdin and v5 close signals are never recorded
        }
        Ok(())
    }

    fn end_message(&mut self, events: &mut Vec<TapEvent>) {
        if self.message == Some(Some(channel::ERROR)) {
            events.extend(status_event(&std::mem::take(&mut self.error.0)));
        }
        self.message = None;
    }
}

impl Tap for WsTap {
    fn feed(&mut self, mut data: &[u8], events: &mut Vec<TapEvent>) -> Result<(), TapError> {
        while !data.is_empty() {
            if let Some(f) = &mut self.frame {
                let n = (f.left.min(data.len() as u64)) as usize;
                let mut chunk = data[..n].to_vec();
                if let Some(key) = f.mask {
                    ws::apply_mask(&mut chunk, key, f.offset);
                }
                f.offset += n;
                f.left -= n as u64;
                data = &data[n..];
                let (done, is_data, fin) = (f.left == 0, f.data, f.fin);
                if done {
                    self.frame = None;
                }
                if is_data {
                    self.payload(chunk, events)?;
                    if done && fin {
                        self.end_message(events);
                    }
                }
                continue;
            }
            // Grow the head one byte at a time until it parses: heads are 2 to 14 bytes.
            self.head.push(data[0]);
            data = &data[1..];
            let Some(head) = ws::parse_head(&self.head)? else { continue };
            self.head.clear();
            let is_data = head.opcode <= ws::OP_BINARY;
            if self.dir == Direction::ClientToServer && head.mask.is_none() {
                return Err(TapError::Violation("client sent an unmasked WebSocket frame".into()));
            }
            if is_data && head.opcode != ws::OP_CONTINUATION {
                if head.opcode == ws::OP_TEXT {
                    return Err(TapError::Violation("text frames (base64 channel protocols) are not recorded".into()));
                }
                if self.message.is_some() {
                    return Err(TapError::Violation("a new WebSocket message inside a fragmented one".into()));
                }
                self.message = Some(None);
            }
            if is_data && head.opcode == ws::OP_CONTINUATION && self.message.is_none() {
                return Err(TapError::Violation("continuation frame outside a message".into()));
            }
            if head.payload_len == 0 {
                if is_data && head.fin {
                    self.end_message(events);
                }
                continue;
            }
            self.frame = Some(WsFrame { left: head.payload_len, mask: head.mask, offset: 0, data: is_data, fin: head.fin });
        }
        Ok(())
    }

    fn at_boundary(&self) -> bool {
        self.head.is_empty() && self.frame.is_none() && self.message.is_none()
    }

    fn goodbye(&self, message: &str) -> Vec<u8> {
        let status = channel::ws_message(channel::ERROR, &channel::encode_status(&channel::failure_status(message)));
        let mut out = ws::encode_frame(true, ws::OP_BINARY, None, &status);
        // A normal closure: client-go then reads the error channel to its end and prints
        // the Status; any other code makes it report the close code instead.
        out.extend(ws::close_frame(1000, "session ended by kubetape", None));
        out
    }

    fn observe(&mut self, observer: Box<dyn Observer>) {
        self.observer = Some(observer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::spdy::{encode_data, encode_syn_reply, encode_syn_stream, HeaderDeflater};
    use crate::wire::testutil::for_each_split;

    /// Feeds `stream` in pieces and returns the events, merging adjacent output.
    fn collect(tap: &mut dyn Tap, pieces: &[&[u8]]) -> Vec<TapEvent> {
        let mut events = Vec::new();
        for p in pieces {
            tap.feed(p, &mut events).unwrap();
        }
        let mut merged: Vec<TapEvent> = Vec::new();
        for e in events {
            match (merged.last_mut(), e) {
                (Some(TapEvent::Output { stream: a, data: d }), TapEvent::Output { stream: b, data }) if *a == b => d.extend(data),
                (_, e) => merged.push(e),
            }
        }
        merged
    }

    fn spdy_session() -> (Vec<u8>, Vec<u8>) {
        let mut client_z = HeaderDeflater::default();
        let mut server_z = HeaderDeflater::default();
        let mut up = Vec::new();
        let mut down = Vec::new();
        for (id, t) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr"), (9, "resize")] {
            up.extend(encode_syn_stream(id, 0, &client_z.deflate(&[("streamtype", t)])));
            down.extend(encode_syn_reply(id, 0, &server_z.deflate(&[])));
        }
        up.extend(encode_data(3, 0, b"secret password\n"));
        up.extend(encode_data(9, 0, br#"{"Width":120,"Height":40}"#));
        down.extend(encode_data(5, 0, "héllo ".as_bytes()));
        down.extend(encode_data(7, 0, b"oops"));
        down.extend(encode_data(5, 0, b"world"));
        down.extend(encode_data(1, 0, &channel::encode_status(&channel::exit_status(3, &[]))));
        down.extend(encode_data(1, spdy::FLAG_FIN, &[]));
        (up, down)
    }

    #[test]
    fn spdy_records_output_resize_and_exit_but_never_stdin() {
        let (up, down) = spdy_session();
        let (mut c, mut s) = SpdyTap::pair();
        assert_eq!(collect(&mut c, &[&up]), vec![TapEvent::Resize(TerminalSize { width: 120, height: 40 })]);
        let want = vec![
            TapEvent::Output { stream: 1, data: "héllo ".as_bytes().to_vec() },
            TapEvent::Output { stream: 2, data: b"oops".to_vec() },
            TapEvent::Output { stream: 1, data: b"world".to_vec() },
            TapEvent::Exit(3),
        ];
        for_each_split(&down, |pieces| {
            let (mut c2, mut s2) = SpdyTap::pair();
            collect(&mut c2, &[&up]);
            assert_eq!(collect(&mut s2, pieces), want);
            assert!(s2.at_boundary());
        });
        assert_eq!(collect(&mut s, &[&down]), want);
    }

    fn ws_session() -> (Vec<u8>, Vec<u8>) {
        let mask = Some([7, 1, 9, 3]);
        let mut up = ws::encode_frame(true, ws::OP_BINARY, mask, b"\x00secret");
        up.extend(ws::encode_frame(true, ws::OP_BINARY, mask, b"\x04{\"Width\":80,\"Height\":24}"));
        up.extend(ws::encode_frame(true, ws::OP_BINARY, mask, &[channel::CLOSE, channel::STDIN]));
        let mut down = ws::encode_frame(true, ws::OP_BINARY, None, b"\x01");
        down.extend(ws::encode_frame(false, ws::OP_BINARY, None, b"\x01frag"));
        down.extend(ws::encode_frame(true, ws::OP_PING, None, b"p"));
        down.extend(ws::encode_frame(true, ws::OP_CONTINUATION, None, &vec![b'x'; 70_000]));
        down.extend(ws::encode_frame(true, ws::OP_BINARY, None, b"\x02err"));
        let status = channel::ws_message(channel::ERROR, &channel::encode_status(&channel::exit_status(0, &[])));
        down.extend(ws::encode_frame(true, ws::OP_BINARY, None, &status));
        down.extend(ws::encode_frame(true, ws::OP_CLOSE, None, &ws::close_payload(1000, "")));
        (up, down)
    }

    #[test]
    fn websocket_records_output_resize_and_exit_at_any_split() {
        let (up, down) = ws_session();
        let mut out = b"frag".to_vec();
        out.extend(vec![b'x'; 70_000]);
        let want = vec![TapEvent::Output { stream: 1, data: out }, TapEvent::Output { stream: 2, data: b"err".to_vec() }, TapEvent::Exit(0)];
        for_each_split(&down, |pieces| {
            let (_, mut s) = WsTap::pair();
            assert_eq!(collect(&mut s, pieces), want);
            assert!(s.at_boundary());
        });
        for_each_split(&up, |pieces| {
            let (mut c, _) = WsTap::pair();
            assert_eq!(collect(&mut c, pieces), vec![TapEvent::Resize(TerminalSize { width: 80, height: 24 })]);
        });
    }

    #[test]
    fn client_streams_follow_spdystream_rules() {
        let open = |streams: &[(u32, &str)]| {
            let mut z = HeaderDeflater::default();
            let mut up = Vec::new();
            for (id, t) in streams {
                up.extend(encode_syn_stream(*id, 0, &z.deflate(&[("streamtype", t)])));
            }
            let (mut c, _) = SpdyTap::pair();
            c.feed(&up, &mut Vec::new())
        };
        assert_eq!(open(&[(1, "error"), (3, "stdout"), (5, "stderr")]), Ok(()));
        let refused: &[(&str, &[(u32, &str)])] = &[
            ("reused id relabelled stdin", &[(1, "error"), (3, "stdout"), (3, "stdin")]),
            ("reused id relabelled error", &[(1, "error"), (3, "stdout"), (3, "error")]),
            ("decreasing id", &[(5, "error"), (3, "stdout")]),
            ("even id", &[(2, "stdout")]),
            ("id zero", &[(0, "stdout")]),
            ("unknown type", &[(1, "shell")]),
            ("second stdout", &[(1, "stdout"), (3, "stdout")]),
        ];
        for (name, streams) in refused {
            assert!(open(streams).is_err(), "{name}");
        }
        let mut z = HeaderDeflater::default();
        let (mut c, _) = SpdyTap::pair();
        assert!(c.feed(&encode_syn_stream(1, 0, &z.deflate(&[("other", "x")])), &mut Vec::new()).is_err(), "no streamtype");
    }

    #[test]
    fn client_websocket_frames_follow_the_channel_protocol() {
        let mask = Some([1, 2, 3, 4]);
        let refused: &[(&str, Vec<u8>)] = &[
            ("text frame", ws::encode_frame(true, ws::OP_TEXT, mask, b"\x00aGk=")),
            ("unmasked", ws::encode_frame(true, ws::OP_BINARY, None, b"\x00x")),
            ("writes stdout", ws::encode_frame(true, ws::OP_BINARY, mask, b"\x01fake output")),
            ("writes error", ws::encode_frame(true, ws::OP_BINARY, mask, b"\x03{}")),
            ("continuation alone", ws::encode_frame(true, ws::OP_CONTINUATION, mask, b"x")),
            ("message inside a message", [ws::encode_frame(false, ws::OP_BINARY, mask, b"\x00a"), ws::encode_frame(true, ws::OP_BINARY, mask, b"\x00b")].concat()),
        ];
        for (name, bytes) in refused {
            let (mut c, _) = WsTap::pair();
            assert!(c.feed(bytes, &mut Vec::new()).is_err(), "{name}");
        }
    }

    #[test]
    fn spdy_data_streams_and_control_frames_are_bounded() {
        let (up, _) = spdy_session();
        let (mut c, mut s) = SpdyTap::pair();
        c.feed(&up, &mut Vec::new()).unwrap();
        // A 2 MiB stdout frame: each piece is output as it comes, nothing waits for the rest.
        let frame = encode_data(5, 0, &vec![b'x'; 2 << 20]);
        let mut events = Vec::new();
        s.feed(&frame[..spdy::FRAME_HEAD_LEN + 10], &mut events).unwrap();
        assert_eq!(events, vec![TapEvent::Output { stream: 1, data: vec![b'x'; 10] }]);
        assert!(!s.at_boundary());
        // A control frame's head that announces more than the limit is refused at once.
        let (_, mut s) = SpdyTap::pair();
        let head = [0x80, 3, 0, spdy::TYPE_HEADERS as u8, 0, 0x20, 0, 0];
        let e = s.feed(&head, &mut Vec::new()).unwrap_err();
        assert_eq!(e, TapError::ControlFrameTooLarge(2 << 20));
        assert_eq!(e.to_string(), "SPDY control frame of 2097152 bytes");
    }

    #[test]
    fn wire_errors_are_the_source() {
        use std::error::Error as _;
        let (_, mut s) = WsTap::pair();
        let e = s.feed(&[0x83, 0x00], &mut Vec::new()).unwrap_err();
        assert_eq!(e, TapError::Ws(WsError::UnknownOpcode(3)));
        assert_eq!(e.to_string(), WsError::UnknownOpcode(3).to_string(), "the message is the wire error's");
        assert!(e.source().unwrap().is::<WsError>());
        let (mut c, _) = SpdyTap::pair();
        let e = c.feed(&encode_syn_stream(2, 0, &HeaderDeflater::default().deflate(&[("streamtype", "stdout")])), &mut Vec::new()).unwrap_err();
        assert!(matches!(e, TapError::Violation(_)) && e.source().is_none(), "{e:?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (_, mut s) = WsTap::pair();
        assert!(s.feed(&[0x83, 0x00], &mut Vec::new()).is_err());
        let (_, mut s) = SpdyTap::pair();
        assert!(s.feed(&[0x80, 0x02, 0, 1, 0, 0, 0, 0], &mut Vec::new()).is_err());
    }
}
