//! Port-forwards: the ports a `kubectl port-forward` reaches and the bytes each way,
//! counted in a tap on the tunnel as the stream passes (no payload is kept or held
//! back), for the request's `PortForward` event.
//!
//! Three framings, as the API server agreed to them:
//! - SPDY/3.1 (`portforward.k8s.io`): each connection is a pair of streams the client
//!   opens, `error` and `data`, with the pod's port in a `port` header;
//! - SPDY/3.1 inside WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`, what
//!   kubectl 1.30+ sends with `KUBECTL_PORT_FORWARD_WEBSOCKETS`);
//! - the kubelet's channel protocol (`v4.channel.k8s.io`, or none offered), ports in
//!   the `ports` query: channels `2i` (data) and `2i+1` (error) for the i-th port,
//!   the server's first message on each led by the port in 2 bytes, little-endian.
//!
//! Whatever a peer sends, counting never panics: a stream it cannot parse stops the
//! counts (the event says truncated, and why) and, in fail-open, the forward runs on.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::net::conn::{Input, WriteHalf};
use crate::net::sync::lock;
use crate::net::tunnel::{self, Sink, Totals};
use crate::record::event::{PortBytes, PortForward};
use crate::recording::fail::{self, Decision, FailMode, Situation};
use crate::wire::spdy::{self, FrameHead, FrameKind, HeaderInflater};
use crate::wire::ws;

/// A client control frame (SYN_STREAM with its header block) larger than this is
/// not one kubectl sends; counting stops rather than buffer it.
const MAX_CONTROL_FRAME: usize = 1024 * 1024;
/// Ports listed per forward: kubectl forwards the few it is given; a peer opening
/// streams for every port cannot grow the event past this.
pub const MAX_PORTS: usize = 64;
/// The WebSocket subprotocol of SPDY tunnelled in WebSocket (client-go's
/// `WebsocketsSPDYTunnelingPortForwardV1`).
pub const SPDY_OVER_WEBSOCKET: &str = "SPDY/3.1+portforward.k8s.io";
/// The kubelet's binary channel subprotocol for port-forward over WebSocket.
pub const CHANNEL_PORT_FORWARD: &str = "v4.channel.k8s.io";
/// The kubelet's channel protocol, agreed by name or with none offered
/// (`handleWebSocketStreams`; the base64 form, in text frames, is not counted).
const CHANNEL_PROTOCOLS: &[&str] = &[CHANNEL_PORT_FORWARD, ""];

/// Which way bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    ToPod,
    FromPod,
}

/// How the agreed stream is framed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Framing {
    Spdy,
    SpdyOverWs,
    /// The ports of the `ports` query, in order.
    Channels(Vec<u16>),
}

/// What the stream carried so far, shared by both directions.
pub struct Meter {
    started: Instant,
    fail: FailMode,
    state: Mutex<State>,
}

struct State {
    framing: Framing,
    /// Per direction: WebSocket framing (when there is one), then SPDY.
    ws: [WsUnwrap; 2],
    spdy: [SpdyWalk; 2],
    /// SPDY data streams (or channels) and their port.
    streams: HashMap<u32, u16>,
    ports: Vec<PortBytes>,
    /// Why counting stopped (a port past [`MAX_PORTS`] too: its bytes would pass
    /// uncounted, so in fail-closed the forward ends).
    stopped: Option<String>,
}

impl Meter {
    /// The meter for the stream the API server agreed to (`upgrade`, `subprotocol`)
    /// on a request with `query`; one for a framing it does not know counts nothing
    /// and says so.
    pub fn new(upgrade: &str, subprotocol: &str, query: &str, fail: FailMode) -> Meter {
        let ws = upgrade.eq_ignore_ascii_case("websocket");
        let framing = match () {
            _ if upgrade.eq_ignore_ascii_case("SPDY/3.1") => Ok(Framing::Spdy),
            _ if ws && subprotocol == SPDY_OVER_WEBSOCKET => Ok(Framing::SpdyOverWs),
            _ if ws && CHANNEL_PROTOCOLS.contains(&subprotocol) => Ok(Framing::Channels(query_ports(query))),
            _ => Err(format!("the stream protocol {upgrade:?} {subprotocol:?} is not one kubetape counts")),
        };
        let mut state = State {
            framing: framing.clone().unwrap_or(Framing::Spdy),
            ws: Default::default(),
            spdy: Default::default(),
            streams: HashMap::new(),
            ports: Vec::new(),
            stopped: framing.err(),
        };
        if let Framing::Channels(ports) = state.framing.clone() {
            for (i, port) in ports.into_iter().enumerate() {
                if let Err(why) = state.open(2 * i as u32, port, true) {
                    state.stopped.get_or_insert(why);
                }
            }
        }
        Meter { started: Instant::now(), fail, state: Mutex::new(state) }
    }

