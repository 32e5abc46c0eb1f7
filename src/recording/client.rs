//! The proxy's side of the recorder protocol (see `record::protocol`): connects to the first
//! recorder that answers, gets the session header acknowledged, then streams event
//! lines from a bounded queue on a writer thread while an ack thread tracks what the
//! recorder has durably written.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender, TrySendError};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde_json::Value;

use crate::error::{Context, Error, Result};
use crate::net::conn::{Conn, Input, WriteHalf};
use crate::net::sync::lock;
use crate::net::websocket;
use crate::record::protocol::{Ack, ClientMessage, Outcome, PATH, SUBPROTOCOL};
use crate::recording::health::RecorderHealth;
use crate::wire::ws;

/// Batches of event lines queued for the recorder before the queue counts as full.
pub const EVENT_QUEUE: usize = 1024;
/// Bytes sent but not yet acknowledged before the writer waits for the recorder.
const MAX_UNACKED: u64 = 8 * 1024 * 1024;
/// A recorder acknowledges at least once a second; silence this long means lost.
pub const SILENT_RECORDER: Duration = Duration::from_secs(5);
/// How long `finish` waits for the last bytes to be acknowledged.
const FINAL_ACK_WAIT: Duration = Duration::from_secs(5);

/// A recorder to try, from the policy.
#[derive(Clone)]
pub struct RecorderTarget {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub server_name: ServerName<'static>,
    pub tls: Arc<ClientConfig>,
}

struct Shared {
    sent: AtomicU64,
    acked: AtomicU64,
    last_ack: Mutex<Instant>,
    lost: Mutex<Option<String>>,
    /// Woken on every acknowledgement and on loss, for output waiting to be durable.
    progress: Condvar,
}

impl Shared {
    fn set_lost(&self, why: String) {
        let mut l = lock(&self.lost);
        if l.is_none() {
            *l = Some(why);
        }
        self.progress.notify_all();
    }

    /// Waits until the recorder has durably written everything up to `offset`.
    /// Fails when the recorder is lost, or acknowledges nothing new for `silence`.
    fn wait_acked(&self, offset: u64, silence: Duration) -> Result<(), String> {
        let mut lost = lock(&self.lost);
        let mut acked = self.acked.load(Ordering::SeqCst);
        let mut since = Instant::now();
        while acked < offset {
            if let Some(why) = lost.as_ref() {
                return Err(why.clone());
            }
            let left = silence.saturating_sub(since.elapsed());
            if left.is_zero() {
                return Err(format!("the recorder acknowledged nothing for {}s", silence.as_secs()));
            }
            lost = self.progress.wait_timeout(lost, left).unwrap_or_else(|e| e.into_inner()).0;
            let now = self.acked.load(Ordering::SeqCst);
            if now > acked {
                // Progress restarts the silence bound: a slow recorder is not a dead one.
                acked = now;
                since = Instant::now();
            }
        }
        Ok(())
    }

    fn set_acked(&self, acked: u64) {
        // Under the `lost` lock, so a waiter cannot miss the wake-up between its check
        // and its wait.
        let _l = lock(&self.lost);
        self.acked.fetch_max(acked, Ordering::SeqCst);
        *lock(&self.last_ack) = Instant::now();
        self.progress.notify_all();
    }
}

enum Out {
    Lines(Vec<u8>),
    End(ClientMessage),
}

/// A session being recorded.
pub struct Recording {
    pub recorder: String,
    tx: Sender<Out>,
    /// Bytes queued so far, header included: the offset each queued batch ends at.
    queued: Mutex<u64>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    socket: TcpStream,
}

/// Why an event could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The queue is full: the recorder is not keeping up.
    Full,
    Lost(String),
}

pub fn mask() -> Option<[u8; 4]> {
    let mut k = [0u8; 4];
    crate::net::random::fill(&mut k);
    Some(k)
}

fn text_frame(msg: &impl serde::Serialize) -> Vec<u8> {
    ws::encode_frame(true, ws::OP_TEXT, mask(), serde_json::to_string(msg).unwrap_or_default().as_bytes())
}

/// Connects to `target` and upgrades `path` to WebSocket with `subprotocol`.
pub fn dial(target: &RecorderTarget, path: &str, subprotocol: &str, timeout: Duration) -> Result<(Input, WriteHalf, TcpStream)> {
    let deadline = Instant::now() + timeout;
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", target.host))?
        .next()
        .ok_or_else(|| Error::new(format!("{}: no address", target.host)))?;
    let sock = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    let socket = sock.try_clone()?;
    let left = deadline.saturating_duration_since(Instant::now());
    let conn = Conn::connect_tls(sock, &target.tls, target.server_name.clone(), left)?;
    let (mut input, mut out) = (Input::new(conn.read), conn.write);
    websocket::connect(&mut input, &mut out, &target.host, path, subprotocol, deadline).context("recorder")?;
    Ok((input, out, socket))
}

