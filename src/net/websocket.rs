//! WebSocket on a connection (the framing itself is `wire::ws`): the one frame reader
//! every WebSocket peer here reads with, the one server accept, and the client's
//! upgrade. Like tungstenite's `FrameSocket`, reading yields whole frames and leaves
//! a partial one buffered, so a read timeout loses nothing.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::net::conn::{Input, WriteHalf};
use crate::wire::http::{self, RequestHead, ResponseHead};
use crate::wire::ws::{self, Frame};

/// Larger 101 responses are refused (a real one is a few hundred bytes).
const MAX_UPGRADE_RESPONSE: usize = 16 * 1024;

fn invalid(e: ws::WsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The next whole frame already buffered, without reading.
pub fn buffered_frame(input: &mut Input) -> io::Result<Option<Frame>> {
    let Some((frame, n)) = ws::parse_frame(input.buffered()).map_err(invalid)? else { return Ok(None) };
    input.consume(n);
    Ok(Some(frame))
}

/// The next frame, reading as needed. `Ok(None)` when the peer closed the stream
/// between frames; a read timeout is an error of kind `WouldBlock`/`TimedOut`, after
/// which reading may resume.
pub fn next_frame(input: &mut Input) -> io::Result<Option<Frame>> {
    loop {
        if let Some(frame) = buffered_frame(input)? {
            return Ok(Some(frame));
        }
        if input.fill()? == 0 {
            if input.buffered().is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the middle of a frame"));
        }
    }
}

/// [`next_frame`] by `deadline`: every read waits only for what is left, so a peer
/// that trickles a frame byte by byte cannot hold the caller past it (an error that
/// [`is_timeout`]).
pub fn next_frame_by(input: &mut Input, deadline: Instant) -> io::Result<Option<Frame>> {
    loop {
        if let Some(frame) = buffered_frame(input)? {
            return Ok(Some(frame));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no whole frame by the deadline"));
        }
        input.half.set_timeout(Some(left))?;
        if input.fill()? == 0 {
            return match input.buffered().is_empty() {
                true => Ok(None),
                false => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the middle of a frame")),
            };
        }
    }
}

/// True for the error a read timeout gives.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// How a run of [`read_frames`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The handler asked to stop.
    Stopped,
    /// The peer closed the connection.
    Closed,
}

/// What a frame handler wants next.
pub enum Flow {
    Continue,
    Stop,
}

/// The reader of a stream of frames, for [`read_frames`].
pub trait FrameHandler {
    type Error: From<io::Error>;
    fn on_frame(&mut self, frame: Frame) -> std::result::Result<Flow, Self::Error>;
    /// Every whole frame read so far has been handled and the next read may block:
    /// where a writer makes what it was sent durable and acknowledges it, once for
    /// the whole batch (group commit).
    fn drained(&mut self) -> std::result::Result<(), Self::Error> {
        Ok(())
    }
}

