//! The proxy's API event stream to a recorder: one persistent, pipelined WebSocket
//! (`GET /v1/events`, subprotocol `kubetape.events.v1`) shared by every connection.
//!
//! Request threads append NDJSON lines to one pending buffer; a writer thread sends
//! whatever has gathered as one frame; the recorder answers `{"acked":N}`, the number
//! of events on this connection it has durably written. Every event has a sequence
//! number in stream order, so one number per acknowledgement settles a whole batch.
//!
//! The costs that matter at thousands of requests a second are wake-ups, not bytes:
//! a request wakes the writer only when the writer sleeps with nothing to do, or when
//! the request waits for its event (fail-closed) and no frame is unacknowledged (see
//! [`Pending::send_now`]). Events nobody waits for (fail-open, completions) linger up
//! to [`LINGER`] so that one frame, one recorder wake-up and one fsync carry many.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::net::conn::Input;
use crate::net::sync::{lock, Slot};
use crate::net::websocket;
use crate::record::protocol::{Ack, EVENTS_PATH, EVENTS_SUBPROTOCOL};
use crate::recording::client::{dial, mask, RecorderTarget};
use crate::wire::ws;

/// Events gathered for the writer before fail-open events are dropped.
const MAX_PENDING_EVENTS: u64 = 8192;
const MAX_PENDING_BYTES: usize = 8 << 20;
/// Events nobody waits for are sent at most this late, or sooner with any that is
/// waited for, or when this many bytes have gathered. Nothing is held up by them,
/// and each frame costs a wake-up on both sides and an fsync.
const LINGER: Duration = Duration::from_millis(10);
/// A waited-for event gathers behind an unacknowledged frame at most this long.
const HOLD: Duration = Duration::from_millis(2);
const FLUSH_BYTES: usize = 256 * 1024;
/// How long to wait between attempts to reach a recorder.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// After a reroute, how long the old recorder may take to acknowledge what it was sent.
const REROUTE_DRAIN: Duration = Duration::from_secs(5);
/// A recorder that takes no bytes for this long is given up on (and redialled), so a
/// hung recorder cannot hold the stream forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq)]
enum Writer {
    /// Waiting for the first event: any event wakes it.
    Idle,
    /// Holding events nobody waits for: only a waited-for event wakes it.
    Lingering,
    /// Sending or connecting: it looks at the buffer again when done.
    Busy,
}

struct Batch {
    count: u64,
    last_seq: u64,
}

/// Settles a waiter: `true` once its event is durable, `false` if it never will be.
type Waiter = (u64, Arc<Slot<bool>>);

struct Pending {
    lines: Vec<u8>,
    /// Events in `lines`; they are the sequence numbers just below `next_seq`.
    count: u64,
    next_seq: u64,
    /// Fail-closed requests, in sequence order.
    waiters: VecDeque<Waiter>,
    writer: Writer,
    /// Frames sent and not yet acknowledged on the live connection.
    unacked_frames: u64,
}

impl Pending {
    fn urgent(&self) -> bool {
        self.waiters.back().is_some_and(|(seq, _)| *seq > self.next_seq - 1 - self.count)
    }

    /// Whether a waited-for event should go now. While a frame is unacknowledged the
    /// recorder is syncing it, and what arrives meanwhile could only join the next
    /// sync anyway: it gathers until the acknowledgement (as Nagle's algorithm does),
    /// so one frame, one wake-up on each side and one fsync serve many requests.
    fn send_now(&self) -> bool {
        self.urgent() && self.unacked_frames == 0
    }

    /// Takes the gathered lines, leaving `spare` (emptied) in their place.
    fn take(&mut self, spare: &mut Vec<u8>) -> Batch {
        spare.clear();
        std::mem::swap(&mut self.lines, spare);
        Batch { count: std::mem::take(&mut self.count), last_seq: self.next_seq - 1 }
    }

    /// Removes the waiters for events up to `through`.
    fn settled(&mut self, through: u64) -> Vec<Arc<Slot<bool>>> {
        let n = self.waiters.iter().take_while(|(seq, _)| *seq <= through).count();
        self.waiters.drain(..n).map(|(_, slot)| slot).collect()
    }
}

pub struct EventSink {
    pending: Mutex<Pending>,
    /// Where the writer sends, as the policy says now ([`EventSink::reroute`]).
    targets: Mutex<Arc<Vec<RecorderTarget>>>,
    /// Bumped on each reroute: the writer moves once what it sent is acknowledged.
    routing: AtomicU64,
    wake: Condvar,
    /// Events nobody waited for that were not recorded: not queued (too much was
    /// waiting) or lost with a connection before they were acknowledged.
    dropped: Arc<AtomicU64>,
}

