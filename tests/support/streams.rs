//! A raw exec, attach and port-forward client over TLS, for what kubectl never sends:
//! SPDY/3.1 (`X-Stream-Protocol-Version`, SYN_STREAMs with `streamtype` headers) and
//! WebSocket (`v5`/`v4.channel.k8s.io`, masked frames), with the test building every
//! frame itself (reused, unknown, even or decreasing stream ids, text frames, huge
//! control frames, reserved bits). A reader thread collects every byte received, per
//! SPDY stream or WebSocket channel, and when the peer closed; tests wait on that
//! state with deadlines.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kubetape::net::conn::{Conn, ReadHalf, WriteHalf};
use kubetape::wire::http::{self, BodyLength, ResponseHead};
use kubetape::wire::{spdy, ws};

/// How long connecting and reading a response head may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);
/// A response body larger than this is cut (tests only look at its start).
const MAX_BODY: usize = 1024 * 1024;

/// How the request asks to switch protocols.
#[derive(Clone, Copy, Debug)]
pub enum Upgrade {
    /// `POST`-style SPDY/3.1 upgrade offering this one `X-Stream-Protocol-Version`.
    Spdy(&'static str),
    /// WebSocket offering this `Sec-WebSocket-Protocol` list.
    WebSocket(&'static str),
    /// A plain request (`Content-Length: 0`).
    None,
}

/// What the server answered.
pub enum Answer {
    /// Anything but 101, with its body.
    Response {
        status: u16,
        body: String,
    },
    Switched(Box<Session>),
}

/// Everything received after the 101.
#[derive(Clone, Debug, Default)]
pub struct Received {
    /// SPDY: DATA payloads by stream id. WebSocket: message bytes by channel (the
    /// first byte of each message, not included).
    pub data: BTreeMap<u32, Vec<u8>>,
    /// SPDY streams the server finished (FIN).
    pub fins: BTreeSet<u32>,
    /// SPDY RST_STREAMs: (stream id, status).
    pub resets: Vec<(u32, u32)>,
    pub goaway: bool,
    /// WebSocket: the close frame's payload.
    pub ws_close: Option<Vec<u8>>,
    /// Anything else worth telling a reader: text frames, parse errors.
    pub notes: Vec<String>,
    /// When the peer closed the connection (EOF or error), if it did before we did.
    pub closed: Option<Instant>,
}

impl Received {
    pub fn bytes(&self, id: u32) -> &[u8] {
        self.data.get(&id).map(Vec::as_slice).unwrap_or_default()
    }
}

struct Shared {
    state: Mutex<Received>,
    changed: Condvar,
    /// Set before we shut the socket down, so our own close is not the peer's.
    hanging_up: std::sync::atomic::AtomicBool,
}

/// A switched connection: send frames, watch what arrives.
pub struct Session {
    /// The negotiated `X-Stream-Protocol-Version` or `Sec-WebSocket-Protocol`.
    pub subprotocol: String,
    pub upgraded_at: Instant,
    write: WriteHalf,
    deflater: spdy::HeaderDeflater,
    shared: Arc<Shared>,
    socket: TcpStream,
    reader: Option<JoinHandle<()>>,
}

fn kubeconfig_field(kubeconfig: &Path, field: &str) -> Vec<u8> {
    super::kubeconfig_field(kubeconfig, field)
}

/// Opens TLS to `addr` presenting the kubeconfig's client certificate.
pub fn connect(addr: &str, kubeconfig: &Path) -> Conn {
    super::init_crypto();
    let ca = kubeconfig_field(kubeconfig, "certificate-authority-data");
    let roots = kubetape::net::tls::roots_from_pem(&ca, "ca").expect("roots");
    let cert = kubeconfig_field(kubeconfig, "client-certificate-data");
    let key = kubeconfig_field(kubeconfig, "client-key-data");
    let identity = (kubetape::net::tls::certs_from_pem(&cert, "cert").expect("cert"), kubetape::net::tls::key_from_pem(&key, "key").expect("key"));
    let config = kubetape::net::tls::client_config(roots, Some(identity)).expect("client config");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let sock = TcpStream::connect(addr).expect("connect to the proxy");
    Conn::connect_tls(sock, &config, name, RESPONSE_TIMEOUT).expect("TLS to the proxy")
}

/// The request head a test sends: `target` goes on the request line byte for byte.
pub fn request_head(method: &str, target: &str, host: &str, upgrade: Upgrade) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kubetape-bypass-test\r\n");
    match upgrade {
        Upgrade::Spdy(version) => {
            head.push_str(&format!("Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {version}\r\n"));
        }
        Upgrade::WebSocket(protocols) => {
            let mut key = [0u8; 16];
            kubetape::net::random::fill(&mut key);
            head.push_str(&format!(
                "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Protocol: {protocols}\r\n",
                kubetape::wire::base64::encode(&key)
            ));
        }
        Upgrade::None => head.push_str("Content-Length: 0\r\n"),
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Reads a response head, then (not 101) its body; the bytes after a 101's head are
/// returned for the stream reader.
fn read_response(read: &mut ReadHalf, method: &str) -> Result<(ResponseHead, Vec<u8>), String> {
    read.set_timeout(Some(RESPONSE_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (head, used) = loop {
        if let Some(found) = http::parse_response(&buf).map_err(|e| format!("bad response head: {e}"))? {
            break found;
        }
        match read.read(&mut chunk) {
            Ok(0) => return Err(format!("connection closed before a response head ({} bytes)", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading the response head: {e}")),
        }
    };
    let mut rest = buf[used..].to_vec();
    if head.status == 101 {
        return Ok((head, rest));
    }
    let framing = http::response_body(method, &head).unwrap_or(BodyLength::UntilClose);
    let mut more = |rest: &mut Vec<u8>| -> bool {
        match read.read(&mut chunk) {
            Ok(n @ 1..) => {
                rest.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    };
    let body = match framing {
        BodyLength::Empty => Vec::new(),
        BodyLength::Length(len) => {
            while (rest.len() as u64) < len && rest.len() < MAX_BODY && more(&mut rest) {}
            rest
        }
        BodyLength::Chunked => {
            let mut dec = http::ChunkedDecoder::default();
            let mut out = Vec::new();
            loop {
                let Ok(n) = dec.decode(&rest, &mut out) else { break out };
                rest.drain(..n);
                if dec.is_done() || out.len() > MAX_BODY || !more(&mut rest) {
                    break out;
                }
            }
        }
        BodyLength::UntilClose => {
            while rest.len() < MAX_BODY && more(&mut rest) {}
            rest
        }
    };
    Ok((head, body))
}

/// Sends one request on a fresh connection to `addr` as the kubeconfig's user.
pub fn send(addr: &str, kubeconfig: &Path, method: &str, target: &str, upgrade: Upgrade) -> Result<Answer, String> {
    let conn = connect(addr, kubeconfig);
    let (mut read, mut write) = (conn.read, conn.write);
    write.write_all(&request_head(method, target, addr, upgrade)).map_err(|e| format!("sending the request: {e}"))?;
    let (head, rest) = read_response(&mut read, method)?;
    if head.status != 101 {
        return Ok(Answer::Response { status: head.status, body: String::from_utf8_lossy(&rest).into_owned() });
    }
    let subprotocol = head.headers.get_str("x-stream-protocol-version").or(head.headers.get_str("sec-websocket-protocol")).unwrap_or("").to_string();
    let websocket = head.headers.get_str("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    Ok(Answer::Switched(Box::new(Session::start(read, write, rest, subprotocol, websocket))))
}

impl Session {
    fn start(read: ReadHalf, write: WriteHalf, leftover: Vec<u8>, subprotocol: String, websocket: bool) -> Session {
        let socket = read.shutdown_handle().expect("socket handle");
        let shared = Arc::new(Shared { state: Mutex::new(Received::default()), changed: Condvar::new(), hanging_up: Default::default() });
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("test-stream-read".into())
                .spawn(move || if websocket { read_ws(read, leftover, &shared) } else { read_spdy(read, leftover, &shared) })
                .expect("reader thread")
        };
        Session { subprotocol, upgraded_at: Instant::now(), write, deflater: spdy::HeaderDeflater::default(), shared, socket, reader: Some(reader) }
    }

    /// Writes raw bytes (frames built by the helpers below, or anything else).
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes)
    }

    /// A SYN_STREAM carrying `headers`, compressed with this connection's deflater.
    pub fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)]) -> Vec<u8> {
        spdy::encode_syn_stream(id, 0, &self.deflater.deflate(headers))
    }

    /// A SYN_STREAM whose header block is padded past `at_least` bytes with empty
    /// deflate stored blocks: valid zlib that inflates to the same small header list,
    /// so only the frame's size is out of the ordinary.
    pub fn padded_syn_stream(&mut self, id: u32, headers: &[(&str, &str)], at_least: usize) -> Vec<u8> {
        let mut block = self.deflater.deflate(headers);
        // After a sync flush the stream is byte-aligned; each `00 0000 ffff` is a
        // non-final stored block of length 0 (RFC 1951 section 3.2.4).
        while block.len() <= at_least {
            block.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        }
        spdy::encode_syn_stream(id, 0, &block)
    }

    /// Every byte received so far.
    pub fn received(&self) -> Received {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `done` holds for what was received, or the peer closed, or
    /// `timeout` passed; returns what was received by then.
    pub fn wait(&self, timeout: Duration, done: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if done(&st) || st.closed.is_some() {
                return st.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return st.clone();
            }
            st = self.shared.changed.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Closes our side and waits for the reader to finish.
    pub fn hang_up(mut self) -> Received {
        self.stop();
        self.received()
    }

    fn stop(&mut self) {
        self.shared.hanging_up.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A DATA frame.
pub fn spdy_data(id: u32, payload: &[u8], fin: bool) -> Vec<u8> {
    spdy::encode_data(id, if fin { spdy::FLAG_FIN } else { 0 }, payload)
}

/// A client WebSocket frame, masked with a fresh key.
pub fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut key = [0u8; 4];
    kubetape::net::random::fill(&mut key);
    ws::encode_frame(fin, opcode, Some(key), payload)
}

fn update(shared: &Shared, f: impl FnOnce(&mut Received)) {
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut st);
    shared.changed.notify_all();
}

fn closed(shared: &Shared, why: String) {
    let ours = shared.hanging_up.load(std::sync::atomic::Ordering::SeqCst);
    update(shared, |r| {
        if !ours {
            r.closed = Some(Instant::now());
            r.notes.push(format!("connection ended: {why}"));
        }
    });
}

/// Reads until EOF, handing each read to `parse` (which consumes what it can).
fn read_loop(mut read: ReadHalf, mut buf: Vec<u8>, shared: &Shared, mut parse: impl FnMut(&mut Vec<u8>) -> Result<(), String>) {
    let _ = read.set_timeout(None);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut broken = false;
    loop {
        if !broken {
            if let Err(e) = parse(&mut buf) {
                update(shared, |r| r.notes.push(format!("cannot parse what the server sent: {e}")));
                broken = true;
            }
        }
        if broken {
            buf.clear();
        }
        match read.read(&mut chunk) {
            Ok(0) => return closed(shared, "eof".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return closed(shared, e.to_string()),
        }
    }
}

fn read_spdy(read: ReadHalf, leftover: Vec<u8>, shared: &Shared) {
    let mut inflater = spdy::HeaderInflater::default();
    read_loop(read, leftover, shared, |buf| {
        while let Some((frame, n)) = spdy::parse_frame(buf).map_err(|e| e.to_string())? {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            match frame {
                spdy::Frame::Data { stream_id, flags, payload } => {
                    st.data.entry(stream_id).or_default().extend_from_slice(payload);
                    if flags & spdy::FLAG_FIN != 0 {
                        st.fins.insert(stream_id);
                    }
                }
                spdy::Frame::SynReply { header_block, .. } | spdy::Frame::Headers { header_block, .. } | spdy::Frame::SynStream { header_block, .. } => {
                    if let Err(e) = inflater.inflate(header_block) {
                        st.notes.push(format!("server header block: {e}"));
                    }
                }
                spdy::Frame::RstStream { stream_id, status } => st.resets.push((stream_id, status)),
                spdy::Frame::GoAway { .. } => st.goaway = true,
                _ => {}
            }
            shared.changed.notify_all();
            drop(st);
            buf.drain(..n);
        }
        Ok(())
    });
}

fn read_ws(read: ReadHalf, leftover: Vec<u8>, shared: &Shared) {
    let mut channel: Option<u8> = None;
    read_loop(read, leftover, shared, |buf| {
        while let Some((frame, n)) = ws::parse_frame(buf).map_err(|e| e.to_string())? {
            buf.drain(..n);
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            match frame.opcode {
                ws::OP_BINARY | ws::OP_CONTINUATION => {
                    let mut payload = &frame.payload[..];
                    if frame.opcode == ws::OP_BINARY || channel.is_none() {
                        channel = payload.first().copied();
                        payload = payload.get(1..).unwrap_or_default();
                    }
                    if let Some(ch) = channel {
                        st.data.entry(u32::from(ch)).or_default().extend_from_slice(payload);
                    }
                    if frame.fin {
                        channel = None;
                    }
                }
                ws::OP_TEXT => st.notes.push(format!("text frame of {} bytes", frame.payload.len())),
                ws::OP_CLOSE => st.ws_close = Some(frame.payload),
                _ => {}
            }
            shared.changed.notify_all();
        }
        Ok(())
    });
}
