//! The proxy's API event stream to a recorder: one persistent, pipelined WebSocket
//! (`GET /v1/events`, subprotocol `kubetape.events.v1`) shared by every connection.
//! Events queue in a bounded channel; a writer thread sends whatever is queued as one
//! frame of NDJSON lines; the recorder answers `{"acked":N}`, the number of events on
//! this connection it has durably written. A fail-closed request waits for its own
//! event's acknowledgement; fail-open ones never wait, and what cannot be queued is
//! dropped and counted.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};


use crate::net::conn::Input;
use crate::recording::client::{dial, mask, RecorderTarget};
use crate::recording::protocol::Ack;
use crate::wire::ws;

pub const EVENTS_PATH: &str = "/v1/events";
pub const EVENTS_SUBPROTOCOL: &str = "kubetape.events.v1";
/// Events queued for the writer before fail-open events are dropped.
const EVENT_QUEUE: usize = 8192;
/// Events in one frame at most.
const MAX_BATCH: usize = 2048;
/// How long to wait between attempts to reach a recorder.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

struct Queued {
    seq: u64,
    line: Vec<u8>,
}

/// Who waits for which event (fail-closed requests), by sequence number; each waiter
/// has its own channel, so an acknowledgement wakes only the requests it settles.
type Shared = Arc<Mutex<std::collections::HashMap<u64, Sender<bool>>>>;
/// Per connection: (events sent once this batch is in, the batch's sequence numbers).
type Inflight = Arc<Mutex<VecDeque<(u64, Vec<u64>)>>>;

/// Records that `seqs` were durably written (`true`) or never will be (`false`).
fn settle(progress: &Shared, seqs: &[u64], ok: bool) {
    let mut waiting = lock(progress);
    if waiting.is_empty() {
        return;
    }
    for s in seqs {
        if let Some(tx) = waiting.remove(s) {
            let _ = tx.try_send(ok);
        }
    }
}

pub struct EventSink {
    tx: Sender<Queued>,
    next_seq: AtomicU64,
    progress: Shared,
    pub dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventSink {
    /// Starts the writer, which connects to the first reachable target and keeps
    /// reconnecting in order.
    pub fn start(name: &str, targets: Vec<RecorderTarget>) -> Arc<EventSink> {
        let (tx, rx) = bounded(EVENT_QUEUE);
        let sink = Arc::new(EventSink { tx, next_seq: AtomicU64::new(1), progress: Shared::default(), dropped: AtomicU64::new(0) });
        let progress = sink.progress.clone();
        let _ = thread::Builder::new().name(format!("events-{name}")).spawn(move || writer(targets, rx, progress));
        sink
    }

    /// Queues an event without waiting; a full queue drops it (counted). Returns
    /// whether it was queued.
    pub fn send(&self, line: Vec<u8>) -> bool {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let queued = !matches!(self.tx.try_send(Queued { seq, line }), Err(TrySendError::Full(_) | TrySendError::Disconnected(_)));
        if !queued {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                log::warn!("api events dropped: the recorder is slow or down dropped_total={n}");
            }
        }
        queued
    }

    /// Queues an event and waits until the recorder has durably written it.
    pub fn send_and_wait(&self, line: Vec<u8>, timeout: Duration) -> Result<(), String> {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let (done_tx, done_rx) = bounded(1);
        lock(&self.progress).insert(seq, done_tx);
        let deadline = Instant::now() + timeout;
        let result = match self.tx.send_timeout(Queued { seq, line }, timeout) {
            Err(_) => Err("the event queue is full".to_string()),
            Ok(()) => match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(true) => Ok(()),
                Ok(false) => Err("the recorder was lost before acknowledging the event".into()),
                Err(_) => Err(format!("the recorder did not acknowledge the event within {timeout:?}")),
            },
        };
        lock(&self.progress).remove(&seq);
        result
    }
}

/// Owns the connection: sends batches, reconnects, and marks what a dead connection
/// took with it as lost.
fn writer(targets: Vec<RecorderTarget>, rx: Receiver<Queued>, progress: Shared) {
    loop {
        let Some((input, mut out, socket)) = targets.iter().find_map(|t| match dial(t, EVENTS_PATH, EVENTS_SUBPROTOCOL, DIAL_TIMEOUT) {
            Ok(c) => Some(c),
            Err(e) => {
                log::debug!("event recorder unreachable recorder={} error={e}", t.name);
                None
            }
        }) else {
            // Nobody to write to: what is queued now cannot be acknowledged.
            let lost: Vec<u64> = rx.try_iter().map(|q| q.seq).collect();
            settle(&progress, &lost, false);
            match rx.recv_timeout(RECONNECT_BACKOFF) {
                Ok(q) => settle(&progress, &[q.seq], false),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            continue;
        };
        log::info!("api event stream connected");
        let inflight: Inflight = Arc::new(Mutex::new(VecDeque::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let (fl, al, pr) = (inflight.clone(), alive.clone(), progress.clone());
        let _ = thread::Builder::new().name("events-ack".into()).spawn(move || acks(input, fl, al, pr));
        let mut sent_count = 0u64;
        while alive.load(Ordering::SeqCst) {
            let first = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(q) => q,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut frame = first.line;
            let mut seqs = vec![first.seq];
            while seqs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(q) => {
                        frame.extend_from_slice(&q.line);
                        seqs.push(q.seq);
                    }
                    Err(_) => break,
                }
            }
            sent_count += seqs.len() as u64;
            // Recorded before the write, so an ack can never outrun its entry.
            lock(&inflight).push_back((sent_count, seqs));
            if out.write_all(&ws::encode_frame(true, ws::OP_BINARY, mask(), &frame)).is_err() {
                break;
            }
        }
        alive.store(false, Ordering::SeqCst);
        let _ = socket.shutdown(std::net::Shutdown::Both);
        // Whatever this connection took unacknowledged is lost.
        let lost: Vec<u64> = lock(&inflight).drain(..).flat_map(|(_, s)| s).collect();
        settle(&progress, &lost, false);
        log::warn!("api event stream lost; reconnecting");
        thread::sleep(RECONNECT_BACKOFF);
    }
}

fn acks(mut input: Input, inflight: Inflight, alive: Arc<AtomicBool>, progress: Shared) {
    loop {
        match ws::parse_frame(input.buffered()) {
            Ok(Some((frame, n))) => {
                input.consume(n);
                if frame.opcode == ws::OP_CLOSE {
                    break;
                }
                if frame.opcode != ws::OP_TEXT {
                    continue;
                }
                let Ok(ack) = serde_json::from_slice::<Ack>(&frame.payload) else { break };
                let mut done = Vec::new();
                {
                    let mut fl = lock(&inflight);
                    while fl.front().is_some_and(|(count, _)| *count <= ack.acked) {
                        done.extend(fl.pop_front().map(|(_, s)| s).unwrap_or_default());
                    }
                }
                settle(&progress, &done, true);
                continue;
            }
            Ok(None) => {}
            Err(_) => break,
        }
        if !matches!(input.fill(), Ok(1..)) {
            break;
        }
    }
    alive.store(false, Ordering::SeqCst);
}
