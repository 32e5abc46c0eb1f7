//! Append-only NDJSON segments for API events:
//! `<root>/events/<start-millis>-<random>.ndjson` (the random part keeps two recorders'
//! segments apart in a shared bucket), rotated by size and age. With S3 the uploader
//! copies them to the bucket ([`EventLog::open_segment`] says how far the open one is
//! durable) and removes sealed ones from the spool; queries read both.
//!
//! Group commit without a thread of its own: every ingesting connection appends its
//! batches ([`EventLog::write`]) and then asks for them to be durable
//! ([`EventLog::sync_to`]). One of the askers runs `fdatasync` while the others keep
//! appending; when it returns, everyone whose bytes it covered is done, so one
//! durable write serves many concurrent requests and no batch waits for a hand-off
//! between threads. At start, a segment whose last line is incomplete (a crash
//! mid-write) is cut back to its last whole line; nothing that was acknowledged is
//! ever in that partial line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Context, Result};
use crate::record::event::ApiEvent;

/// A segment is closed when it reaches this size...
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// ...or this age.
const SEGMENT_AGE: Duration = Duration::from_secs(3600);

pub struct EventLog {
    dir: PathBuf,
    state: Mutex<LogState>,
    synced: Condvar,
}

/// Positions count every byte ever appended through this log, across segments.
struct LogState {
    seg: Option<Segment>,
    written: u64,
    durable: u64,
    /// Bytes up to here were in a segment that failed; they will never be durable.
    failed: u64,
    syncing: bool,
}

struct Segment {
    file: Arc<File>,
    name: String,
    /// The log position where this segment starts.
    start: u64,
    bytes: u64,
    opened: Instant,
}

fn segment_name() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{:013}-{}", now.as_millis(), crate::net::random::hex(4))
}

/// A segment name as [`segment_name`] makes them (older spools: the millis alone).
pub fn valid_segment(name: &str) -> bool {
    let (millis, rest) = name.split_once('-').unwrap_or((name, ""));
    millis.len() == 13 && millis.bytes().all(|b| b.is_ascii_digit()) && rest.len() <= 16 && rest.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Segments, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.extension().and_then(|e| e.to_str()) == Some("ndjson")).collect();
    v.sort();
    Ok(v)
}

fn open_segment(dir: &Path, start: u64) -> io::Result<Segment> {
    let name = segment_name();
    let file = OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.ndjson")))?;
    File::open(dir)?.sync_all()?;
    Ok(Segment { file: Arc::new(file), name, start, bytes: 0, opened: Instant::now() })
}

/// Events matching `keep` in NDJSON `text`, newest (last) first, into `out` up to `limit`.
pub fn collect_newest_first(text: &[u8], keep: &impl Fn(&ApiEvent) -> bool, limit: usize, out: &mut Vec<ApiEvent>) {
    for line in text.split(|b| *b == b'\n').rev() {
        if out.len() >= limit {
            return;
        }
        if let Ok(ev) = serde_json::from_slice::<ApiEvent>(line) {
            if keep(&ev) {
                out.push(ev);
            }
        }
    }
}

impl EventLog {
    pub fn open(root: &Path) -> Result<EventLog> {
        let dir = root.join("events");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for seg in segments(&dir)? {
            let data = fs::read(&seg)?;
            let keep = crate::storage::whole_lines(&data);
            if keep < data.len() {
                let f = OpenOptions::new().write(true).open(&seg)?;
                f.set_len(keep as u64)?;
                f.sync_all()?;
                log::warn!("event segment cut back to its last whole line path={} bytes={keep}", seg.display());
            }
        }
        let state = LogState { seg: None, written: 0, durable: 0, failed: 0, syncing: false };
        Ok(EventLog { dir, state: Mutex::new(state), synced: Condvar::new() })
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        crate::net::sync::lock(&self.state)
    }

    /// Appends whole NDJSON lines (not yet durable); returns the position to pass to
    /// [`EventLog::sync_to`].
    pub fn write(&self, lines: &[u8]) -> io::Result<u64> {
        let mut st = self.lock();
        let st = &mut *st;
        if st.seg.as_ref().is_none_or(|s| s.bytes >= SEGMENT_BYTES || s.opened.elapsed() >= SEGMENT_AGE) {
            if let Some(old) = st.seg.as_ref().map(|s| s.file.clone()) {
                // What a sync in flight does not cover must be durable before the switch.
                if let Err(e) = old.sync_data() {
                    self.fail(st);
                    return Err(e);
                }
                st.durable = st.written;
            }
            st.seg = Some(open_segment(&self.dir, st.written)?);
        }
        let Some(seg) = st.seg.as_mut() else { unreachable!("opened above") };
        if let Err(e) = (&*seg.file).write_all(lines) {
            // Never append after a torn write: the next batch starts a fresh segment.
            self.fail(st);
            return Err(e);
        }
        seg.bytes += lines.len() as u64;
        st.written += lines.len() as u64;
        Ok(st.written)
    }