/// Connects, upgrades and gets the header acknowledged within `timeout`.
fn open(target: &RecorderTarget, id: &str, header: &Value, timeout: Duration) -> Result<(Input, WriteHalf, TcpStream, u64)> {
    let deadline = Instant::now() + timeout;
    let (mut input, mut out, socket) = dial(target, PATH, SUBPROTOCOL, timeout)?;
    out.write_all(&text_frame(&ClientMessage::Start { id: id.to_string(), header: header.clone() }))?;
    loop {
        let frame = match websocket::next_frame_by(&mut input, deadline) {
            Ok(Some(frame)) => frame,
            Ok(None) => crate::bail!("recorder closed the connection before acknowledging"),
            Err(e) if websocket::is_timeout(&e) => crate::bail!("recorder did not acknowledge the header within {timeout:?}"),
            Err(e) => return Err(e).context("reading the recorder's acknowledgement"),
        };
        match frame.opcode {
            ws::OP_TEXT => {
                let ack: Ack = serde_json::from_slice(&frame.payload).context("recorder acknowledgement")?;
                if ack.acked > 0 {
                    input.half.set_timeout(None)?;
                    return Ok((input, out, socket, ack.acked));
                }
            }
            ws::OP_CLOSE => return Err(Error::new(format!("{REFUSED}{}", ws::close_reason(&frame.payload)))),
            _ => {}
        }
    }
}

/// How an answer refusing the session starts: the recorder is up and said why (a full
/// spool refuses fail-closed sessions only), so it is not a failed recorder to skip.
const REFUSED: &str = "recorder refused the session: ";

/// Tracks the recorder's acknowledgements until the stream ends; returns why it ended.
fn read_acks(input: &mut Input, shared: &Shared) -> String {
    loop {
        let frame = match websocket::next_frame(input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return "recorder closed the connection".to_string(),
            Err(e) => return format!("reading from recorder: {e}"),
        };
        match frame.opcode {
            ws::OP_TEXT => match serde_json::from_slice::<Ack>(&frame.payload) {
                Ok(ack) => shared.set_acked(ack.acked),
                Err(e) => return format!("bad acknowledgement: {e}"),
            },
            ws::OP_CLOSE => return format!("recorder closed the session: {}", ws::close_reason(&frame.payload)),
            _ => {}
        }
    }
}

impl Recording {
    /// Tries each target in order, each within `attempt_timeout`.
    /// Recorders `health` knows failed lately are skipped (and said to be), and every
    /// attempt's outcome is told to it.
    pub fn start(targets: &[RecorderTarget], id: &str, header: &Value, attempt_timeout: Duration, health: &RecorderHealth) -> Result<Recording> {
        let mut errors = Vec::new();
        for t in targets {
            if let Some(why) = health.skipped(&t.name, Instant::now()) {
                log::info!("recorder skipped recorder={} reason={why}", t.name);
                errors.push(format!("{}: {why}", t.name));
                continue;
            }
            match open(t, id, header, attempt_timeout) {
                Ok((input, out, socket, header_bytes)) => {
                    health.succeeded(&t.name);
                    return Ok(Recording::run(t.name.clone(), input, out, socket, header_bytes));
                }
                Err(e) => {
                    if e.to_string().starts_with(REFUSED) {
                        health.succeeded(&t.name);
                    } else {
                        health.failed(&t.name, &e.to_string(), Instant::now());
                    }
                    errors.push(format!("{}: {e}", t.name));
                }
            }
        }
        if errors.is_empty() {
            crate::bail!("no recorders are configured for this caller");
        }
        crate::bail!("{}", errors.join("; "))
    }

    /// `header_bytes`: what the recorder acknowledged for the header, so `sent` and
    /// `acked` count the same bytes.
    fn run(recorder: String, mut input: Input, mut out: WriteHalf, socket: TcpStream, header_bytes: u64) -> Recording {
        let shared = Arc::new(Shared {
            sent: AtomicU64::new(header_bytes),
            acked: AtomicU64::new(header_bytes),
            last_ack: Mutex::new(Instant::now()),
            lost: Mutex::new(None),
            progress: Condvar::new(),
        });
        let acks = shared.clone();
        let _ = thread::Builder::new().name("rec-ack".into()).spawn(move || {
            let why = read_acks(&mut input, &acks);
            acks.set_lost(why);
        });
        let (tx, rx) = bounded::<Out>(EVENT_QUEUE);
        let w = shared.clone();
        let writer = thread::Builder::new().name("rec-write".into()).spawn(move || {
            for item in rx.iter() {
                let frame = match &item {
                    Out::Lines(bytes) => {
                        // Bound what the recorder holds unacknowledged; a stuck recorder
                        // then fills the queue, and the session's fail mode decides.
                        let sent = w.sent.load(Ordering::SeqCst);
                        if let Err(why) = w.wait_acked(sent.saturating_sub(MAX_UNACKED), SILENT_RECORDER) {
                            w.set_lost(why);
                            return;
                        }
                        ws::encode_frame(true, ws::OP_BINARY, mask(), bytes)
                    }
                    Out::End(msg) => text_frame(msg),
                };
                if let Err(e) = out.write_all(&frame) {
                    w.set_lost(format!("writing to recorder: {e}"));
                    return;
                }
                if let Out::Lines(bytes) = item {
                    w.sent.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                } else {
                    let _ = out.write_all(&ws::close_frame(1000, "", mask()));
                }
            }
        });
        Recording { recorder, tx, queued: Mutex::new(header_bytes), shared, writer: writer.ok(), socket }
    }

