//! What readers may see of the sessions being recorded now: per active session, how far
//! its cast file is durable in whole lines and whether it has ended, with a condition
//! variable that wakes its followers (`GET /v1/recordings/{id}/cast?follow=true`) after
//! every sync that made more of it durable.
//!
//! The offset is kept here, in memory, and not in the sidecar: rewriting the sidecar
//! after every sync would put a temporary file, two more fsyncs, a rename and a
//! directory fsync on the path every acknowledgement waits for, to publish a number
//! only this process can use. After a crash, recovery recomputes it from the cast file
//! (cut back to its last whole line); the sidecar is written at the start and the end,
//! as before. The ingest only takes a mutex to store a number and notify; followers
//! read the cast file themselves, so one that is slow, stalled or gone can never hold
//! up the session's writer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::net::sync::lock;
use crate::record::protocol::{SessionMeta, Status};

/// Followers at once, across all sessions. Each holds a connection thread and an open
/// file for as long as its session lasts; an audit room watching live sessions needs a
/// handful, and this keeps followers to a small share of `--max-connections`, which the
/// proxies writing sessions need.
pub const MAX_FOLLOWERS: usize = 16;
/// Places only reader certificates may take, so token viewers cannot crowd them out.
const READERS_ONLY: usize = 4;
/// Follows (and live views) one token viewer may have open at once.
pub const MAX_FOLLOWS_PER_VIEWER: usize = 4;

/// Who holds the follow places.
#[derive(Default)]
struct Places {
    total: usize,
    /// Per token viewer (their name and uid).
    viewers: HashMap<String, usize>,
}

/// How far a recording can be read now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Bytes from the start of the cast file that are durable and end on a whole line
    /// (at the end: every byte the sidecar counts).
    pub durable: u64,
    /// The session's status has left `recording`; `durable` is final.
    pub ended: bool,
}

/// One active session's [`Seen`], shared by its ingest and its followers.
pub struct Progress {
    seen: Mutex<Seen>,
    changed: Condvar,
}

impl Progress {
    fn set(&self, update: impl FnOnce(&mut Seen)) {
        let mut seen = lock(&self.seen);
        let before = *seen;
        update(&mut seen);
        if *seen != before {
            self.changed.notify_all();
        }
    }

    pub fn seen(&self) -> Seen {
        *lock(&self.seen)
    }

    /// Waits until more than `past` bytes are durable or the session ended, at most
    /// `timeout`; returns what is known then.
    pub fn wait_past(&self, past: u64, timeout: Duration) -> Seen {
        let seen = lock(&self.seen);
        let seen = self.changed.wait_timeout_while(seen, timeout, |s| s.durable <= past && !s.ended).map(|(s, _)| s).unwrap_or_else(|e| e.into_inner().0);
        *seen
    }
}

/// The active sessions by id, and the followers' count.
#[derive(Default)]
pub struct Live {
    sessions: Mutex<HashMap<String, Arc<Progress>>>,
    places: Mutex<Places>,
}

impl Live {
    /// Registers a session whose first `durable` bytes are durable (its header).
    pub fn start(&self, id: &str, durable: u64) -> Publisher<'_> {
        let progress = Arc::new(Progress { seen: Mutex::new(Seen { durable, ended: false }), changed: Condvar::new() });
        lock(&self.sessions).insert(id.to_string(), progress.clone());
        Publisher { live: self, id: id.to_string(), progress }
    }

    /// Sessions being recorded now.
    pub fn count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// An active session's progress; it stays readable after the session ends.
    pub fn get(&self, id: &str) -> Option<Arc<Progress>> {
        lock(&self.sessions).get(id).cloned()
    }

    /// `meta` as the API shows it: a running session's `bytes` are those durable now,
    /// where its sidecar still counts those of its start.
    pub fn current(&self, mut meta: SessionMeta) -> SessionMeta {
        if meta.status == Status::Recording {
            if let Some(p) = self.get(&meta.id) {
                meta.bytes = meta.bytes.max(p.seen().durable);
            }
        }
        meta
    }

    /// A follower's place, or `None` when [`MAX_FOLLOWERS`] are following already.
    /// A token `viewer` (`None`: a reader certificate) gets one only below
    /// `MAX_FOLLOWERS - READERS_ONLY` in all and [`MAX_FOLLOWS_PER_VIEWER`] of their own.
    pub fn follower(&self, viewer: Option<&str>) -> Option<Follower<'_>> {
        let mut p = lock(&self.places);
        let viewers: usize = p.viewers.values().sum();
        let room = match viewer {
            None => p.total < MAX_FOLLOWERS,
            Some(v) => p.total < MAX_FOLLOWERS && viewers < MAX_FOLLOWERS - READERS_ONLY && p.viewers.get(v).copied().unwrap_or(0) < MAX_FOLLOWS_PER_VIEWER,
        };
        if !room {
            return None;
        }
        p.total += 1;
        if let Some(v) = viewer {
            *p.viewers.entry(v.to_string()).or_default() += 1;
        }
        Some(Follower { live: self, viewer: viewer.map(String::from) })
    }
}

/// Held while a follow response is open.
pub struct Follower<'a> {
    live: &'a Live,
    viewer: Option<String>,
}

impl Drop for Follower<'_> {
    fn drop(&mut self) {
        let mut p = lock(&self.live.places);
        p.total -= 1;
        if let Some(v) = &self.viewer {
            if let Some(n) = p.viewers.get_mut(v) {
                *n -= 1;
                if *n == 0 {
                    p.viewers.remove(v);
                }
            }
        }
    }
}