thread_local! {
    // Each request thread serializes into its own buffer, outside the shared lock.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl EventSink {
    /// Starts the writer, which connects to the first reachable target and keeps
    /// reconnecting in order. Unrecorded events nobody waited for are added to `dropped`.
    pub fn start(name: &str, targets: Vec<RecorderTarget>, dropped: Arc<AtomicU64>) -> Arc<EventSink> {
        let sink = Arc::new(EventSink {
            pending: Mutex::new(Pending { lines: Vec::new(), count: 0, next_seq: 1, waiters: VecDeque::new(), writer: Writer::Busy, unacked_frames: 0 }),
            targets: Mutex::new(Arc::new(targets)),
            routing: AtomicU64::new(0),
            wake: Condvar::new(),
            dropped,
        });
        let s = sink.clone();
        let _ = thread::Builder::new().name(format!("events-{name}")).spawn(move || writer(&s));
        sink
    }

    /// Sends to `targets` from now on (a policy reload or a certificate renewal changed
    /// them): the writer lets what it sent be acknowledged, then connects anew.
    pub fn reroute(&self, targets: Vec<RecorderTarget>) {
        *lock(&self.targets) = Arc::new(targets);
        self.routing.fetch_add(1, Ordering::SeqCst);
    }

    /// Queues an event without waiting; when too much is waiting already the event is
    /// dropped (counted).
    pub fn send(&self, event: &impl serde::Serialize) {
        if self.append(event, None).is_none() {
            self.count_dropped(1);
        }
    }

    fn count_dropped(&self, n: u64) {
        let before = self.dropped.fetch_add(n, Ordering::Relaxed);
        let after = before + n;
        // Logged when the total reaches a new power of two, so an outage cannot flood the log.
        if n > 0 && (before == 0 || after.ilog2() > before.ilog2()) {
            log::warn!("api events dropped: the recorder is slow or down dropped_total={after}");
        }
    }

    /// Queues an event and waits until the recorder has durably written it.
    pub fn send_and_wait(&self, event: &impl serde::Serialize, timeout: Duration) -> Result<(), String> {
        let slot = Arc::new(Slot::default());
        let Some(seq) = self.append(event, Some(&slot)) else { return Err("too many events are waiting for the recorder".into()) };
        let settled = slot.wait(timeout).or_else(|| {
            let mut p = lock(&self.pending);
            let before = p.waiters.len();
            p.waiters.retain(|(s, _)| *s != seq);
            let taken_back = p.waiters.len() < before;
            drop(p);
            // Not found: settled just now, by a thread that is about to say how.
            if taken_back {
                None
            } else {
                slot.wait(Duration::from_secs(1))
            }
        });
        match settled {
            Some(true) => Ok(()),
            Some(false) => Err("the recorder was lost before acknowledging the event".into()),
            None => Err(format!("the recorder did not acknowledge the event within {timeout:?}")),
        }
    }

    /// Adds one line; returns its sequence number, or `None` when the buffer is full.
    fn append(&self, event: &impl serde::Serialize, waiter: Option<&Arc<Slot<bool>>>) -> Option<u64> {
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            serde_json::to_writer(&mut *line, event).ok()?;
            line.push(b'\n');
            let mut p = lock(&self.pending);
            if p.count >= MAX_PENDING_EVENTS || p.lines.len() + line.len() > MAX_PENDING_BYTES {
                return None;
            }
            let seq = p.next_seq;
            p.next_seq += 1;
            p.count += 1;
            p.lines.extend_from_slice(&line);
            if let Some(slot) = waiter {
                p.waiters.push_back((seq, slot.clone()));
            }
            // With frames unacknowledged, the acknowledgement wakes the writer.
            let wake = match p.writer {
                Writer::Idle => p.unacked_frames == 0,
                Writer::Lingering => p.send_now() || p.lines.len() >= FLUSH_BYTES,
                Writer::Busy => false,
            };
            drop(p);
            if wake {
                self.wake.notify_one();
            }
            Some(seq)
        })
    }

    /// Waits until there is something to send: at once for a waited-for event (within
    /// [`HOLD`] behind an unacknowledged frame), after [`LINGER`] for others. `None`
    /// if nothing came within `idle`.
    /// The next batch to send on a connection made for `route` (`None`: unconnected),
    /// or `None` after `idle` with nothing to send, or once the route has changed.
    fn next_batch(&self, spare: &mut Vec<u8>, idle: Duration, route: Option<u64>) -> Option<Batch> {
        let mut p = lock(&self.pending);
        let mut lingering_since: Option<Instant> = None;
        loop {
            if p.count > 0 {
                let since = *lingering_since.get_or_insert_with(Instant::now);
                let limit = if p.urgent() { HOLD } else { LINGER };
                let left = limit.saturating_sub(since.elapsed());
                if route.is_some_and(|r| r != self.routing.load(Ordering::SeqCst)) {
                    // Rerouted: these events go to the recorders the policy names now.
                    p.writer = Writer::Busy;
                    return None;
                }
                if p.send_now() || p.lines.len() >= FLUSH_BYTES || left.is_zero() {
                    p.writer = Writer::Busy;
                    p.unacked_frames += 1;
                    return Some(p.take(spare));
                }
                p.writer = Writer::Lingering;
                // A waited-for event that arrives behind an unacknowledged frame does not
                // wake the writer, so it looks again within HOLD.
                let nap = if p.unacked_frames > 0 { left.min(HOLD) } else { left };
                p = self.wake.wait_timeout(p, nap).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
            } else {
                if lingering_since.is_some() {
                    p.writer = Writer::Busy;
                    return None;
                }
                p.writer = Writer::Idle;
                let (g, timeout) = self.wake.wait_timeout(p, idle).unwrap_or_else(|e| e.into_inner());
                p = g;
                if timeout.timed_out() && p.count == 0 {
                    p.writer = Writer::Busy;
                    return None;
                }
            }
        }
    }

    /// `frames` frames up to event `through` are durable: their waiters go on, and the
    /// writer sends what gathered meanwhile.
    fn acknowledged(&self, through: u64, frames: u64) {
        let wake = {
            let mut p = lock(&self.pending);
            p.unacked_frames = p.unacked_frames.saturating_sub(frames);
            p.count > 0 && p.writer != Writer::Busy
        };
        if wake {
            self.wake.notify_one();
        }
        self.settle(through, true);
    }

    /// Settles every waiter up to `through` with `ok`; returns how many there were.
    fn settle(&self, through: u64, ok: bool) -> u64 {
        let slots = lock(&self.pending).settled(through);
        for s in &slots {
            s.set(ok);
        }
        slots.len() as u64
    }

    /// `count` events up to `through` will never be recorded: their waiters are told,
    /// the rest counted as dropped.
    fn lost(&self, through: u64, count: u64) {
        let waited = self.settle(through, false);
        self.count_dropped(count.saturating_sub(waited));
    }
}

