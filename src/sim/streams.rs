//! The kubelet's side of remote-command streams, over SPDY/3.1 and WebSocket, turned
//! into one shape the exec and attach sessions use: [`Inbound`] events from the client
//! and an [`Outbound`] to write channels and the final status. Port-forward over
//! SPDY lives here too, and SPDY tunnelled in WebSocket for it, as kube-apiserver 1.30+
//! bridges it to a kubelet's SPDY (`PortForwardWebsockets`).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::Value;

use crate::net::conn::{Conn, Input, WriteHalf};
use crate::net::sync::lock;
use crate::net::websocket;
use crate::wire::channel::{self, TerminalSize};
use crate::wire::spdy::{self, Frame, HeaderDeflater, HeaderInflater, HeaderList};
use crate::wire::ws;

/// Messages queued from a client before its reader waits (backpressure to TCP).
const INBOUND_QUEUE: usize = 64;
/// How long a SPDY client has to open the streams its request asked for.
const STREAM_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Output is written in pieces no larger than this, as a kubelet does.
const MAX_WRITE: usize = 32 * 1024;
/// RST_STREAM status for a stream id the peer may not use (SPDY/3 section 2.4.2).
const SPDY_PROTOCOL_ERROR: u32 = 1;

/// What a client sends during a session.
#[derive(Debug)]
pub enum Inbound {
    Stdin(Vec<u8>),
    StdinClosed,
    Resize(TerminalSize),
    /// The connection ended or broke.
    Gone,
}

/// Writes to a client's channels.
pub trait Outbound: Send + Sync {
    fn output(&self, channel: u8, data: &[u8]) -> io::Result<()>;
    /// Sends the final Status, if any, on the error channel and ends the connection.
    fn finish(&self, status: Option<&Value>);
}

/// The channels a session request asked for.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

// ---- SPDY ----

struct SpdyOut {
    out: WriteHalf,
    deflater: HeaderDeflater,
}

type SharedSpdyOut = Arc<Mutex<SpdyOut>>;

enum SpdyIn {
    Open { id: u32, headers: HeaderList },
    Data { id: u32, data: Vec<u8>, fin: bool },
    Reset { id: u32 },
    Gone,
}

/// Reads frames, answering SYN_STREAM with SYN_REPLY and PING with PING, and
/// passes the rest on. Ends with `Gone`.
///
/// Stream ids are checked as spdystream's `validateStreamId` checks them: a
/// SYN_STREAM whose id is below the last accepted id + 2 (a reused or decreasing id)
/// is answered RST_STREAM PROTOCOL_ERROR and dropped, so the first stream opened
/// with an id keeps it. Parity is not checked (spdystream does not).
fn spdy_reader(mut input: Input, out: SharedSpdyOut, tx: Sender<SpdyIn>) {
    let mut inflater = HeaderInflater::default();
    // spdystream's `receivedStreamId` on the server side starts at 1.
    let mut lowest_next_id: u32 = 1;
    let result: crate::error::Result<()> = (|| loop {
        while let Some((frame, n)) = spdy::parse_frame(input.buffered())? {
            let event = match frame {
                Frame::SynStream { stream_id, header_block, .. } if stream_id < lowest_next_id => {
                    inflater.inflate(header_block)?; // keeps the shared zlib stream in step
                    lock(&out).out.write_all(&spdy::encode_rst_stream(stream_id, SPDY_PROTOCOL_ERROR))?;
                    None
                }
                Frame::SynStream { stream_id, flags, header_block, .. } => {
                    lowest_next_id = stream_id.saturating_add(2);
                    let headers = inflater.inflate(header_block)?;
                    let mut o = lock(&out);
                    let block = o.deflater.deflate(&[]);
                    o.out.write_all(&spdy::encode_syn_reply(stream_id, 0, &block))?;
                    drop(o);
                    let open = SpdyIn::Open { id: stream_id, headers };
                    if flags & spdy::FLAG_FIN != 0 {
                        let _ = tx.send(open);
                        Some(SpdyIn::Data { id: stream_id, data: Vec::new(), fin: true })
                    } else {
                        Some(open)
                    }
                }
                Frame::Data { stream_id, flags, payload } => Some(SpdyIn::Data { id: stream_id, data: payload.to_vec(), fin: flags & spdy::FLAG_FIN != 0 }),
                Frame::Headers { header_block, .. } | Frame::SynReply { header_block, .. } => {
                    inflater.inflate(header_block)?; // keeps the shared zlib stream in step
                    None
                }
                Frame::Ping { id } => {
                    lock(&out).out.write_all(&spdy::encode_ping(id))?;
                    None
                }
                Frame::RstStream { stream_id, .. } => Some(SpdyIn::Reset { id: stream_id }),
                Frame::GoAway { .. } => return Ok(()),
                Frame::WindowUpdate { .. } | Frame::OtherControl { .. } => None,
            };
            input.consume(n);
            if let Some(e) = event {
                if tx.send(e).is_err() {
                    return Ok(());
                }
            }
        }
        if input.fill()? == 0 {
            return Ok(());
        }
    })();
    if let Err(e) = result {
        log::debug!("spdy connection ended error={e}");
    }
    let _ = tx.send(SpdyIn::Gone);
}