    /// Counts bytes that flowed `side`. `Err` once counting has failed and the fail
    /// mode says the forward must end (fail-closed); fail-open always goes on.
    pub fn feed(&self, side: Side, data: &[u8]) -> Result<(), String> {
        let mut st = lock(&self.state);
        if st.stopped.is_none() {
            if let Err(why) = st.feed(side, data) {
                let who = if side == Side::ToPod { "the client's" } else { "the server's" };
                let why = format!("cannot parse {who} port-forward stream: {why}");
                log::warn!("port-forward counts stop fail_mode={:?} reason={why}", self.fail);
                st.stopped = Some(why);
            }
        }
        match (&st.stopped, fail::decide(self.fail, Situation::UnparsableUpstream)) {
            (Some(why), Decision::EndSession) => Err(format!("this port-forward must be recorded and counting failed: {why}")),
            _ => Ok(()),
        }
    }

    /// The event's record, as it stands.
    pub fn report(&self) -> PortForward {
        let st = lock(&self.state);
        let reason = st.stopped.clone();
        PortForward { ports: st.ports.clone(), duration_ms: self.started.elapsed().as_millis() as u64, truncated: reason.is_some(), reason }
    }
}

/// The `ports` query's values (repeated or comma-separated), as kube-apiserver reads
/// `PodPortForwardOptions`; what is not a port is skipped.
fn query_ports(query: &str) -> Vec<u16> {
    crate::wire::http::query_pairs(query).iter().filter(|(k, _)| k == "ports").flat_map(|(_, v)| v.split(',').filter_map(|p| p.trim().parse().ok()).collect::<Vec<u16>>()).collect()
}

/// What one direction's SPDY framing yields.
enum Seen {
    /// A stream the client opened, with its `port` header and whether it is `data`.
    Open {
        id: u32,
        port: Option<u16>,
        data: bool,
    },
    Data {
        id: u32,
        len: usize,
    },
}

/// A WebSocket framing's payload: bytes, and whether they start a message.
struct Payload {
    bytes: Vec<u8>,
    starts_message: bool,
}

impl State {
    fn open(&mut self, id: u32, port: u16, data: bool) -> Result<(), String> {
        let entry = match self.ports.iter().position(|p| p.port == port) {
            Some(i) => &mut self.ports[i],
            None if self.ports.len() >= MAX_PORTS => return Err(format!("more than {MAX_PORTS} ports")),
            None => {
                self.ports.push(PortBytes { port, ..PortBytes::default() });
                let last = self.ports.len() - 1;
                &mut self.ports[last]
            }
        };
        if data {
            entry.connections += 1;
            self.streams.insert(id, port);
        }
        Ok(())
    }

    fn count(&mut self, side: Side, id: u32, len: usize) {
        let Some(port) = self.streams.get(&id).copied() else { return };
        if let Some(p) = self.ports.iter_mut().find(|p| p.port == port) {
            let n = if side == Side::ToPod { &mut p.bytes_to_pod } else { &mut p.bytes_from_pod };
            *n = n.saturating_add(len as u64);
        }
    }

    /// What was parsed before an error still counts, so the counts do not depend on
    /// where the stream was split.
    fn feed(&mut self, side: Side, data: &[u8]) -> Result<(), String> {
        if self.framing == Framing::Spdy {
            return self.spdy_feed(side, data);
        }
        let mut payloads = Vec::new();
        let unwrapped = self.ws[side as usize].feed(data, side == Side::ToPod, &mut payloads);
        for p in payloads {
            match self.framing {
                Framing::Channels(_) => self.channel_payload(side, p)?,
                _ => self.spdy_feed(side, &p.bytes)?,
            }
        }
        unwrapped
    }

