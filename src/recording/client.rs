//! The proxy's side of the recorder protocol (see `record::protocol`): connects to the first
//! recorder that answers, gets the session header acknowledged, then streams event
//! lines from a bounded queue on a writer thread while an ack thread tracks what the
//! recorder has durably written.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
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
/// A fail-open recording with no recorder tries again this often.
const RECONNECT_EVERY: Duration = Duration::from_secs(2);
/// A link whose recorder has acknowledged nothing for this long is lost (it
/// acknowledges at least every second), before the session's own silence bound.
const LINK_SILENCE: Duration = Duration::from_secs(3);
/// A recording whose recorder is lost tries the others for this long (a fail-closed
/// session's output waits meanwhile, within [`SILENT_RECORDER`]), every
/// [`FAILOVER_RETRY`].
const FAILOVER_WINDOW: Duration = Duration::from_secs(4);
const FAILOVER_RETRY: Duration = Duration::from_millis(200);
/// Recorders one session may lose before it stops trying: enough for a rolling
/// update of every replica, few enough that a fault moving with it ends.
const MAX_FAILOVERS: u32 = 8;
/// How often a writer waiting for acknowledgements looks whether its link is gone.
const WINDOW_CHECK: Duration = Duration::from_millis(100);

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
    /// Fail-open, no recorder took the recording after one was lost: it is not lost
    /// (it continues when one does), however long no acknowledgement comes.
    waiting: AtomicBool,
    /// The current recorder connection, to cut when the recording is dropped.
    socket: Mutex<Option<TcpStream>>,
    /// Fail-open: bytes not recorded while no recorder took the recording.
    dropped: AtomicU64,
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

    /// [`Shared::wait_acked`], but also ending when the link says it is gone.
    fn wait_acked_or(&self, offset: u64, silence: Duration, gone: &Receiver<Gone>) -> Result<(), Gone> {
        let (mut since, mut acked) = (Instant::now(), self.acked.load(Ordering::SeqCst));
        loop {
            if let Ok(gone) = gone.try_recv() {
                return Err(gone);
            }
            match self.wait_acked(offset, WINDOW_CHECK) {
                Ok(()) => return Ok(()),
                Err(why) if lock(&self.lost).is_some() => return Err(Gone { why, refused: false }),
                Err(_) => {
                    let now = self.acked.load(Ordering::SeqCst);
                    if now > acked {
                        (since, acked) = (Instant::now(), now);
                    } else if since.elapsed() >= silence {
                        return Err(Gone { why: format!("the recorder acknowledged nothing for {}s", silence.as_secs()), refused: false });
                    }
                }
            }
        }
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

/// A recorder's connection with the session's header acknowledged, and how many bytes.
type Opened = (Input, WriteHalf, TcpStream, u64);

/// Connects, upgrades and gets the header acknowledged within `timeout`: a new
/// session, or with `resume` one continuing from that stream offset. `Ok(Err(why))`:
/// the recorder answered and refused it (a full spool refuses fail-closed sessions
/// only), so it is up, not a failed recorder to skip.
fn open(target: &RecorderTarget, id: &str, header: &Value, resume: Option<u64>, timeout: Duration) -> Result<Result<Opened, String>> {
    let deadline = Instant::now() + timeout;
    let (mut input, mut out, socket) = dial(target, PATH, SUBPROTOCOL, timeout)?;
    out.write_all(&text_frame(&ClientMessage::Start { id: id.to_string(), header: header.clone(), resume }))?;
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
                    if resume.is_some_and(|at| at != ack.acked) {
                        crate::bail!("recorder continued the session at byte {} where {} were acknowledged", ack.acked, resume.unwrap_or(0));
                    }
                    input.half.set_timeout(None)?;
                    return Ok(Ok((input, out, socket, ack.acked)));
                }
            }
            ws::OP_CLOSE => return Ok(Err(format!("recorder refused the session: {}", ws::close_reason(&frame.payload)))),
            _ => {}
        }
    }
}

/// How a recorder connection ended.
struct Gone {
    why: String,
    /// The recorder ended the session itself (its storage failed, say), rather than
    /// going away (1001) or being lost: it is not asked to take it up again.
    refused: bool,
}