fn start_spdy(input: Input, output: WriteHalf) -> io::Result<(SharedSpdyOut, Receiver<SpdyIn>)> {
    let out = Arc::new(Mutex::new(SpdyOut { out: output, deflater: HeaderDeflater::default() }));
    let (tx, rx) = bounded(INBOUND_QUEUE);
    let reader_out = out.clone();
    thread::Builder::new().name("spdy-read".into()).spawn(move || spdy_reader(input, reader_out, tx))?;
    Ok((out, rx))
}

struct SpdyOutbound {
    out: SharedSpdyOut,
    ids: HashMap<u8, u32>,
}

impl Outbound for SpdyOutbound {
    fn output(&self, channel: u8, data: &[u8]) -> io::Result<()> {
        let Some(&id) = self.ids.get(&channel) else { return Ok(()) };
        let mut o = lock(&self.out);
        for piece in data.chunks(MAX_WRITE) {
            o.out.write_all(&spdy::encode_data(id, 0, piece))?;
        }
        Ok(())
    }

    fn finish(&self, status: Option<&Value>) {
        let mut o = lock(&self.out);
        if let (Some(&id), Some(status)) = (self.ids.get(&channel::ERROR), status) {
            let _ = o.out.write_all(&spdy::encode_data(id, 0, &channel::encode_status(status)));
        }
        for ch in [channel::ERROR, channel::STDOUT, channel::STDERR] {
            if let Some(&id) = self.ids.get(&ch) {
                let _ = o.out.write_all(&spdy::encode_data(id, spdy::FLAG_FIN, &[]));
            }
        }
        let _ = o.out.shutdown_write();
    }
}

/// Waits for the client to open the streams `wanted` implies, then translates its
/// frames into [`Inbound`] events on a thread of its own.
pub fn spdy_session(input: Input, output: WriteHalf, wanted: Wanted) -> io::Result<(Receiver<Inbound>, Arc<dyn Outbound>)> {
    let (out, rx) = start_spdy(input, output)?;
    let mut need = vec![channel::ERROR];
    for (on, ch) in [(wanted.stdin, channel::STDIN), (wanted.stdout, channel::STDOUT), (wanted.stderr && !wanted.tty, channel::STDERR), (wanted.tty, channel::RESIZE)] {
        if on {
            need.push(ch);
        }
    }
    let mut ids: HashMap<u8, u32> = HashMap::new();
    let mut early = Vec::new();
    while !need.iter().all(|c| ids.contains_key(c)) {
        match rx.recv_timeout(STREAM_SETUP_TIMEOUT) {
            Ok(SpdyIn::Open { id, headers }) => {
                if let Some(ch) = spdy::header(&headers, "streamtype").and_then(channel::channel_for_stream_type) {
                    ids.insert(ch, id);
                }
            }
            Ok(SpdyIn::Gone) | Err(_) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "client did not open the expected streams"));
            }
            Ok(other) => early.push(other),
        }
    }
    let by_id: HashMap<u32, u8> = ids.iter().map(|(c, i)| (*i, *c)).collect();
    let (tx, inbound) = bounded(INBOUND_QUEUE);
    thread::Builder::new().name("spdy-session".into()).spawn(move || {
        for event in early.into_iter().map(Ok).chain(std::iter::from_fn(|| Some(rx.recv()))) {
            let event = match event {
                Ok(e) => e,
                Err(_) => break,
            };
            let msgs: Vec<Inbound> = match event {
                SpdyIn::Data { id, data, fin } => match by_id.get(&id) {
                    Some(&channel::STDIN) => {
                        let mut v = Vec::new();
                        if !data.is_empty() {
                            v.push(Inbound::Stdin(data));
                        }
                        if fin {
                            v.push(Inbound::StdinClosed);
                        }
                        v
                    }
                    Some(&channel::RESIZE) => channel::parse_resizes(&data).into_iter().map(Inbound::Resize).collect(),
                    _ => Vec::new(),
                },
                SpdyIn::Reset { id } if by_id.get(&id) == Some(&channel::STDIN) => vec![Inbound::StdinClosed],
                SpdyIn::Gone => vec![Inbound::Gone],
                _ => Vec::new(),
            };
            let gone = msgs.iter().any(|m| matches!(m, Inbound::Gone));
            for m in msgs {
                if tx.send(m).is_err() {
                    return;
                }
            }
            if gone {
                return;
            }
        }
    })?;
    Ok((inbound, Arc::new(SpdyOutbound { out, ids })))
}