    fn spdy_feed(&mut self, side: Side, data: &[u8]) -> Result<(), String> {
        let mut seen = Vec::new();
        let walked = self.spdy[side as usize].feed(data, side == Side::ToPod, &mut seen);
        for s in seen {
            match s {
                Seen::Open { id, port: Some(port), data } => self.open(id, port, data)?,
                Seen::Open { .. } => {}
                Seen::Data { id, len } => self.count(side, id, len),
            }
        }
        walked
    }

    /// A channel-protocol message piece: its first byte names the channel; the
    /// server's first message on each channel starts with the port.
    fn channel_payload(&mut self, side: Side, p: Payload) -> Result<(), String> {
        let w = &mut self.ws[side as usize];
        let mut bytes = p.bytes.as_slice();
        if p.starts_message {
            let Some((&ch, rest)) = bytes.split_first() else { return Ok(()) };
            w.channel = Some(ch);
            bytes = rest;
            w.prefix_left = if side == Side::FromPod && w.prefixed.insert(ch) { 2 } else { 0 };
        }
        let Some(ch) = w.channel else { return Ok(()) };
        let skip = w.prefix_left.min(bytes.len());
        w.prefix_left -= skip;
        let n = bytes.len() - skip;
        if ch % 2 == 0 && !self.streams.contains_key(&u32::from(ch)) {
            return Err(format!("channel {ch} names no port of the request"));
        }
        self.count(side, u32::from(ch), n);
        Ok(())
    }
}

/// One direction's SPDY frames, walked without keeping data payloads.
#[derive(Default)]
struct SpdyWalk {
    inflater: HeaderInflater,
    head: Vec<u8>,
    at: Walk,
    control: Vec<u8>,
}

#[derive(Clone, Copy, Default)]
enum Walk {
    #[default]
    Head,
    /// A control frame: collected when it is the client's (its header blocks name
    /// the streams, and zlib must see each in order), else skipped.
    Control {
        head: FrameHead,
        keep: bool,
        left: usize,
    },
    Data {
        id: u32,
        left: usize,
    },
}

