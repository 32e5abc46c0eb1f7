//! Append-only NDJSON segments for API events: `<root>/events/<start-millis>.ndjson`,
//! rotated by size and age.
//!
//! One writer thread takes batches from every proxy connection, appends them all,
//! fsyncs once (group commit) and only then reports them written, so one durable
//! write serves many concurrent requests. At start, a segment whose last line is
//! incomplete (a crash mid-write) is cut back to its last whole line; nothing that
//! was acknowledged is ever in that partial line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use crate::net::queue::{Queue, Slot};

use crate::error::{Context, Result};
use crate::recording::event::ApiEvent;

/// A segment is closed when it reaches this size...
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// ...or this age.
const SEGMENT_AGE: Duration = Duration::from_secs(3600);
/// Batches waiting for the writer before senders wait.
const BATCH_QUEUE: usize = 1024;

struct Batch {
    lines: Vec<u8>,
    done: Arc<Slot<io::Result<()>>>,
}

/// Where a batch's outcome will be: wait on it with [`Slot::wait`].
pub type Written = Arc<Slot<io::Result<()>>>;

#[derive(Clone)]
pub struct EventLog {
    dir: PathBuf,
    queue: Arc<Queue<Batch>>,
}

fn segment_name() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:013}.ndjson", now.as_millis())
}

/// Segments, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.extension().and_then(|e| e.to_str()) == Some("ndjson")).collect();
    v.sort();
    Ok(v)
}

impl EventLog {
    pub fn open(root: &Path) -> Result<EventLog> {
        let dir = root.join("events");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for seg in segments(&dir)? {
            let data = fs::read(&seg)?;
            let keep = data.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
            if keep < data.len() {
                let f = OpenOptions::new().write(true).open(&seg)?;
                f.set_len(keep as u64)?;
                f.sync_all()?;
                log::warn!("event segment cut back to its last whole line path={} bytes={keep}", seg.display());
            }
        }
        let queue = Arc::new(Queue::new(BATCH_QUEUE));
        let (wdir, wqueue) = (dir.clone(), queue.clone());
        std::thread::Builder::new().name("event-log".into()).spawn(move || writer(&wdir, &wqueue))?;
        Ok(EventLog { dir, queue })
    }

    /// Appends whole NDJSON lines; the returned slot says when they are durable (or
    /// why not).
    pub fn append(&self, lines: Vec<u8>) -> Written {
        let done: Written = Arc::new(Slot::default());
        if let Err(b) = self.queue.try_push(Batch { lines, done: done.clone() }) {
            b.done.set(Err(io::Error::other("the event log is not keeping up")));
        }
        done
    }

    /// Events matching `keep`, newest first, at most `limit`.
    pub fn query(&self, keep: impl Fn(&ApiEvent) -> bool, limit: usize) -> Result<Vec<ApiEvent>> {
        let mut out = Vec::new();
        for seg in segments(&self.dir)?.into_iter().rev() {
            let text = fs::read_to_string(&seg).unwrap_or_default();
            for line in text.lines().rev() {
                if let Ok(ev) = serde_json::from_str::<ApiEvent>(line) {
                    if keep(&ev) {
                        out.push(ev);
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

struct Segment {
    file: File,
    bytes: u64,
    opened: Instant,
}

fn open_segment(dir: &Path) -> io::Result<Segment> {
    let file = OpenOptions::new().create(true).append(true).open(dir.join(segment_name()))?;
    File::open(dir)?.sync_all()?;
    Ok(Segment { file, bytes: 0, opened: Instant::now() })
}

fn writer(dir: &Path, queue: &Queue<Batch>) {
    let mut seg: Option<Segment> = None;
    loop {
        let batches = queue.pop_batch(usize::MAX, Duration::from_secs(3600));
        if batches.is_empty() {
            continue;
        }
        let result = (|| -> io::Result<()> {
            if seg.as_ref().is_none_or(|s| s.bytes >= SEGMENT_BYTES || s.opened.elapsed() >= SEGMENT_AGE) {
                seg = Some(open_segment(dir)?);
            }
            let s = seg.as_mut().ok_or_else(|| io::Error::other("no segment"))?;
            for b in &batches {
                s.file.write_all(&b.lines)?;
                s.bytes += b.lines.len() as u64;
            }
            s.file.sync_data()
        })();
        if result.is_err() {
            seg = None; // start a fresh segment next time rather than append after a torn write
        }
        for b in batches {
            b.done.set(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_query_and_recover() {
        let dir = std::env::temp_dir().join(format!("kubetape-events-{}", crate::net::random::hex(8)));
        let log = EventLog::open(&dir).unwrap();
        let ev = |id: &str, verb: &str| serde_json::to_string(&ApiEvent {
            id: id.into(),
            request: crate::kube::request_info::RequestInfo { verb: verb.into(), ..Default::default() },
            received: "2026-11-25T00:00:00.000Z".into(),
            ..ApiEvent::default()
        })
        .unwrap() + "\n";
        let waits: Vec<_> = (0..20).map(|i| log.append(ev(&format!("e{i}"), if i % 2 == 0 { "get" } else { "list" }).into_bytes())).collect();
        for w in waits {
            w.wait(Duration::from_secs(10)).unwrap().unwrap();
        }
        let lists = log.query(|e| e.request.verb == "list", 100).unwrap();
        assert_eq!(lists.len(), 10);
        assert_eq!(lists[0].id, "e19", "newest first");
        // A torn last line is cut back on open.
        let seg = segments(&dir.join("events")).unwrap().pop().unwrap();
        OpenOptions::new().append(true).open(&seg).unwrap().write_all(b"{\"id\":\"torn").unwrap();
        let reopened = EventLog::open(&dir).unwrap();
        assert_eq!(reopened.query(|_| true, 100).unwrap().len(), 20);
        assert!(fs::read_to_string(&seg).unwrap().ends_with('\n'));
        let _ = fs::remove_dir_all(&dir);
    }
}