    /// Everything written so far is lost: it will never be reported durable.
    fn fail(&self, st: &mut LogState) {
        st.seg = None;
        st.failed = st.written;
        self.synced.notify_all();
    }

    /// Waits until the bytes up to `pos` are durable, running the `fdatasync` itself
    /// when nobody else is; returns whether this call ran one.
    pub fn sync_to(&self, pos: u64) -> io::Result<bool> {
        let mut st = self.lock();
        let mut ran = false;
        loop {
            if st.durable >= pos {
                return Ok(ran);
            }
            if st.failed >= pos {
                return Err(io::Error::other("the event segment failed before these events were durable"));
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let Some(file) = st.seg.as_ref().map(|s| s.file.clone()) else {
                return Err(io::Error::other("no event segment open"));
            };
            let target = st.written;
            st.syncing = true;
            drop(st);
            let result = file.sync_data();
            ran = true;
            st = self.lock();
            st.syncing = false;
            match result {
                Ok(()) => st.durable = st.durable.max(target),
                Err(e) => {
                    log::error!("event segment sync failed error={e}");
                    self.fail(&mut st);
                }
            }
            self.synced.notify_all();
        }
    }

    /// The open segment's name and how many of its bytes are durable (whole lines:
    /// every batch is), or `None` before the first write.
    pub fn open_segment(&self) -> Option<(String, u64)> {
        let st = self.lock();
        st.seg.as_ref().map(|s| (s.name.clone(), st.durable.saturating_sub(s.start).min(s.bytes)))
    }

    /// Every segment's name, oldest first.
    pub fn segment_names(&self) -> Result<Vec<String>> {
        Ok(segments(&self.dir)?.iter().filter_map(|p| Some(p.file_stem()?.to_str()?.to_string())).collect())
    }

    pub fn segment_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.ndjson"))
    }

    /// Drops a sealed segment once it is in the bucket; never the open one.
    pub fn remove_sealed(&self, name: &str) -> io::Result<()> {
        let st = self.lock();
        if st.seg.as_ref().is_some_and(|s| s.name == name) {
            return Ok(());
        }
        fs::remove_file(self.segment_path(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_query_and_recover() {
        let dir = std::env::temp_dir().join(format!("kubetape-events-{}", crate::net::random::hex(8)));
        let log = EventLog::open(&dir).unwrap();
        let ev = |id: &str, verb: &str| {
            serde_json::to_string(&ApiEvent {
                id: id.into(),
                request: crate::kube::request_info::RequestInfo { verb: verb.into(), ..Default::default() },
                received: "2026-11-25T00:00:00.000Z".into(),
                ..ApiEvent::default()
            })
            .unwrap()
                + "\n"
        };
        let log = Arc::new(log);
        // Concurrent writers share syncs; each learns when its own lines are durable.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in (t..20).step_by(4) {
                        let pos = log.write(ev(&format!("e{i:02}"), if i % 2 == 0 { "get" } else { "list" }).as_bytes()).unwrap();
                        log.sync_to(pos).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let lists = crate::storage::query_events(&log, None, |e| e.request.verb == "list", 100).unwrap();
        assert_eq!(lists.len(), 10);
        let mut ids: Vec<&str> = lists.iter().map(|e| e.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["e01", "e03", "e05", "e07", "e09", "e11", "e13", "e15", "e17", "e19"]);
        // A torn last line is cut back on open.
        let seg = segments(&dir.join("events")).unwrap().pop().unwrap();
        OpenOptions::new().append(true).open(&seg).unwrap().write_all(b"{\"id\":\"torn").unwrap();
        let reopened = EventLog::open(&dir).unwrap();
        assert_eq!(crate::storage::query_events(&reopened, None, |_| true, 100).unwrap().len(), 20);
        assert!(fs::read_to_string(&seg).unwrap().ends_with('\n'));
        let _ = fs::remove_dir_all(&dir);
    }
}