/// Owns the connection: sends batches, reconnects, and marks what a dead connection
/// took with it as lost.
fn writer(sink: &Arc<EventSink>) {
    let mut frame = Vec::new();
    loop {
        let route = sink.routing.load(Ordering::SeqCst);
        let targets = lock(&sink.targets).clone();
        let Some((input, mut out, socket)) = targets.iter().find_map(|t| match dial(t, EVENTS_PATH, EVENTS_SUBPROTOCOL, DIAL_TIMEOUT) {
            Ok(c) => Some(c),
            Err(e) => {
                log::debug!("event recorder unreachable recorder={} error={e}", t.name);
                None
            }
        }) else {
            // Nobody to write to: what is gathered now cannot be acknowledged.
            if let Some(lost) = sink.next_batch(&mut frame, RECONNECT_BACKOFF, None) {
                sink.lost(lost.last_seq, lost.count);
            }
            continue;
        };
        log::info!("api event stream connected");
        lock(&sink.pending).unacked_frames = 0; // frames taken while unconnected were lost
        let _ = socket.set_write_timeout(Some(WRITE_TIMEOUT));
        // (events sent on this connection once the batch is in, its last sequence number)
        let inflight: Arc<Inflight> = Arc::default();
        let acker = {
            let (inflight, socket, sink) = (inflight.clone(), socket.try_clone(), sink.clone());
            thread::Builder::new().name("events-ack".into()).spawn(move || {
                let acked = acks(input, &inflight, &sink);
                if let Ok(s) = socket {
                    let _ = s.shutdown(std::net::Shutdown::Both); // stops the writer's next write
                }
                acked
            })
        };
        let mut sent = 0u64;
        let mut last_sent = 0u64;
        let rerouted = loop {
            if sink.routing.load(Ordering::SeqCst) != route {
                break true;
            }
            let Some(batch) = sink.next_batch(&mut frame, Duration::from_millis(200), Some(route)) else {
                if acker.as_ref().map_or(true, |a| a.is_finished()) {
                    break false;
                }
                continue;
            };
            sent += batch.count;
            last_sent = batch.last_seq;
            // Recorded before the write, so an ack can never outrun its entry.
            lock(&inflight.sent).push_back((sent, batch.last_seq));
            if out.write_all(&ws::encode_frame(true, ws::OP_BINARY, mask(), &frame)).is_err() {
                break false;
            }
        };
        if rerouted {
            // Moving loses nothing the old recorder is about to acknowledge.
            let sent = lock(&inflight.sent);
            let _ = inflight.drained.wait_timeout_while(sent, REROUTE_DRAIN, |s| !s.is_empty());
        }
        let _ = socket.shutdown(std::net::Shutdown::Both);
        let acked = acker.ok().and_then(|a| a.join().ok()).unwrap_or(0);
        // Whatever this connection took unacknowledged is lost.
        lock(&sink.pending).unacked_frames = 0;
        sink.lost(last_sent, sent.saturating_sub(acked));
        if rerouted {
            log::info!("api event stream rerouted (policy, cluster recorders or certificates); reconnecting");
            continue;
        }
        log::warn!("api event stream lost; reconnecting");
        thread::sleep(RECONNECT_BACKOFF);
    }
}