/// Serves `kubectl port-forward` over SPDY: each request is a pair of streams
/// (`error`, `data`) naming a port, tunnelled to that port on loopback.
pub fn spdy_port_forward(input: Input, output: WriteHalf, allowed: impl Fn(u16) -> bool) -> io::Result<()> {
    let (out, rx) = start_spdy(input, output)?;
    let mut sockets: HashMap<u32, TcpStream> = HashMap::new();
    let mut errors: HashMap<String, u32> = HashMap::new();
    for event in rx.iter() {
        match event {
            SpdyIn::Open { id, headers } => {
                let kind = spdy::header(&headers, "streamtype").unwrap_or("");
                let request = spdy::header(&headers, "requestid").unwrap_or("").to_string();
                let port = spdy::header(&headers, "port").and_then(|p| p.parse::<u16>().ok());
                match (kind, port) {
                    ("error", _) => {
                        errors.insert(request, id);
                    }
                    ("data", Some(port)) => {
                        let fail = |msg: String| {
                            let mut o = lock(&out);
                            if let Some(&eid) = errors.get(&request) {
                                let _ = o.out.write_all(&spdy::encode_data(eid, spdy::FLAG_FIN, msg.as_bytes()));
                            }
                            let _ = o.out.write_all(&spdy::encode_data(id, spdy::FLAG_FIN, &[]));
                        };
                        if !allowed(port) {
                            fail(format!("port {port} is not declared by the pod"));
                            continue;
                        }
                        match TcpStream::connect(("127.0.0.1", port)) {
                            Ok(sock) => {
                                let reader = sock.try_clone()?;
                                sockets.insert(id, sock);
                                let out = out.clone();
                                let error_id = errors.get(&request).copied();
                                thread::Builder::new().name(format!("pf-{port}")).spawn(move || forward_socket(reader, id, error_id, &out))?;
                            }
                            Err(e) => fail(format!("error forwarding port {port} to pod: {e}")),
                        }
                    }
                    _ => {}
                }
            }
            SpdyIn::Data { id, data, fin } => {
                if let Some(sock) = sockets.get_mut(&id) {
                    if sock.write_all(&data).is_err() || fin {
                        let _ = sock.shutdown(std::net::Shutdown::Write);
                    }
                }
            }
            SpdyIn::Reset { id } => {
                if let Some(sock) = sockets.remove(&id) {
                    let _ = sock.shutdown(std::net::Shutdown::Both);
                }
            }
            SpdyIn::Gone => break,
        }
    }
    for sock in sockets.values() {
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }
    let _ = lock(&out).out.shutdown_write();
    Ok(())
}

fn forward_socket(mut sock: TcpStream, id: u32, error_id: Option<u32>, out: &SharedSpdyOut) {
    let mut buf = vec![0u8; MAX_WRITE];
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if lock(out).out.write_all(&spdy::encode_data(id, 0, &buf[..n])).is_err() {
                    return;
                }
            }
        }
    }
    let mut o = lock(out);
    let _ = o.out.write_all(&spdy::encode_data(id, spdy::FLAG_FIN, &[]));
    if let Some(eid) = error_id {
        let _ = o.out.write_all(&spdy::encode_data(eid, spdy::FLAG_FIN, &[]));
    }
}