impl SpdyWalk {
    fn feed(&mut self, mut data: &[u8], from_client: bool, seen: &mut Vec<Seen>) -> Result<(), String> {
        while !data.is_empty() {
            match self.at {
                Walk::Head => {
                    let n = (spdy::FRAME_HEAD_LEN - self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    let Some(head) = spdy::parse_head(&self.head).map_err(|e| e.to_string())? else { continue };
                    self.head.clear();
                    self.at = match head.kind {
                        FrameKind::Data { stream_id } => Walk::Data { id: stream_id, left: head.payload_len },
                        FrameKind::Control(_) if from_client && head.payload_len > MAX_CONTROL_FRAME => return Err(format!("a SPDY control frame of {} bytes", head.payload_len)),
                        FrameKind::Control(_) => Walk::Control { head, keep: from_client, left: head.payload_len },
                    };
                }
                Walk::Data { id, left } => {
                    let n = left.min(data.len());
                    data = &data[n..];
                    if n > 0 {
                        seen.push(Seen::Data { id, len: n });
                    }
                    self.at = Walk::Data { id, left: left - n };
                }
                Walk::Control { head, keep, left } => {
                    let n = left.min(data.len());
                    if keep {
                        self.control.extend_from_slice(&data[..n]);
                    }
                    data = &data[n..];
                    self.at = Walk::Control { head, keep, left: left - n };
                }
            }
            match self.at {
                Walk::Data { left: 0, .. } => self.at = Walk::Head,
                Walk::Control { head, keep, left: 0 } => {
                    self.at = Walk::Head;
                    if keep {
                        let payload = std::mem::take(&mut self.control);
                        self.control_frame(head, &payload, seen)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn control_frame(&mut self, head: FrameHead, payload: &[u8], seen: &mut Vec<Seen>) -> Result<(), String> {
        let frame = spdy::parse_payload(head, payload).map_err(|e| e.to_string())?;
        match frame {
            spdy::Frame::SynStream { stream_id, header_block, .. } => {
                let h = self.inflater.inflate(header_block).map_err(|e| e.to_string())?;
                let port = spdy::header(&h, "port").and_then(|p| p.parse().ok());
                seen.push(Seen::Open { id: stream_id, port, data: spdy::header(&h, "streamtype") == Some("data") });
            }
            spdy::Frame::SynReply { header_block, .. } | spdy::Frame::Headers { header_block, .. } => {
                self.inflater.inflate(header_block).map_err(|e| e.to_string())?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// One direction's WebSocket frames: data payloads unmasked and passed on as they
/// come, control frames skipped.
#[derive(Default)]
struct WsUnwrap {
    head: Vec<u8>,
    /// Inside a frame: bytes left, mask, offset into the payload, whether it is data.
    frame: Option<(u64, Option<[u8; 4]>, usize, bool)>,
    /// The next data byte starts a message.
    between_messages: bool,
    /// Channel protocol: the channel of the message in progress, the port bytes still
    /// to skip, and the channels whose port prefix came.
    channel: Option<u8>,
    prefix_left: usize,
    prefixed: std::collections::HashSet<u8>,
}

impl WsUnwrap {
    fn feed(&mut self, mut data: &[u8], from_client: bool, out: &mut Vec<Payload>) -> Result<(), String> {
        while !data.is_empty() {
            if let Some((left, mask, offset, is_data)) = self.frame {
                let n = left.min(data.len() as u64) as usize;
                if is_data && n > 0 {
                    let mut bytes = data[..n].to_vec();
                    if let Some(key) = mask {
                        ws::apply_mask(&mut bytes, key, offset);
                    }
                    out.push(Payload { bytes, starts_message: std::mem::take(&mut self.between_messages) });
                }
                data = &data[n..];
                self.frame = (left > n as u64).then_some((left - n as u64, mask, offset + n, is_data));
                continue;
            }
            self.head.push(data[0]);
            data = &data[1..];
            let Some(head) = ws::parse_head(&self.head).map_err(|e| e.to_string())? else { continue };
            self.head.clear();
            if from_client && head.mask.is_none() {
                return Err("an unmasked client frame".into());
            }
            let is_data = head.opcode <= ws::OP_BINARY;
            if head.opcode == ws::OP_TEXT {
                return Err("a text frame".into());
            }
            // The kubelet's x/net/websocket reads every frame, a continuation too, as a
            // message of its own whose first byte names the channel: so does the
            // channel count. (SPDY inside WebSocket is one byte stream either way.)
            if is_data {
                self.between_messages = true;
            }
            if head.payload_len > 0 {
                self.frame = Some((head.payload_len, head.mask, 0, is_data));
            }
        }
        Ok(())
    }
}

/// A direction of the tunnel: counted, then forwarded. In fail-closed, a failed count
/// ends the forward before anything uncounted reaches the other side.
struct Counted {
    out: WriteHalf,
    side: Side,
    meter: Arc<Meter>,
}

impl Sink for Counted {
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.meter.feed(self.side, data).map_err(io::Error::other)?;
        self.out.send(data)
    }
    fn close(&mut self) {
        self.out.close();
    }
}

/// Runs the port-forward's tunnel with both directions counted into `meter`.
pub fn run(name: &str, client: (Input, WriteHalf), server: (Input, WriteHalf), meter: &Arc<Meter>) -> io::Result<Totals> {
    let down = Counted { out: client.1, side: Side::FromPod, meter: meter.clone() };
    let up = Counted { out: server.1, side: Side::ToPod, meter: meter.clone() };
    tunnel::tunnel(name, (client.0, down), (server.0, up))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::spdy::{encode_data, encode_syn_reply, encode_syn_stream, HeaderDeflater};
    use crate::wire::testutil::for_each_split;

    /// A kubectl-like SPDY port-forward: two connections to 8080, one to 9090.
    fn spdy_forward() -> (Vec<u8>, Vec<u8>) {
        let (mut cz, mut sz) = (HeaderDeflater::default(), HeaderDeflater::default());
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for (req, port, ids) in [("0", "8080", (1, 3)), ("1", "9090", (5, 7)), ("2", "8080", (9, 11))] {
            for (id, t) in [(ids.0, "error"), (ids.1, "data")] {
                up.extend(encode_syn_stream(id, 0, &cz.deflate(&[("streamtype", t), ("port", port), ("requestid", req)])));
                down.extend(encode_syn_reply(id, 0, &sz.deflate(&[])));
            }
        }
        up.extend(encode_data(3, 0, &[1; 1000]));
        up.extend(encode_data(7, 0, &[2; 10]));
        up.extend(encode_data(11, spdy::FLAG_FIN, &[3; 24]));
        up.extend(spdy::encode_ping(1));
        down.extend(encode_data(3, 0, &[4; 3000]));
        down.extend(encode_data(1, spdy::FLAG_FIN, b"")); // error stream: not data
        down.extend(encode_data(7, 0, &[5; 70]));
        down.extend(encode_data(11, 0, &[6; 6]));
        (up, down)
    }

    fn counts(m: &Meter) -> Vec<(u16, u64, u64, u64)> {
        m.report().ports.iter().map(|p| (p.port, p.connections, p.bytes_to_pod, p.bytes_from_pod)).collect()
    }

    const WANT: &[(u16, u64, u64, u64)] = &[(8080, 2, 1024, 3006), (9090, 1, 10, 70)];

    #[test]
    fn spdy_ports_and_bytes_at_any_split() {
        let (up, down) = spdy_forward();
        for_each_split(&down, |pieces| {
            let m = Meter::new("SPDY/3.1", "portforward.k8s.io", "", FailMode::Open);
            m.feed(Side::ToPod, &up).unwrap();
            for p in pieces {
                m.feed(Side::FromPod, p).unwrap();
            }
            assert_eq!(counts(&m), WANT);
            assert!(!m.report().truncated);
        });
    }

    /// Each write of the SPDY stream as a WebSocket binary message, as client-go's
    /// `TunnelingConnection` sends it.
    fn tunnelled(spdy: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, piece) in spdy.chunks(700).enumerate() {
            out.extend(ws::encode_frame(true, ws::OP_BINARY, mask, piece));
            if i == 1 {
                out.extend(ws::encode_frame(true, ws::OP_PING, mask, b"p"));
            }
        }
        out
    }

    #[test]
    fn spdy_over_websocket_at_any_split() {
        let (up, down) = spdy_forward();
        let (up, down) = (tunnelled(&up, Some([9, 8, 7, 6])), tunnelled(&down, None));
        for_each_split(&up, |pieces| {
            let m = Meter::new("websocket", SPDY_OVER_WEBSOCKET, "", FailMode::Open);
            for p in pieces {
                m.feed(Side::ToPod, p).unwrap();
            }
            m.feed(Side::FromPod, &down).unwrap();
            assert_eq!(counts(&m), WANT);
        });
    }

    #[test]
    fn kubelet_channels_skip_the_port_prefix() {
        let mask = Some([1, 2, 3, 4]);
        let msg = |ch: u8, data: &[u8], mask| ws::encode_frame(true, ws::OP_BINARY, mask, &[&[ch], data].concat());
        let port = |p: u16| p.to_le_bytes().to_vec();
        let down =
            [msg(0, &port(8080), None), msg(1, &port(8080), None), msg(2, &[&port(9090)[..], &[7; 5]].concat(), None), msg(3, &port(9090), None), msg(0, &[8; 40], None)].concat();
        let up = [msg(0, &[1; 12], mask), msg(2, &[2; 3], mask)].concat();
        for_each_split(&down, |pieces| {
            let m = Meter::new("websocket", "v4.channel.k8s.io", "ports=8080,9090", FailMode::Open);
            m.feed(Side::ToPod, &up).unwrap();
            for p in pieces {
                m.feed(Side::FromPod, p).unwrap();
            }
            assert_eq!(counts(&m), [(8080, 1, 12, 40), (9090, 1, 3, 5)]);
        });
        let m = Meter::new("websocket", "v4.channel.k8s.io", "ports=8080", FailMode::Open);
        m.feed(Side::ToPod, &msg(6, b"x", mask)).unwrap();
        assert!(m.report().reason.unwrap_or_default().contains("channel 6 names no port"));
        // A continuation frame is a message of its own to the kubelet: its first byte
        // is a channel, so bytes hidden behind "channel 1" are counted for channel 0.
        let m = Meter::new("websocket", "v4.channel.k8s.io", "ports=8080", FailMode::Closed);
        let first = ws::encode_frame(false, ws::OP_BINARY, mask, &[1, 9, 9]);
        let cont = ws::encode_frame(true, ws::OP_CONTINUATION, mask, &[&[0u8][..], &[5; 10]].concat());
        m.feed(Side::ToPod, &[first, cont].concat()).unwrap();
        assert_eq!(counts(&m), [(8080, 1, 10, 0)]);
    }

    #[test]
    fn ports_past_the_cap_end_a_fail_closed_forward() {
        let many: Vec<String> = (1..=MAX_PORTS as u16 + 1).map(|p| p.to_string()).collect();
        let query = format!("ports={}", many.join(","));
        for (mode, ends) in [(FailMode::Open, false), (FailMode::Closed, true)] {
            let m = Meter::new("websocket", "v4.channel.k8s.io", &query, mode);
            assert_eq!(m.feed(Side::ToPod, &[]).is_err(), ends, "{mode:?}");
            assert!(m.report().truncated, "{mode:?}");
        }
    }

    /// Through the tunnel itself: the API server sends garbage mid-forward.
    #[test]
    fn the_forward_runs_on_past_garbage_in_fail_open_and_ends_in_fail_closed() {
        use crate::net::testutil::conn_pair;
        use std::io::{Read, Write};
        let (up, _) = spdy_forward();
        let garbage = [0x80, 0x09, 0, 1, 0, 0, 0, 0];
        for mode in [FailMode::Open, FailMode::Closed] {
            let ((mut kubectl, client), (mut apiserver, server)) = (conn_pair(), conn_pair());
            let meter = Arc::new(Meter::new("SPDY/3.1", "portforward.k8s.io", "", mode));
            let m = meter.clone();
            let forward = std::thread::spawn(move || run("t", (Input::new(client.read), client.write), (Input::new(server.read), server.write), &m));
            kubectl.write_all(&up).unwrap();
            let mut passed = vec![0u8; up.len()];
            apiserver.read_exact(&mut passed).unwrap();
            assert_eq!(passed, up, "{mode:?}: bytes pass unchanged");
            apiserver.write_all(&[&garbage[..], b"after"].concat()).unwrap();
            apiserver.shutdown(std::net::Shutdown::Write).unwrap();
            kubectl.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            let _ = kubectl.read_to_end(&mut got);
            drop(kubectl);
            let _ = forward.join().unwrap();
            match mode {
                FailMode::Open => assert_eq!(got, [&garbage[..], b"after"].concat(), "fail-open: the forward runs on"),
                FailMode::Closed => assert!(got.is_empty(), "fail-closed: nothing uncounted passes: {got:?}"),
            }
            assert!(meter.report().truncated, "{mode:?}");
        }
    }

    #[test]
    fn garbage_stops_the_counts_and_the_fail_mode_decides() {
        let (up, _) = spdy_forward();
        for (mode, ends) in [(FailMode::Open, false), (FailMode::Closed, true)] {
            let m = Meter::new("SPDY/3.1", "portforward.k8s.io", "", mode);
            m.feed(Side::ToPod, &up).unwrap();
            assert_eq!(m.feed(Side::FromPod, &[0x80, 0x09, 0, 1, 0, 0, 0, 0]).is_err(), ends, "{mode:?}");
            assert_eq!(m.feed(Side::FromPod, &encode_data(3, 0, b"more")).is_err(), ends, "{mode:?}: and after");
            let r = m.report();
            assert!(r.truncated && r.reason.as_deref().unwrap_or("").contains("server's"), "{r:?}");
            assert_eq!(r.ports[0].bytes_from_pod, 0, "nothing is counted after");
        }
        let m = Meter::new("websocket", "base64.channel.k8s.io", "", FailMode::Open);
        assert!(m.feed(Side::ToPod, b"x").is_ok() && m.report().truncated, "a framing it does not count");
        let m = Meter::new("websocket", SPDY_OVER_WEBSOCKET, "", FailMode::Open);
        m.feed(Side::ToPod, &ws::encode_frame(true, ws::OP_BINARY, None, b"x")).unwrap();
        assert!(m.report().reason.unwrap_or_default().contains("unmasked"));
        let m = Meter::new("SPDY/3.1", "", "", FailMode::Open);
        let mut z = HeaderDeflater::default();
        for port in 0..MAX_PORTS as u32 + 3 {
            m.feed(Side::ToPod, &encode_syn_stream(2 * port + 1, 0, &z.deflate(&[("streamtype", "data"), ("port", &(port + 1).to_string())]))).unwrap();
        }
        let r = m.report();
        assert_eq!((r.ports.len(), r.truncated), (MAX_PORTS, true));
    }
}