/// Settles acknowledged events until the connection ends; returns how many events
/// the recorder acknowledged on it.
/// What a connection sent and the recorder has not acknowledged yet.
#[derive(Default)]
struct Inflight {
    /// (events sent on this connection once the batch is in, its last sequence number)
    sent: Mutex<VecDeque<(u64, u64)>>,
    /// Woken as acknowledgements empty `sent`.
    drained: Condvar,
}

fn acks(mut input: Input, inflight: &Inflight, sink: &EventSink) -> u64 {
    let mut acked = 0;
    while let Ok(Some(frame)) = websocket::next_frame(&mut input) {
        match frame.opcode {
            ws::OP_CLOSE => break,
            ws::OP_TEXT => {}
            _ => continue,
        }
        let Ok(ack) = serde_json::from_slice::<Ack>(&frame.payload) else { break };
        acked = ack.acked;
        let (mut through, mut frames) = (None, 0);
        {
            let mut fl = lock(&inflight.sent);
            while fl.front().is_some_and(|(count, _)| *count <= ack.acked) {
                through = fl.pop_front().map(|(_, last)| last);
                frames += 1;
            }
            if fl.is_empty() {
                inflight.drained.notify_all();
            }
        }
        if let Some(t) = through {
            sink.acknowledged(t, frames);
        }
    }
    acked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Pending {
        Pending { lines: Vec::new(), count: 0, next_seq: 1, waiters: VecDeque::new(), writer: Writer::Idle, unacked_frames: 0 }
    }

    fn add(p: &mut Pending, line: &str, waiter: Option<&Arc<Slot<bool>>>) -> u64 {
        let seq = p.next_seq;
        p.next_seq += 1;
        p.count += 1;
        p.lines.extend_from_slice(line.as_bytes());
        if let Some(w) = waiter {
            p.waiters.push_back((seq, w.clone()));
        }
        seq
    }

    #[test]
    fn batches_carry_sequence_ranges_and_settle_their_waiters_only() {
        let mut p = pending();
        let (w1, w3) = (Arc::new(Slot::default()), Arc::new(Slot::default()));
        add(&mut p, "{\"a\":1}\n", Some(&w1));
        add(&mut p, "{\"a\":2}\n", None);
        assert!(p.urgent(), "a waited-for event is in the buffer");
        let mut spare = Vec::new();
        let first = p.take(&mut spare);
        assert_eq!((first.count, first.last_seq), (2, 2));
        assert_eq!(spare, b"{\"a\":1}\n{\"a\":2}\n");
        assert!(!p.urgent(), "what waits was taken");
        add(&mut p, "{\"a\":3}\n", Some(&w3));
        assert!(p.urgent());
        // While the first frame is unacknowledged, event 3 gathers for the next sync.
        p.unacked_frames = 1;
        assert!(!p.send_now());
        p.unacked_frames = 0;
        assert!(p.send_now());
        // An acknowledgement of the first batch settles event 1, not event 3.
        let settled = p.settled(first.last_seq);
        assert_eq!(settled.len(), 1);
        assert!(Arc::ptr_eq(&settled[0], &w1));
        assert_eq!(p.waiters.len(), 1);
        let second = p.take(&mut spare);
        assert_eq!((second.count, second.last_seq), (1, 3));
        assert_eq!(p.settled(second.last_seq).len(), 1);
        assert_eq!(p.take(&mut spare).count, 0);
    }
}