/// Tracks the recorder's acknowledgements until the stream ends; says how it ended.
fn read_acks(input: &mut Input, shared: &Shared) -> Gone {
    let lost = |why: String| Gone { why, refused: false };
    loop {
        let frame = match websocket::next_frame(input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return lost("recorder closed the connection".to_string()),
            Err(e) => return lost(format!("reading from recorder: {e}")),
        };
        match frame.opcode {
            ws::OP_TEXT => match serde_json::from_slice::<Ack>(&frame.payload) {
                Ok(ack) => shared.set_acked(ack.acked),
                Err(e) => return lost(format!("bad acknowledgement: {e}")),
            },
            ws::OP_CLOSE => {
                let going_away = frame.payload.get(..2) == Some(&GOING_AWAY.to_be_bytes()[..]);
                return Gone { why: format!("recorder closed the session: {}", ws::close_reason(&frame.payload)), refused: !going_away };
            }
            _ => {}
        }
    }
}

/// The close code of a recorder that is shutting down and asks for the session to move.
const GOING_AWAY: u16 = 1001;

/// Where a session's recording can go: the recorders to try, in order, and what
/// starting or continuing it there takes.
struct Route {
    targets: Vec<RecorderTarget>,
    id: String,
    header: Value,
    attempt_timeout: Duration,
    health: Arc<RecorderHealth>,
}

/// One recorder connection carrying the recording.
struct Link {
    recorder: String,
    out: WriteHalf,
    socket: TcpStream,
    /// Says how, once the recorder's side of the connection ended.
    gone: Receiver<Gone>,
}