/// Serves `kubectl port-forward` over SPDY tunnelled in WebSocket binary messages
/// (subprotocol `SPDY/3.1+portforward.k8s.io`, kubectl 1.30+): as kube-apiserver's
/// tunneling handler does, the messages' bytes are bridged to a SPDY port-forward,
/// here [`spdy_port_forward`] on the far end of a loopback connection. Pings are
/// answered; a close ends the bridge.
pub fn ws_tunnelled_port_forward(mut input: Input, output: WriteHalf, allowed: impl Fn(u16) -> bool + Send + 'static) -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut near = TcpStream::connect(listener.local_addr()?)?;
    let far = loop {
        let (sock, from) = listener.accept()?;
        // Only our own end may become the SPDY side.
        if from == near.local_addr()? {
            break Conn::plain(sock).map_err(io::Error::other)?;
        }
    };
    thread::Builder::new().name("pf-spdy".into()).spawn(move || {
        if let Err(e) = spdy_port_forward(Input::new(far.read), far.write, allowed) {
            log::debug!("tunnelled port-forward ended error={e}");
        }
    })?;
    let out = Arc::new(WsOutbound { out: Mutex::new(output) });
    let mut from_spdy = near.try_clone()?;
    let to_client = out.clone();
    thread::Builder::new().name("pf-ws-down".into()).spawn(move || {
        let mut buf = vec![0u8; MAX_WRITE];
        while let Ok(n @ 1..) = from_spdy.read(&mut buf) {
            if to_client.send(ws::OP_BINARY, &buf[..n]).is_err() {
                break;
            }
        }
        to_client.finish(None);
    })?;
    let bridged = (|| {
        while let Some(frame) = websocket::next_frame(&mut input)? {
            match frame.opcode {
                ws::OP_PING => out.send(ws::OP_PONG, &frame.payload)?,
                ws::OP_CLOSE => break,
                ws::OP_PONG => {}
                _ => near.write_all(&frame.payload)?,
            }
        }
        Ok(())
    })();
    // However the client left, the SPDY side sees the end (the down thread holds a
    // clone of the socket, so dropping ours would not).
    let _ = near.shutdown(std::net::Shutdown::Write);
    bridged
}

/// Serves port-forward over the kubelet's WebSocket channel protocol
/// (`v4.channel.k8s.io`, or none offered), as its `handleWebSocketStreams`: the i-th
/// of `ports` has channels `2i` (data) and `2i+1` (error), each opened by a message
/// carrying the port in 2 bytes, little-endian; what arrives on a data channel goes
/// to the port, what the port answers comes back on it. Ends when the client closes
/// or every port's connection has ended.
pub fn ws_channel_port_forward(mut input: Input, output: WriteHalf, ports: Vec<u16>, allowed: impl Fn(u16) -> bool) -> io::Result<()> {
    let out = Arc::new(WsOutbound { out: Mutex::new(output) });
    let mut sockets: Vec<Option<TcpStream>> = Vec::new();
    let mut readers = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        // The caller allows at most 128 ports; past that no channel byte would name them.
        let Ok(data) = u8::try_from(2 * i) else { break };
        let error = data | 1;
        for ch in [data, error] {
            out.send(ws::OP_BINARY, &channel::ws_message(ch, &port.to_le_bytes()))?;
        }
        let sock = if allowed(port) { TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string()) } else { Err(format!("port {port} is not declared by the pod")) };
        match sock {
            Ok(sock) => {
                let (mut from_pod, to_client) = (sock.try_clone()?, out.clone());
                readers.push(thread::Builder::new().name(format!("pf-ws-{port}")).spawn(move || {
                    let mut buf = vec![0u8; MAX_WRITE];
                    while let Ok(n @ 1..) = from_pod.read(&mut buf) {
                        if to_client.send(ws::OP_BINARY, &channel::ws_message(data, &buf[..n])).is_err() {
                            break;
                        }
                    }
                })?);
                sockets.push(Some(sock));
            }
            Err(e) => {
                out.send(ws::OP_BINARY, &channel::ws_message(error, format!("error forwarding port {port} to pod: {e}").as_bytes()))?;
                sockets.push(None);
            }
        }
    }
    // The client's frames, on a thread of its own, so that the ports' end can end
    // the connection too.
    let client_socks: Vec<Option<TcpStream>> = sockets.iter().map(|s| s.as_ref().and_then(|s| s.try_clone().ok())).collect();
    thread::Builder::new().name("pf-ws-read".into()).spawn(move || {
        while let Ok(Some(frame)) = websocket::next_frame(&mut input) {
            match frame.opcode {
                ws::OP_CLOSE => break,
                ws::OP_PING | ws::OP_PONG => {}
                // The kubelet's x/net/websocket reads each frame, a continuation too,
                // as a message of its own, its first byte the channel.
                _ => {
                    let Some((&ch, data)) = frame.payload.split_first() else { continue };
                    if let Some(Some(mut sock)) = (ch % 2 == 0).then(|| client_socks.get(usize::from(ch / 2))).flatten().map(Option::as_ref) {
                        let _ = sock.write_all(data);
                    }
                }
            }
        }
        for sock in client_socks.iter().flatten() {
            let _ = sock.shutdown(std::net::Shutdown::Write);
        }
    })?;
    for r in readers {
        let _ = r.join();
    }
    out.finish(None);
    Ok(())
}