    /// Queues whole event lines without waiting; returns the offset they end at, for
    /// [`Self::wait_acked`].
    pub fn send(&self, lines: Vec<u8>) -> Result<u64, SendError> {
        if let Some(why) = self.lost() {
            return Err(SendError::Lost(why));
        }
        // Held across the send so offsets follow queue order.
        let mut queued = lock(&self.queued);
        let end = *queued + lines.len() as u64;
        match self.tx.try_send(Out::Lines(lines)) {
            Ok(()) => {
                *queued = end;
                Ok(end)
            }
            Err(TrySendError::Full(_)) => Err(SendError::Full),
            Err(TrySendError::Disconnected(_)) => Err(SendError::Lost("recorder writer stopped".into())),
        }
    }

    /// Waits until the recorder has durably written everything up to `offset`.
    /// Fails when the recorder is lost, or acknowledges nothing new for `silence`.
    pub fn wait_acked(&self, offset: u64, silence: Duration) -> Result<(), String> {
        self.shared.wait_acked(offset, silence)
    }

    /// Why the recorder counts as lost, if it does.
    pub fn lost(&self) -> Option<String> {
        if let Some(why) = lock(&self.shared.lost).clone() {
            return Some(why);
        }
        let silent = lock(&self.shared.last_ack).elapsed();
        (silent > SILENT_RECORDER).then(|| format!("recorder silent for {}s", silent.as_secs()))
    }

    /// (sent, acknowledged) bytes of the recording, header included.
    pub fn progress(&self) -> (u64, u64) {
        (self.shared.sent.load(Ordering::SeqCst), self.shared.acked.load(Ordering::SeqCst))
    }

    /// Ends the session and waits a little for the last acknowledgement.
    pub fn finish(mut self, outcome: Outcome, exit_code: Option<i32>, reason: Option<String>) -> (u64, u64) {
        let lost = self.lost().is_some();
        if !lost {
            let _ = self.tx.send_timeout(Out::End(ClientMessage::End { outcome, exit_code, reason }), FINAL_ACK_WAIT);
        }
        let (tx, _) = bounded(1);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if !lost {
            // What is not acknowledged by then is counted as sent, not acked.
            let _ = self.shared.wait_acked(self.shared.sent.load(Ordering::SeqCst), FINAL_ACK_WAIT);
        }
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        self.progress()
    }
}

/// What a session needs of its recording; [`Recording`] is the real one. The seam
/// `proxy::session`'s failure table scripts a recorder through.
pub trait RecorderLink: Send + Sync {
    /// Queues whole event lines without waiting; the offset they end at.
    fn send(&self, lines: Vec<u8>) -> Result<u64, SendError>;
    /// Waits until everything up to `offset` is durable, or the recorder has been
    /// silent for `silence`.
    fn wait_acked(&self, offset: u64, silence: Duration) -> Result<(), String>;
    /// Why the recording is lost, once it is.
    fn lost(&self) -> Option<String>;
    /// Ends the recording; bytes sent and acknowledged.
    fn finish(self: Box<Self>, outcome: Outcome, exit_code: Option<i32>, reason: Option<String>) -> (u64, u64);
}

impl RecorderLink for Recording {
    fn send(&self, lines: Vec<u8>) -> Result<u64, SendError> {
        Recording::send(self, lines)
    }
    fn wait_acked(&self, offset: u64, silence: Duration) -> Result<(), String> {
        Recording::wait_acked(self, offset, silence)
    }
    fn lost(&self) -> Option<String> {
        Recording::lost(self)
    }
    fn finish(self: Box<Self>, outcome: Outcome, exit_code: Option<i32>, reason: Option<String>) -> (u64, u64) {
        Recording::finish(*self, outcome, exit_code, reason)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// A recorder target from its policy entry: URL `https://host:port`, CA roots, and
/// the proxy's client identity.
pub fn target(
    name: &str,
    url: &str,
    roots: rustls::RootCertStore,
    identity: Option<(Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>)>,
) -> Result<RecorderTarget> {
    let rest = url.strip_prefix("https://").ok_or_else(|| Error::new(format!("recorder {name}: url {url:?} must be https://")))?;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = authority.rsplit_once(':').ok_or_else(|| Error::new(format!("recorder {name}: url {url:?} needs a port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port: u16 = port.parse().map_err(|_| Error::new(format!("recorder {name}: bad port in {url:?}")))?;
    let server_name = ServerName::try_from(host.clone()).map_err(|e| Error::new(format!("recorder {name}: {e}")))?;
    Ok(RecorderTarget { name: name.to_string(), host, port, server_name, tls: crate::net::tls::client_config(roots, identity)? })
}
