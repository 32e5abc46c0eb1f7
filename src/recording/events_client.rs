//! The proxy's API event stream to a recorder: one persistent, pipelined WebSocket
//! (`GET /v1/events`, subprotocol `kubetape.events.v1`) shared by every connection.
//! Events queue in a bounded queue; a writer thread sends whatever is queued as one
//! frame of NDJSON lines; the recorder answers `{"acked":N}`, the number of events on
//! this connection it has durably written. A fail-closed request waits for its own
//! event's acknowledgement; fail-open ones never wait, and what cannot be queued is
//! dropped and counted.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;



use crate::net::conn::Input;
use crate::net::queue::{Queue, Slot};
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
type Shared = Arc<Mutex<std::collections::HashMap<u64, Arc<Slot<bool>>>>>;
/// Per connection: (events sent once this batch is in, the batch's sequence numbers).
type Inflight = Arc<Mutex<VecDeque<(u64, Vec<u64>)>>>;

/// Records that `seqs` were durably written (`true`) or never will be (`false`).
fn settle(progress: &Shared, seqs: &[u64], ok: bool) {
    let mut waiting = lock(progress);
    if waiting.is_empty() {
        return;
    }
    for s in seqs {
        if let Some(slot) = waiting.remove(s) {
            slot.set(ok);
        }
    }
}

pub struct EventSink {
    queue: Arc<Queue<Queued>>,
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
        let queue = Arc::new(Queue::new(EVENT_QUEUE));
        let sink = Arc::new(EventSink { queue: queue.clone(), next_seq: AtomicU64::new(1), progress: Shared::default(), dropped: AtomicU64::new(0) });
        let progress = sink.progress.clone();
        let _ = thread::Builder::new().name(format!("events-{name}")).spawn(move || writer(targets, &queue, progress));
        sink
    }

    /// Queues an event without waiting; a full queue drops it (counted). Returns
    /// whether it was queued.
    pub fn send(&self, line: Vec<u8>) -> bool {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let queued = self.queue.try_push(Queued { seq, line }).is_ok();
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
        let done = Arc::new(Slot::default());
        lock(&self.progress).insert(seq, done.clone());
        let result = match self.queue.try_push(Queued { seq, line }) {
            Err(_) => Err("the event queue is full".to_string()),
            Ok(()) => match done.wait(timeout) {
                Some(true) => Ok(()),
                Some(false) => Err("the recorder was lost before acknowledging the event".into()),
                None => Err(format!("the recorder did not acknowledge the event within {timeout:?}")),
            },
        };
        lock(&self.progress).remove(&seq);
        result
    }
}

/// Owns the connection: sends batches, reconnects, and marks what a dead connection
/// took with it as lost.
fn writer(targets: Vec<RecorderTarget>, queue: &Queue<Queued>, progress: Shared) {
    loop {
        let Some((input, mut out, socket)) = targets.iter().find_map(|t| match dial(t, EVENTS_PATH, EVENTS_SUBPROTOCOL, DIAL_TIMEOUT) {
            Ok(c) => Some(c),
            Err(e) => {
                log::debug!("event recorder unreachable recorder={} error={e}", t.name);
                None
            }
        }) else {
            // Nobody to write to: what is queued now cannot be acknowledged.
            let lost: Vec<u64> = queue.pop_batch(usize::MAX, RECONNECT_BACKOFF).iter().map(|q| q.seq).collect();
            settle(&progress, &lost, false);
            continue;
        };
        log::info!("api event stream connected");
        let inflight: Inflight = Arc::new(Mutex::new(VecDeque::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let (fl, al, pr) = (inflight.clone(), alive.clone(), progress.clone());
        let _ = thread::Builder::new().name("events-ack".into()).spawn(move || acks(input, fl, al, pr));
        let mut sent_count = 0u64;
        while alive.load(Ordering::SeqCst) {
            let batch = queue.pop_batch(MAX_BATCH, Duration::from_millis(200));
            if batch.is_empty() {
                continue;
            }
            let mut frame = Vec::with_capacity(batch.iter().map(|q| q.line.len()).sum());
            let mut seqs = Vec::with_capacity(batch.len());
            for q in batch {
                frame.extend_from_slice(&q.line);
                seqs.push(q.seq);
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