// ---- WebSocket ----

struct WsOutbound {
    out: Mutex<WriteHalf>,
}

impl WsOutbound {
    fn send(&self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        lock(&self.out).write_all(&ws::encode_frame(true, opcode, None, payload))
    }
}

impl Outbound for WsOutbound {
    fn output(&self, ch: u8, data: &[u8]) -> io::Result<()> {
        for piece in data.chunks(MAX_WRITE) {
            self.send(ws::OP_BINARY, &channel::ws_message(ch, piece))?;
        }
        Ok(())
    }

    fn finish(&self, status: Option<&Value>) {
        if let Some(status) = status {
            let _ = self.send(ws::OP_BINARY, &channel::ws_message(channel::ERROR, &channel::encode_status(status)));
        }
        let _ = self.send(ws::OP_CLOSE, &ws::close_payload(1000, ""));
        let _ = lock(&self.out).shutdown_write();
    }
}

/// Reads WebSocket messages and translates them into [`Inbound`] events.
pub fn ws_session(mut input: Input, output: WriteHalf, v5: bool) -> io::Result<(Receiver<Inbound>, Arc<dyn Outbound>)> {
    let out = Arc::new(WsOutbound { out: Mutex::new(output) });
    let (tx, rx) = bounded(INBOUND_QUEUE);
    let reader_out = out.clone();
    thread::Builder::new().name("ws-read".into()).spawn(move || {
        let mut message: Vec<u8> = Vec::new();
        let result: crate::error::Result<()> = (|| {
            while let Some(frame) = websocket::next_frame(&mut input)? {
                match frame.opcode {
                    ws::OP_PING => reader_out.send(ws::OP_PONG, &frame.payload)?,
                    ws::OP_PONG => {}
                    ws::OP_CLOSE => {
                        let _ = reader_out.send(ws::OP_CLOSE, &frame.payload);
                        return Ok(());
                    }
                    _ => {
                        message.extend_from_slice(&frame.payload);
                        if message.len() as u64 > ws::MAX_PAYLOAD {
                            crate::bail!("message exceeds {} bytes", ws::MAX_PAYLOAD);
                        }
                        if !frame.fin {
                            continue;
                        }
                        let msg = std::mem::take(&mut message);
                        let Some((&ch, data)) = msg.split_first() else { continue };
                        let events = match ch {
                            channel::STDIN if !data.is_empty() => vec![Inbound::Stdin(data.to_vec())],
                            channel::RESIZE => channel::parse_resizes(data).into_iter().map(Inbound::Resize).collect(),
                            channel::CLOSE if v5 && data.first() == Some(&channel::STDIN) => vec![Inbound::StdinClosed],
                            _ => Vec::new(),
                        };
                        for e in events {
                            if tx.send(e).is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            log::debug!("websocket connection ended error={e}");
        }
        let _ = tx.send(Inbound::Gone);
    })?;
    Ok((rx, out))
}