/// The ingest's handle on its session's progress. Dropping it ends the session for
/// its followers (with the last offset published), however the ingest stopped, so
/// none waits on a session nobody writes.
pub struct Publisher<'a> {
    live: &'a Live,
    id: String,
    progress: Arc<Progress>,
}

impl Publisher<'_> {
    /// After a sync: the first `durable` bytes are durable whole lines.
    pub fn publish(&self, durable: u64) {
        self.progress.set(|s| s.durable = s.durable.max(durable));
    }

    /// The sidecar has been written with its final status and `bytes`.
    pub fn end(&self, bytes: u64) {
        self.progress.set(|s| *s = Seen { durable: bytes, ended: true });
    }
}

impl Drop for Publisher<'_> {
    fn drop(&mut self) {
        self.progress.set(|s| s.ended = true);
        let mut sessions = lock(&self.live.sessions);
        // Only our own entry: a later session under the same id is not ours to remove.
        if sessions.get(&self.id).is_some_and(|p| Arc::ptr_eq(p, &self.progress)) {
            sessions.remove(&self.id);
        }
    }
}

/// How often the main thread recounts the sessions it waits for to park.
const RECOUNT: Duration = Duration::from_millis(50);

/// A recorder going away (SIGTERM) moves its sessions to another: each ingest makes its
/// last bytes durable, acknowledges them and parks; once the main thread has put what
/// they hold in the bucket (where the next recorder reads it), they close with 1001
/// and the proxies continue elsewhere.
#[derive(Default)]
pub struct HandOff {
    asked: AtomicBool,
    parked: AtomicUsize,
    uploaded: Mutex<bool>,
    changed: Condvar,
}

impl HandOff {
    pub fn ask(&self) {
        self.asked.store(true, Ordering::SeqCst);
    }

    pub fn asked(&self) -> bool {
        self.asked.load(Ordering::SeqCst)
    }

    /// An ingest, its last bytes acknowledged, is parked: it waits for the upload.
    pub fn park(&self) {
        let _done = lock(&self.uploaded);
        self.parked.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// A parked ingest waits (at most `timeout`) for the upload; whether it is done.
    pub fn wait_uploaded(&self, timeout: Duration) -> bool {
        let done = lock(&self.uploaded);
        self.changed.wait_timeout_while(done, timeout, |up| !*up).map(|(up, _)| *up).unwrap_or_else(|e| *e.into_inner().0)
    }

    /// The main thread: waits (at most `timeout`) until every session still being
    /// recorded (`live()` counts them; one that ends instead leaves the count) parked.
    pub fn wait_parked(&self, live: impl Fn() -> usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut done = lock(&self.uploaded);
        while self.parked.load(Ordering::SeqCst) < live() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            done = self.changed.wait_timeout(done, left.min(RECOUNT)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// What the parked sessions hold is in the bucket (or could not be put there).
    pub fn uploaded(&self) {
        *lock(&self.uploaded) = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_viewer_cannot_take_every_follow_place() {
        let live = Live::default();
        let alice: Vec<_> = (0..MAX_FOLLOWS_PER_VIEWER).map(|_| live.follower(Some("alice/1")).expect("alice's place")).collect();
        assert!(live.follower(Some("alice/1")).is_none(), "alice has her share");
        let others: Vec<_> = (0..).map_while(|i| live.follower(Some(&format!("viewer-{}/{i}", i / MAX_FOLLOWS_PER_VIEWER)))).collect();
        assert_eq!(alice.len() + others.len(), MAX_FOLLOWERS - READERS_ONLY, "viewers leave the readers' places");
        let readers: Vec<_> = (0..READERS_ONLY).map(|_| live.follower(None).expect("a reader's place")).collect();
        assert!(live.follower(None).is_none(), "{MAX_FOLLOWERS} in all");
        drop(alice);
        assert!(live.follower(Some("alice/1")).is_some(), "places come back");
        drop((others, readers));
        assert_eq!(lock(&live.places).total, 0);
        assert!(lock(&live.places).viewers.is_empty());
    }

    #[test]
    fn followers_wake_on_progress_and_on_the_end() {
        let live = Live::default();
        let publisher = live.start("s1", 10);
        let progress = live.get("s1").unwrap();
        assert_eq!(progress.wait_past(0, Duration::ZERO), Seen { durable: 10, ended: false });
        let waiter = {
            let progress = progress.clone();
            std::thread::spawn(move || progress.wait_past(10, Duration::from_secs(30)))
        };
        publisher.publish(25);
        assert_eq!(waiter.join().unwrap(), Seen { durable: 25, ended: false });
        publisher.publish(20);
        assert_eq!(progress.wait_past(0, Duration::ZERO).durable, 25, "never goes back");
        publisher.end(27);
        drop(publisher);
        assert_eq!(progress.wait_past(27, Duration::from_secs(30)), Seen { durable: 27, ended: true });
        assert!(live.get("s1").is_none(), "an ended session leaves the map");
    }

    #[test]
    fn a_dropped_publisher_ends_the_session() {
        let live = Live::default();
        let progress = {
            let p = live.start("s2", 5);
            p.publish(9);
            live.get("s2").unwrap()
        };
        assert_eq!(progress.wait_past(9, Duration::from_secs(30)), Seen { durable: 9, ended: true });
    }

    #[test]
    fn followers_are_bounded() {
        let live = Live::default();
        let held: Vec<_> = (0..MAX_FOLLOWERS).map(|_| live.follower(None).unwrap()).collect();
        assert!(live.follower(None).is_none());
        drop(held);
        assert!(live.follower(None).is_some());
    }
}