impl Route {
    /// Tries each target in order, each within `attempt_timeout`. Recorders `health`
    /// knows failed lately are skipped (and said to be), and every attempt's outcome
    /// is told to it. Returns the link and what the recorder acknowledged.
    /// Each recorder is tried once, in policy order, except: the one just lost (or
    /// going away) after the others, and not at all if it ended the session itself;
    /// those skipped for failing lately only with `try_all` (a fail-closed session,
    /// which would otherwise be refused), after the rest.
    fn connect(&self, resume: Option<u64>, shared: &Arc<Shared>, try_all: bool, last: Option<&LastLost>) -> Result<(Link, u64)> {
        let mut errors = Vec::new();
        let now = Instant::now();
        let is_last = |t: &RecorderTarget| last.is_some_and(|l| l.recorder == t.name);
        let skipped = |t: &RecorderTarget| self.health.skipped(&t.name, now);
        let mut order: Vec<&RecorderTarget> = Vec::new();
        order.extend(self.targets.iter().filter(|t| !is_last(t) && skipped(t).is_none()));
        order.extend(self.targets.iter().filter(|t| is_last(t) && !last.is_some_and(|l| l.refused) && skipped(t).is_none()));
        for t in self.targets.iter().filter(|t| skipped(t).is_some() && !(is_last(t) && last.is_some_and(|l| l.refused))) {
            if try_all {
                order.push(t);
            } else if let Some(why) = skipped(t) {
                log::info!("recorder skipped recorder={} reason={why}", t.name);
                errors.push(format!("{}: {why}", t.name));
            }
        }
        for t in order {
            match open(t, &self.id, &self.header, resume, self.attempt_timeout) {
                Ok(Ok((mut input, out, socket, acked))) => {
                    self.health.succeeded(&t.name);
                    let (tell, gone) = bounded(1);
                    let acks = shared.clone();
                    let _ = thread::Builder::new().name("rec-ack".into()).spawn(move || {
                        let _ = tell.send(read_acks(&mut input, &acks));
                    });
                    *lock(&shared.socket) = socket.try_clone().ok();
                    return Ok((Link { recorder: t.name.clone(), out, socket, gone }, acked));
                }
                Ok(Err(refused)) => {
                    self.health.succeeded(&t.name);
                    errors.push(format!("{}: {refused}", t.name));
                }
                Err(e) => {
                    // A failover's retries of a recorder already skipped do not
                    // lengthen its skip: it may be back any moment.
                    if self.health.skipped(&t.name, Instant::now()).is_none() {
                        self.health.failed(&t.name, &e.to_string(), Instant::now());
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
}

/// The recorder a recording last lost, and whether it ended the session itself.
struct LastLost {
    recorder: String,
    refused: bool,
}

/// The writer thread's state: the link (none while a fail-open recording waits for a
/// recorder), and the frames sent on it that are not acknowledged yet, to send again
/// on the next recorder if this one is lost.
struct Writer {
    route: Route,
    link: Option<Link>,
    shared: Arc<Shared>,
    unacked: VecDeque<(u64, Vec<u8>)>,
    fail_open: bool,
    /// Fail-open, while no recorder was reachable: bytes not recorded, and the time of
    /// the last of them.
    dropped: Option<(u64, f64)>,
    next_attempt: Instant,
    /// The recorder last lost: tried after the others, or not at all.
    last: Option<LastLost>,
    /// Failovers so far: a session that keeps losing its recorders stops trying.
    failovers: u32,
}

impl Writer {
    fn run(mut self, rx: Receiver<Out>) {
        loop {
            let item = match &self.link {
                Some(link) => crossbeam_channel::select! {
                    recv(rx) -> item => item.ok(),
                    recv(link.gone) -> gone => {
                        let gone = gone.unwrap_or_else(|_| Gone { why: "recorder connection ended".into(), refused: false });
                        if !self.failover(&gone.why, gone.refused) {
                            return;
                        }
                        continue;
                    }
                    // A cut with no reset: the recorder acknowledges every second.
                    default(WINDOW_CHECK) => {
                        let silent = lock(&self.shared.last_ack).elapsed();
                        if silent > LINK_SILENCE && !self.failover(&format!("recorder silent for {:.1}s", silent.as_secs_f64()), false) {
                            return;
                        }
                        continue;
                    }
                },
                None => match rx.recv_timeout(RECONNECT_EVERY) {
                    Ok(item) => Some(item),
                    Err(RecvTimeoutError::Timeout) => {
                        self.reconnect(false);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => None,
                },
            };
            let Some(item) = item else { return };
            match item {
                Out::Lines(bytes) => {
                    if self.link.is_none() && !self.reconnect(false) {
                        self.drop_lines(&bytes);
                        continue;
                    }
                    if !self.send_lines(bytes) {
                        return;
                    }
                }
                Out::End(msg) => {
                    self.end(&msg);
                    return;
                }
            }
        }
    }

    /// Sends the session's end and waits (at most [`FINAL_ACK_WAIT`]) for the recorder
    /// to close: one that goes away or is lost first gets it again on the next
    /// recorder, after what it had not acknowledged.
    fn end(&mut self, msg: &ClientMessage) {
        let deadline = Instant::now() + FINAL_ACK_WAIT;
        loop {
            if self.link.is_none() {
                self.next_attempt = Instant::now();
                if !self.reconnect(!self.fail_open) {
                    return;
                }
            }
            let Some(link) = self.link.as_mut() else { return };
            let gone = match link.out.write_all(&text_frame(msg)) {
                Ok(()) => match link.gone.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(gone) => gone,
                    Err(_) => return,
                },
                Err(e) => Gone { why: format!("writing to recorder: {e}"), refused: false },
            };
            // Closed by the recorder on purpose: the end was taken (1000), or refused.
            if gone.refused || Instant::now() >= deadline || !self.failover(&gone.why, false) {
                if let Some(link) = self.link.as_mut() {
                    let _ = link.out.write_all(&ws::close_frame(1000, "", mask()));
                }
                return;
            }
        }
    }

    /// Fail-open and waiting for a recorder: these lines are not recorded; the next
    /// recorder gets a marker saying how many bytes.
    fn drop_lines(&mut self, bytes: &[u8]) {
        let (n, _) = self.dropped.unwrap_or((0, 0.0));
        self.dropped = Some((n + bytes.len() as u64, crate::recording::cast::last_time(bytes)));
        self.shared.dropped.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    }

    /// Sends lines on the link, failing over as needed; false once the recording is lost.
    fn send_lines(&mut self, bytes: Vec<u8>) -> bool {
        loop {
            let Some(link) = self.link.as_mut() else {
                self.drop_lines(&bytes);
                return true;
            };
            // Bound what the recorder holds unacknowledged; a stuck recorder then fills
            // the queue, and the session's fail mode decides.
            let sent = self.shared.sent.load(Ordering::SeqCst);
            let silent = lock(&self.shared.last_ack).elapsed();
            let result = if silent > LINK_SILENCE && sent > self.shared.acked.load(Ordering::SeqCst) {
                Err(Gone { why: format!("recorder silent for {:.1}s", silent.as_secs_f64()), refused: false })
            } else {
                self.shared.wait_acked_or(sent.saturating_sub(MAX_UNACKED), SILENT_RECORDER, &link.gone)
            }
            .and_then(|()| {
                link.out.write_all(&ws::encode_frame(true, ws::OP_BINARY, mask(), &bytes)).map_err(|e| Gone { why: format!("writing to recorder: {e}"), refused: false })
            });
            match result {
                Ok(()) => {
                    let end = self.shared.sent.fetch_add(bytes.len() as u64, Ordering::SeqCst) + bytes.len() as u64;
                    self.unacked.push_back((end, bytes));
                    let acked = self.shared.acked.load(Ordering::SeqCst);
                    while self.unacked.front().is_some_and(|(end, _)| *end <= acked) {
                        self.unacked.pop_front();
                    }
                    return true;
                }
                // Not sent: it goes to the next recorder, after what that one is sent again.
                Err(gone) => {
                    if !self.failover(&gone.why, gone.refused) {
                        return false;
                    }
                }
            }
        }
    }

    /// The recorder is lost or going away: the session continues on the first
    /// recorder that takes it, from the last acknowledged byte. False when none did
    /// and the recording is lost (fail-closed); fail-open, it waits for one.
    fn failover(&mut self, why: &str, refused: bool) -> bool {
        let old = self.link.take();
        if let Some(l) = &old {
            let _ = l.socket.shutdown(std::net::Shutdown::Both);
            log::warn!("recorder lost, continuing the recording on another session={} recorder={} reason={why}", self.route.id, l.recorder);
        }
        self.last = old.map(|l| LastLost { recorder: l.recorder, refused });
        self.failovers += 1;
        if self.failovers > MAX_FAILOVERS {
            self.shared.set_lost(format!("{why} (and {MAX_FAILOVERS} recorders before)"));
            return false;
        }
        // Ended by its recorder, with no other to go to: lost, as before failover.
        let others = |l: &LastLost| self.route.targets.iter().any(|t| t.name != l.recorder);
        if self.last.as_ref().is_some_and(|l| l.refused && !others(l)) {
            self.shared.set_lost(why.to_string());
            return false;
        }
        // Every recorder is tried, those that failed lately too (one coming back from a
        // restart), for a while: fail-closed, the session's output waits meanwhile;
        // fail-open, its lines wait in the queue.
        let deadline = Instant::now() + FAILOVER_WINDOW;
        loop {
            self.next_attempt = Instant::now();
            if self.reconnect(true) {
                return true;
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(FAILOVER_RETRY);
        }
        // Fail-open, a recorder that is gone may come back; one that ended the session
        // itself will not take it up again.
        if self.fail_open && !refused {
            self.shared.waiting.store(true, Ordering::SeqCst);
            return true;
        }
        self.shared.set_lost(why.to_string());
        false
    }

    /// Tries to continue on a recorder (at most every [`RECONNECT_EVERY`]); on success
    /// sends again what was not acknowledged, and a marker for what was not recorded.
    fn reconnect(&mut self, try_all: bool) -> bool {
        if Instant::now() < self.next_attempt {
            return false;
        }
        self.next_attempt = Instant::now() + RECONNECT_EVERY;
        let acked = self.shared.acked.load(Ordering::SeqCst);
        let (mut link, at) = match self.route.connect(Some(acked), &self.shared, try_all, self.last.as_ref()) {
            Ok(ok) => ok,
            Err(e) => {
                log::debug!("no recorder takes the recording yet session={} error={e}", self.route.id);
                return false;
            }
        };
        self.shared.sent.store(at, Ordering::SeqCst);
        let mut frames: Vec<Vec<u8>> = self.unacked.drain(..).filter(|(end, _)| *end > at).map(|(_, b)| b).collect();
        if let Some((n, seconds)) = self.dropped.take() {
            frames.push(crate::recording::cast::marker_line(seconds, &format!("kubetape: {n} bytes of this session were not recorded: no recorder was reachable")).into_bytes());
        }
        for bytes in frames {
            if link.out.write_all(&ws::encode_frame(true, ws::OP_BINARY, mask(), &bytes)).is_err() {
                return false;
            }
            let end = self.shared.sent.fetch_add(bytes.len() as u64, Ordering::SeqCst) + bytes.len() as u64;
            self.unacked.push_back((end, bytes));
        }
        log::info!("recording continued session={} recorder={} at={at}", self.route.id, link.recorder);
        self.shared.set_acked(at);
        self.shared.waiting.store(false, Ordering::SeqCst);
        self.link = Some(link);
        true
    }
}

impl Recording {
    /// Starts the recording on the first of `targets` that acknowledges the header
    /// (see [`Route::connect`]). If that recorder is lost or goes away later, the
    /// recording continues on the first that takes it; `fail_open`, a recording that
    /// finds none waits for one, and marks what it could not record.
    pub fn start(targets: &[RecorderTarget], id: &str, header: &Value, attempt_timeout: Duration, health: &Arc<RecorderHealth>, fail_open: bool) -> Result<Recording> {
        let route = Route { targets: targets.to_vec(), id: id.to_string(), header: header.clone(), attempt_timeout, health: health.clone() };
        let shared = Arc::new(Shared {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            last_ack: Mutex::new(Instant::now()),
            lost: Mutex::new(None),
            progress: Condvar::new(),
            waiting: AtomicBool::new(false),
            socket: Mutex::new(None),
            dropped: AtomicU64::new(0),
        });
        let (link, header_bytes) = route.connect(None, &shared, !fail_open, None)?;
        // `sent` and `acked` count the same bytes: the header's.
        shared.sent.store(header_bytes, Ordering::SeqCst);
        shared.set_acked(header_bytes);
        let recorder = link.recorder.clone();
        let (tx, rx) = bounded::<Out>(EVENT_QUEUE);
        let writer =
            Writer { route, link: Some(link), shared: shared.clone(), unacked: VecDeque::new(), fail_open, dropped: None, next_attempt: Instant::now(), last: None, failovers: 0 };
        let writer = thread::Builder::new().name("rec-write".into()).spawn(move || writer.run(rx));
        Ok(Recording { recorder, tx, queued: Mutex::new(header_bytes), shared, writer: writer.ok() })
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
        if self.shared.waiting.load(Ordering::SeqCst) {
            return None;
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
        if !lost && !self.shared.waiting.load(Ordering::SeqCst) {
            // What is not acknowledged by then is counted as sent, not acked.
            let _ = self.shared.wait_acked(self.shared.sent.load(Ordering::SeqCst), FINAL_ACK_WAIT);
        }
        if let Some(s) = lock(&self.shared.socket).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
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
    /// What the recording misses although it is not lost (fail-open, output while no
    /// recorder took it), for its end to say.
    fn gaps(&self) -> Option<String> {
        None
    }
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
    fn gaps(&self) -> Option<String> {
        if self.shared.waiting.load(Ordering::SeqCst) {
            return Some("its recorder was lost and no other took the recording".into());
        }
        let n = self.shared.dropped.load(Ordering::SeqCst);
        (n > 0).then(|| format!("{n} bytes were not recorded while no recorder was reachable"))
    }
    fn finish(self: Box<Self>, outcome: Outcome, exit_code: Option<i32>, reason: Option<String>) -> (u64, u64) {
        Recording::finish(*self, outcome, exit_code, reason)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.shared.socket).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
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