/// Hands frames to `handler` until it stops or the stream ends (a frame cut short
/// by the close counts as never sent). `drained` runs after every read that left no
/// whole frame unhandled, so a frame trickling in over many reads still lets the
/// handler acknowledge and check its idle bounds. With `tick`, a read waits at most
/// that long, and `drained` runs again after a quiet tick.
pub fn read_frames<H: FrameHandler>(input: &mut Input, tick: Option<Duration>, handler: &mut H) -> std::result::Result<Ended, H::Error> {
    input.half.set_timeout(tick)?;
    loop {
        while let Some(frame) = buffered_frame(input)? {
            if let Flow::Stop = handler.on_frame(frame)? {
                return Ok(Ended::Stopped);
            }
        }
        handler.drained()?;
        match input.fill() {
            Ok(0) => return Ok(Ended::Closed),
            Ok(_) => {}
            Err(e) if tick.is_some() && is_timeout(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Why a WebSocket upgrade request cannot be accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptError {
    /// None of the offered subprotocols is one the server speaks.
    NoSubprotocol(Vec<String>),
    MissingKey,
}

/// Accepts a WebSocket upgrade with the first subprotocol the client offered that is
/// in `supported` (kubelet's order, `channel::negotiate`): the 101 to send, and the
/// chosen subprotocol.
pub fn accept<'a>(head: &RequestHead, supported: &[&'a str]) -> std::result::Result<(ResponseHead, &'a str), AcceptError> {
    let offered: Vec<&str> = head.headers.tokens("sec-websocket-protocol").collect();
    let chosen = crate::wire::channel::negotiate(&offered, supported).ok_or_else(|| AcceptError::NoSubprotocol(offered.iter().map(|s| s.to_string()).collect()))?;
    let key = head.headers.get("sec-websocket-key").ok_or(AcceptError::MissingKey)?;
    let mut resp = ResponseHead::new(101);
    resp.headers.push("Connection", "Upgrade");
    resp.headers.push("Upgrade", "websocket");
    resp.headers.push("Sec-WebSocket-Accept", tungstenite::handshake::derive_accept_key(key));
    resp.headers.push("Sec-WebSocket-Protocol", chosen);
    Ok((resp, chosen))
}

/// Upgrades a fresh client connection: sends the request for `path` with
/// `subprotocol` and checks the 101 within `deadline`. The read timeout is cleared
/// afterwards, since frames may be far apart.
pub fn connect(input: &mut Input, out: &mut WriteHalf, host: &str, path: &str, subprotocol: &str, deadline: Instant) -> Result<()> {
    let mut key = [0u8; 16];
    crate::net::random::fill(&mut key);
    let key = crate::wire::base64::encode(&key);
    let mut req = RequestHead::new("GET", path);
    for (n, v) in [("Host", host), ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Protocol", subprotocol)] {
        req.headers.push(n, v);
    }
    req.headers.push("Sec-WebSocket-Key", key.as_bytes());
    out.write_all(&req.encode())?;
    let left = deadline.saturating_duration_since(Instant::now());
    let resp = input.read_head(http::parse_response, MAX_UPGRADE_RESPONSE, left, left)?.ok_or_else(|| Error::new("the server closed the connection"))?;
    if resp.status != 101 {
        let body = String::from_utf8_lossy(input.buffered()).into_owned();
        crate::bail!("refused: {} {}", resp.status, body.chars().take(200).collect::<String>());
    }
    if resp.headers.get_str("sec-websocket-accept") != Some(tungstenite::handshake::derive_accept_key(key.as_bytes()).as_str()) {
        crate::bail!("answered with a wrong Sec-WebSocket-Accept");
    }
    input.half.set_timeout(None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::testutil::conn_pair;
    use std::net::TcpStream;

    fn pair() -> (TcpStream, Input) {
        let (client, conn) = conn_pair();
        (client, Input::new(conn.read))
    }

    #[test]
    fn frames_split_anywhere_arrive_whole_and_a_timeout_loses_nothing() {
        let (mut client, mut input) = pair();
        let stream = [ws::encode_frame(true, ws::OP_BINARY, Some([1, 2, 3, 4]), b"hello"), ws::encode_frame(true, ws::OP_TEXT, None, b"{}")].concat();
        client.write_all(&stream[..3]).unwrap();
        input.half.set_timeout(Some(Duration::from_millis(30))).unwrap();
        assert!(next_frame(&mut input).is_err_and(|e| is_timeout(&e)), "a partial frame is not a frame");
        client.write_all(&stream[3..]).unwrap();
        drop(client);
        let got: Vec<(u8, Vec<u8>)> = std::iter::from_fn(|| next_frame(&mut input).unwrap()).map(|f| (f.opcode, f.payload)).collect();
        assert_eq!(got, [(ws::OP_BINARY, b"hello".to_vec()), (ws::OP_TEXT, b"{}".to_vec())]);
    }

    #[test]
    fn a_close_inside_a_frame_is_an_error_and_a_bad_frame_is_invalid_data() {
        let (mut client, mut input) = pair();
        client.write_all(&ws::encode_frame(true, ws::OP_BINARY, None, b"hello")[..4]).unwrap();
        drop(client);
        assert_eq!(next_frame(&mut input).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let (mut client, mut input) = pair();
        client.write_all(&[0x80 | 0x3, 0]).unwrap();
        assert_eq!(next_frame(&mut input).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn read_frames_drains_once_per_batch() {
        /// Logs each frame with how many drains came before it.
        struct Log {
            client: TcpStream,
            frames: Vec<(usize, u8)>,
            drains: usize,
        }
        impl FrameHandler for Log {
            type Error = io::Error;
            fn on_frame(&mut self, f: Frame) -> io::Result<Flow> {
                if f.opcode == ws::OP_CLOSE {
                    return Ok(Flow::Stop);
                }
                self.frames.push((self.drains, f.payload[0]));
                if self.frames.len() == 3 {
                    self.client.write_all(&ws::encode_frame(true, ws::OP_CLOSE, None, b""))?;
                }
                Ok(Flow::Continue)
            }
            fn drained(&mut self) -> io::Result<()> {
                self.drains += 1;
                Ok(())
            }
        }
        let (mut client, mut input) = pair();
        let batch: Vec<u8> = (0..3u8).flat_map(|i| ws::encode_frame(true, ws::OP_BINARY, None, &[i])).collect();
        client.write_all(&batch).unwrap();
        let mut log = Log { client, frames: Vec::new(), drains: 0 };
        assert_eq!(read_frames(&mut input, None, &mut log).unwrap(), Ended::Stopped);
        assert_eq!(log.frames.iter().map(|f| f.1).collect::<Vec<_>>(), [0, 1, 2]);
        // Drained before the first read; again only when a read found no whole frame
        // (TCP decides how the three arrive), and once before the close was read.
        assert!(log.frames[0].0 == 1 && log.drains >= 2 && log.drains <= 4, "{:?} drains={}", log.frames, log.drains);
    }

    /// Counts drains and stops at the first frame.
    #[derive(Default)]
    struct FirstFrame {
        drains: usize,
        frame: Option<Frame>,
    }

    impl FrameHandler for FirstFrame {
        type Error = io::Error;
        fn on_frame(&mut self, f: Frame) -> io::Result<Flow> {
            self.frame = Some(f);
            Ok(Flow::Stop)
        }
        fn drained(&mut self) -> io::Result<()> {
            self.drains += 1;
            Ok(())
        }
    }

    #[test]
    fn a_frame_trickled_byte_by_byte_still_lets_the_handler_run_between_reads() {
        let frame = ws::encode_frame(true, ws::OP_BINARY, Some([9, 8, 7, 6]), b"slow");
        let mut input = crate::net::testutil::input_fed(frame.iter().map(|b| vec![*b]).collect());
        let mut h = FirstFrame::default();
        assert_eq!(read_frames(&mut input, None, &mut h).unwrap(), Ended::Stopped);
        assert_eq!(h.frame.map(|f| f.payload), Some(b"slow".to_vec()));
        assert_eq!(h.drains, frame.len(), "once before the first byte, then after every read but the last");
    }

    #[test]
    fn next_frame_by_gives_up_at_its_deadline_however_the_frame_trickles() {
        let (mut client, mut input) = pair();
        client.write_all(&ws::encode_frame(true, ws::OP_TEXT, None, b"{}")[..2]).unwrap();
        let deadline = Instant::now() + Duration::from_millis(100);
        assert!(next_frame_by(&mut input, deadline).is_err_and(|e| is_timeout(&e)));
        client.write_all(b"{}").unwrap();
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(next_frame_by(&mut input, later).unwrap().map(|f| f.payload), Some(b"{}".to_vec()), "nothing was lost");
    }

    #[test]
    fn accept_chooses_in_the_clients_order_and_needs_a_key() {
        let head = |protocols: &str, key: bool| {
            let mut h = RequestHead::new("GET", "/");
            h.headers.push("Sec-WebSocket-Protocol", protocols);
            if key {
                h.headers.push("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
            }
            h
        };
        let (resp, chosen) = accept(&head("v4.channel.k8s.io, v5.channel.k8s.io", true), &["v5.channel.k8s.io", "v4.channel.k8s.io"]).unwrap();
        assert_eq!(chosen, "v4.channel.k8s.io");
        assert_eq!(resp.headers.get_str("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "RFC 6455's example");
        assert_eq!(accept(&head("x", true), &["y"]).unwrap_err(), AcceptError::NoSubprotocol(vec!["x".into()]));
        assert_eq!(accept(&head("y", false), &["y"]).unwrap_err(), AcceptError::MissingKey);
    }
}
