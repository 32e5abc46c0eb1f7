//! The uploader: one thread that reaches the bucket (retrying with a doubling delay
//! while it cannot, its readiness saying why), then copies the spool into it one pass
//! at a time, every half `--s3-flush-interval`, so while S3 answers no durable byte
//! stays only in the spool for longer than the interval. Each pass:
//!
//! 1. puts this recorder's lease when the sessions it names change (every session in
//!    the spool, and those handed off), before their segments go up, so a segment in
//!    the bucket always has a lease naming it; a thread of its own renews the lease
//!    every half interval, however long a pass takes;
//! 2. for each running session, puts its sidecar once and its new durable whole lines
//!    as one segment; for each ended one, the whole cast, the final sidecar, then
//!    deletes its segments and its spool files;
//! 3. does the same for API event segments (the open one in parts, sealed ones whole);
//! 4. adopts the sessions of leases that stopped changing (their recorder is gone, its
//!    spool with it): their segments become `interrupted` recordings.
//!
//! A cast larger than one part goes up as a multipart upload whose id is first noted in
//! the spool (`uploads/`), so one cut short by a crash is aborted at the next start
//! rather than left to cost storage.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{s3_err, S3Store, RETRY_FIRST, RETRY_MAX, S3};
use crate::error::{Error, Result};
use crate::net::sync::lock;
use crate::record::protocol::{SessionMeta, Status};
use crate::storage::events::EventLog;
use crate::storage::fs::FsStore;

/// Passes never come closer than this, whatever the flush interval.
const MIN_PASS: Duration = Duration::from_millis(100);
/// A cast up to this size goes up in one request; a larger one in parts of this size
/// (S3's minimum part is 5 MiB; fewer, larger requests cost less).
const PART_BYTES: u64 = 8 * 1024 * 1024;
/// A lease unchanged for this many flush intervals (as seen here) belongs to a recorder
/// that is gone: one that lives renews it every half interval, and one cut off from S3
/// is not judged by a recorder that was cut off too (`Uploader::pass` forgets what it
/// saw of leases when its own pass fails).
const STALE_INTERVALS: u32 = 10;
/// ... and never less than this, so a short flush interval does not make a GC pause
/// or a slow request look like a lost recorder.
const STALE_MIN: Duration = Duration::from_secs(5);
const CAST_TYPE: &str = "application/x-asciicast";

/// What the uploader needs to know of the recorder it runs in.
pub trait Spool: Send + Sync {
    fn events(&self) -> &EventLog;
    /// How far a session running here is durable in whole lines (`None`: not running).
    fn durable(&self, id: &str) -> Option<u64>;
    /// Removes an uploaded recording's spool files, unless it changed since `uploaded`
    /// was read (a resume took it up again); whether it removed them.
    fn remove_uploaded(&self, cast: &Path, uploaded: &SessionMeta) -> std::io::Result<bool>;
}

/// `recorders/<replica>.json`.
#[derive(Serialize, Deserialize)]
struct Lease {
    replica: String,
    /// Counts renewals: a lease whose body stops changing is not being renewed.
    renewal: u64,
    #[serde(rename = "renewedAt")]
    renewed_at: String,
    sessions: Vec<LeasedSession>,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Hash, Clone)]
struct LeasedSession {
    id: String,
    day: String,
}

/// This recorder's lease as it keeps it: renewed by a thread of its own every half
/// flush interval (a long pass, a large upload, does not make it look lost), and put
/// by a pass at once when the sessions it names change (before their segments go up).
#[derive(Default)]
struct LeaseState {
    /// `None` until the uploader started: the lease left by this replica's last run
    /// names what it may have to adopt, and is not overwritten before that.
    sessions: Option<Vec<LeasedSession>>,
    renewal: u64,
}

type SharedLease = Arc<Mutex<LeaseState>>;

/// Puts this replica's lease with a new renewal count, if the uploader started.
fn put_lease(store: &S3Store, replica: &str, lease: &SharedLease) -> Result<()> {
    let body = {
        let mut st = lock(lease);
        let Some(sessions) = st.sessions.clone() else { return Ok(()) };
        st.renewal += 1;
        serde_json::to_vec(&Lease { replica: replica.to_string(), renewal: st.renewal, renewed_at: crate::wire::time::now_rfc3339(), sessions })
            .map_err(|e| Error::new(e.to_string()))?
    };
    store.put(&lease_key(replica), &body)
}

fn lease_key(replica: &str) -> String {
    format!("recorders/{replica}.json")
}

/// A multipart upload in flight, noted in the spool before its first part.
#[derive(Serialize, Deserialize)]
struct PendingUpload {
    key: String,
    #[serde(rename = "uploadId")]
    upload_id: String,
}

pub struct Uploader {
    s3: Arc<S3>,
    spool: FsStore,
    uploads: PathBuf,
    replica: String,
    lease: SharedLease,
    /// Sessions handed off at shutdown: the lease keeps naming them, so one no recorder
    /// took up is adopted as `interrupted`.
    handed_off: Vec<LeasedSession>,
    /// What this replica's last run named and its spool lacks: adopted, unless another
    /// recorder holds them, once `stale_after` passed since the start.
    inherited: Vec<LeasedSession>,
    started: Instant,
    /// Per running session: how much of its cast is in segments.
    sent: HashMap<String, u64>,
    /// Running sessions whose `recording` sidecar is in the bucket.
    announced: HashSet<String>,
    /// Per open event segment: how much of it is in parts.
    events_sent: HashMap<String, u64>,
    /// Other recorders' leases as last read here, and since when they are unchanged.
    leases: HashMap<String, (Vec<u8>, Instant)>,
    stale_after: Duration,
    /// When a pass last left nothing pending.
    clean_at: Instant,
}

/// The spool's day folder of a cast file (its parent's name).
fn day_of(cast: &Path) -> String {
    cast.parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Bytes `from..to` of `file`.
fn read_range(file: &File, from: u64, to: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(to.saturating_sub(from)).map_err(|_| Error::new("a range too large to read at once"))?];
    file.read_exact_at(&mut buf, from)?;
    Ok(buf)
}

/// Puts bytes `from..to` of the growing file at `path` as the part `<dir>/<from>.part`.
fn put_part(store: &S3Store, dir: &str, path: &Path, from: u64, to: u64) -> Result<()> {
    store.put(&format!("{dir}/{from:020}.part"), &read_range(&File::open(path)?, from, to)?)
}

fn reached(store: Option<&S3Store>) -> Result<&S3Store> {
    store.ok_or_else(|| Error::new("the S3 bucket has not been reached yet"))
}

impl Uploader {
    /// An uploader for the spool at `dir`, once the bucket answered: aborts multipart
    /// uploads a crash cut short, and adopts what this replica's last lease named but
    /// the spool no longer has (it was wiped: the pod was deleted).
    fn start(s3: Arc<S3>, dir: &Path, replica: &str, lease: SharedLease) -> Result<Uploader> {
        let replica = replica.to_string();
        let stale_after = (s3.config.flush * STALE_INTERVALS).max(STALE_MIN);
        let uploads = dir.join("uploads");
        fs::create_dir_all(&uploads)?;
        let mut up = Uploader {
            s3,
            spool: FsStore::open_read_only(dir),
            uploads,
            replica,
            lease,
            handed_off: Vec::new(),
            inherited: Vec::new(),
            started: Instant::now(),
            sent: HashMap::new(),
            announced: HashSet::new(),
            events_sent: HashMap::new(),
            leases: HashMap::new(),
            stale_after,
            clean_at: Instant::now(),
        };
        up.abort_cut_short()?;
        let store = reached(up.s3.store())?;
        if let Some(old) = store.get_opt(&lease_key(&up.replica))? {
            match serde_json::from_slice::<Lease>(&old) {
                Ok(old) => {
                    // Not adopted at once: one handed off at shutdown may be going on
                    // elsewhere, its new recorder's sidecar not in the bucket yet.
                    let here: HashSet<String> = up.spool.sessions()?.into_iter().map(|(m, _)| m.id).collect();
                    up.inherited = old.sessions.into_iter().filter(|s| !here.contains(&s.id)).collect();
                }
                Err(e) => log::warn!("unreadable lease of this recorder's last run, ignored replica={} error={e}", up.replica),
            }
        }
        log::info!("s3 uploader started replica={} stale_after={:?}", up.replica, up.stale_after);
        Ok(up)
    }

    fn abort_cut_short(&self) -> Result<()> {
        let store = reached(self.s3.store())?;
        for entry in fs::read_dir(&self.uploads)?.flatten() {
            self.abort_noted(store, &entry.path())?;
        }
        Ok(())
    }

    /// Aborts the multipart upload noted at `note`, if there is one, and drops the note.
    fn abort_noted(&self, store: &S3Store, note: &Path) -> Result<()> {
        let p = match fs::read(note) {
            Ok(data) => serde_json::from_slice::<PendingUpload>(&data).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if let Some(p) = p {
            match store.bucket.abort_upload(&p.key, &p.upload_id) {
                Ok(()) => log::info!("s3 unfinished multipart upload aborted key={}", p.key),
                // Already completed or aborted.
                Err(s3::error::S3Error::HttpFailWithBody(404, _)) => {}
                Err(e) => return Err(s3_err("aborting an unfinished upload")(e)),
            }
        }
        fs::remove_file(note)?;
        Ok(())
    }

    /// Uploads what is durable and not in the bucket yet.
    pub fn pass(&mut self, here: &dyn Spool) -> Result<()> {
        let result = self.try_pass(here);
        if result.is_err() {
            // Cut off from S3 ourselves, we cannot tell who else was: judge leases afresh.
            self.leases.clear();
        }
        result
    }

    fn try_pass(&mut self, here: &dyn Spool) -> Result<()> {
        let s3 = self.s3.clone();
        let sessions = self.spool.sessions()?;
        let running: Vec<(&SessionMeta, &PathBuf, u64)> =
            sessions.iter().filter(|(m, _)| m.status == Status::Recording).filter_map(|(m, c)| Some((m, c, here.durable(&m.id)?))).collect();
        let ended: Vec<&(SessionMeta, PathBuf)> = sessions.iter().filter(|(m, _)| m.status != Status::Recording).collect();
        // What waits is shown before any request, so an unreachable bucket shows it too.
        let mut pending =
            running.iter().map(|(m, _, end)| end.saturating_sub(self.sent.get(&m.id).copied().unwrap_or(0))).sum::<u64>() + ended.iter().map(|(m, _)| m.bytes).sum::<u64>();
        self.report(pending, false);
        let store = reached(s3.store())?;
        // Every session the spool holds (an ended one may not be uploaded yet), and
        // those handed off.
        let mut named: Vec<LeasedSession> = sessions.iter().map(|(m, c)| LeasedSession { id: m.id.clone(), day: day_of(c) }).collect();
        named.extend(self.handed_off.iter().chain(&self.inherited).cloned());
        let changed = lock(&self.lease).sessions.as_ref() != Some(&named);
        if changed {
            lock(&self.lease).sessions = Some(named);
            put_lease(store, &self.replica, &self.lease)?;
        }
        let mut failed = None;
        for (meta, cast, end) in &running {
            match self.segment(store, meta, cast, *end) {
                Ok(n) => pending -= n,
                // The others still get their turn; the pass reports the first failure.
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        for (meta, cast) in ended {
            match self.finish(store, here, meta, cast) {
                Ok(()) => pending -= meta.bytes,
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Err(e) = self.events(store, here.events()) {
            failed = failed.or(Some(e));
        }
        if let Err(e) = self.adopt_lost(store) {
            failed = failed.or(Some(e));
        }
        self.report(pending, failed.is_none());
        failed.map_or(Ok(()), Err)
    }

    /// Publishes the pending bytes and how long they may have waited: since the last
    /// pass that worked and left nothing pending.
    fn report(&mut self, pending: u64, worked: bool) {
        if pending == 0 && worked {
            self.clean_at = Instant::now();
        }
        let stats = &self.s3.stats;
        stats.pending.store(pending, Ordering::Relaxed);
        stats.lag_millis.store(if pending == 0 { 0 } else { self.clean_at.elapsed().as_millis() as u64 }, Ordering::Relaxed);
    }

    /// Puts a running session's sidecar once, then bytes `sent..end` as one segment;
    /// returns how many went up.
    fn segment(&mut self, store: &S3Store, meta: &SessionMeta, cast: &Path, end: u64) -> Result<u64> {
        let base = format!("sessions/{}/{}", day_of(cast), meta.id);
        if !self.announced.contains(&meta.id) {
            store.put(&format!("{base}.json"), &self.sidecar(meta)?)?;
            self.announced.insert(meta.id.clone());
        }
        let from = self.sent.get(&meta.id).copied().unwrap_or(0);
        if end <= from {
            return Ok(0);
        }
        put_part(store, &base, cast, from, end)?;
        self.sent.insert(meta.id.clone(), end);
        self.s3.stats.bytes.fetch_add(end - from, Ordering::Relaxed);
        log::debug!("s3 segment uploaded id={} from={from} bytes={}", meta.id, end - from);
        Ok(end - from)
    }

    /// Uploads an ended recording as its cast and sidecar, drops its segments, then
    /// its spool files.
    fn finish(&mut self, store: &S3Store, here: &dyn Spool, meta: &SessionMeta, cast: &Path) -> Result<()> {
        let day = day_of(cast);
        let base = format!("sessions/{day}/{}", meta.id);
        // Cut short here (a crash, a lost stream), it may have gone on elsewhere: then
        // that recorder's recording is the whole one, and this copy only its start. Only
        // an adopted one (`interrupted` by another) that holds less gives way to it.
        if let Some(there) = store.sidecar(&day, &meta.id)? {
            let elsewhere = there.recorder.as_deref().is_some_and(|r| r != self.replica);
            if elsewhere && !(there.status == Status::Interrupted && there.bytes < meta.bytes) {
                log::info!("recording continued by another recorder; this copy is dropped id={} recorder={}", meta.id, there.recorder.unwrap_or_default());
                here.remove_uploaded(cast, meta)?;
                return Ok(());
            }
        }
        let sidecar = self.sidecar(meta)?;
        self.put_file(store, &format!("{base}.cast"), cast, meta.bytes, &meta.id)?;
        store.put(&format!("{base}.json"), &sidecar)?;
        store.delete_parts(&base)?;
        if !here.remove_uploaded(cast, meta)? {
            // Taken up again here meanwhile (a resume): it goes up again when it ends.
            log::info!("recording continued here while it was uploaded; its spool files stay id={}", meta.id);
            return Ok(());
        }
        let already = self.sent.remove(&meta.id).unwrap_or(0);
        self.announced.remove(&meta.id);
        self.s3.stats.bytes.fetch_add(meta.bytes.saturating_sub(already), Ordering::Relaxed);
        log::info!("s3 recording uploaded id={} status={:?} bytes={}", meta.id, meta.status, meta.bytes);
        Ok(())
    }

    /// A sidecar as the bucket keeps it: naming this recorder as the one holding it.
    fn sidecar(&self, meta: &SessionMeta) -> Result<Vec<u8>> {
        self.s3.sidecar(meta)
    }

    /// At shutdown, after the sessions recorded here were asked to move: what is
    /// durable of each goes up as a segment (the recorder continuing it reads it from
    /// the bucket), then it leaves the spool. The lease is left naming them, so one
    /// that no recorder took up is finished as `interrupted` by whoever adopts it.
    pub fn hand_off(&mut self, here: &dyn Spool) -> Result<()> {
        let s3 = self.s3.clone();
        let store = reached(s3.store())?;
        for (meta, cast) in self.spool.sessions()?.into_iter().filter(|(m, _)| m.status == Status::Recording) {
            let len = match here.durable(&meta.id) {
                Some(n) => n,
                None => fs::metadata(&cast)?.len(),
            };
            self.segment(store, &meta, &cast, len)?;
            self.spool.remove(&cast)?;
            self.sent.remove(&meta.id);
            self.announced.remove(&meta.id);
            self.handed_off.push(LeasedSession { id: meta.id.clone(), day: day_of(&cast) });
            log::info!("s3 recording handed off id={} bytes={len}", meta.id);
        }
        Ok(())
    }

    /// Puts the first `len` bytes of `path` as `rel`: in one request, or as a
    /// multipart upload noted in the spool under `tag` until it completes.
    fn put_file(&self, store: &S3Store, rel: &str, path: &Path, len: u64, tag: &str) -> Result<()> {
        let file = File::open(path)?;
        let read = |at: u64, n: u64| read_range(&file, at, at + n);
        if len <= PART_BYTES {
            return store.put(rel, &read(0, len)?);
        }
        let key = store.key(rel);
        let note = self.uploads.join(format!("{tag}.upload"));
        // An earlier attempt whose abort failed too (S3 was away) is aborted first.
        self.abort_noted(store, &note)?;
        let started = store.bucket.initiate_multipart_upload(&key, CAST_TYPE).map_err(s3_err("starting an upload"))?;
        fs::write(&note, serde_json::to_vec(&PendingUpload { key: key.clone(), upload_id: started.upload_id.clone() }).map_err(|e| Error::new(e.to_string()))?)?;
        let parts = (0..len.div_ceil(PART_BYTES))
            .map(|i| {
                let at = i * PART_BYTES;
                let chunk = read(at, PART_BYTES.min(len - at))?;
                let number = u32::try_from(i + 1).map_err(|_| Error::new("too many parts"))?;
                store.bucket.put_multipart_chunk(&chunk, &key, number, &started.upload_id, CAST_TYPE).map_err(s3_err("writing a part"))
            })
            .collect::<Result<Vec<_>>>();
        let done = parts.and_then(|p| match store.bucket.complete_multipart_upload(&key, &started.upload_id, p) {
            Ok(_) => Ok(()),
            // S3 may answer 200 with an error document (rust-s3 checks for that); a
            // 200 whose root is not `CompleteMultipartUploadResult` but is no error
            // either (moto says `...Response`) completed.
            Err(s3::error::S3Error::HttpFailWithBody(200, body)) if !body.contains("<Error>") => Ok(()),
            Err(e) => Err(s3_err("completing an upload")(e)),
        });
        if let Err(e) = done {
            if store.bucket.abort_upload(&key, &started.upload_id).is_ok() {
                let _ = fs::remove_file(&note);
            }
            return Err(e);
        }
        fs::remove_file(&note)?;
        Ok(())
    }

    /// The open event segment goes up in parts as it becomes durable; sealed ones whole,
    /// then they leave the spool.
    fn events(&mut self, store: &S3Store, log: &EventLog) -> Result<()> {
        let open = log.open_segment();
        for name in log.segment_names()? {
            let rel = format!("events/{name}");
            match &open {
                Some((current, durable)) if *current == name => {
                    let from = self.events_sent.get(&name).copied().unwrap_or(0);
                    if *durable > from {
                        put_part(store, &rel, &log.segment_path(&name), from, *durable)?;
                        self.events_sent.insert(name, *durable);
                    }
                }
                // Rotated since `open` was read: it is the open one, next pass.
                _ if log.open_segment().is_some_and(|(current, _)| current == name) => {}
                _ => {
                    let path = log.segment_path(&name);
                    let len = fs::metadata(&path)?.len();
                    self.put_file(store, &format!("{rel}.ndjson"), &path, len, &format!("events-{name}"))?;
                    store.delete_parts(&rel)?;
                    log.remove_sealed(&name)?;
                    self.events_sent.remove(&name);
                    log::info!("s3 event segment uploaded name={name} bytes={len}");
                }
            }
        }
        Ok(())
    }

    /// Reads the other recorders' leases; the sessions of one unchanged for
    /// `stale_after` are adopted, then the lease is deleted.
    fn adopt_lost(&mut self, store: &S3Store) -> Result<()> {
        if !self.inherited.is_empty() && self.started.elapsed() >= self.stale_after {
            for s in std::mem::take(&mut self.inherited) {
                self.adopt(store, &s, &self.replica.clone())?;
            }
        }
        let mine = lease_key(&self.replica);
        let now = Instant::now();
        let mut seen = HashSet::new();
        for key in store.keys("recorders/")?.into_iter().filter(|k| *k != mine && k.ends_with(".json")) {
            let Some(body) = store.get_opt(&key)? else { continue };
            seen.insert(key.clone());
            let since = match self.leases.get(&key) {
                Some((last, since)) if *last == body => *since,
                _ => {
                    self.leases.insert(key, (body, now));
                    continue;
                }
            };
            if now.duration_since(since) < self.stale_after {
                continue;
            }
            match serde_json::from_slice::<Lease>(&body) {
                Ok(lease) => {
                    log::warn!("recorder lost: its lease has not changed for {:?} replica={} sessions={}", self.stale_after, lease.replica, lease.sessions.len());
                    for s in &lease.sessions {
                        self.adopt(store, s, &lease.replica)?;
                    }
                }
                Err(e) => log::warn!("unreadable recorder lease in the bucket key={key} error={e}"),
            }
            store.delete(&key)?;
            self.leases.remove(&key);
        }
        self.leases.retain(|k, _| seen.contains(k));
        Ok(())
    }

    /// Turns a lost recorder's running session into an `interrupted` recording: its
    /// segments' whole lines as the cast, then the sidecar, then the segments go.
    fn adopt(&self, store: &S3Store, s: &LeasedSession, replica: &str) -> Result<()> {
        let base = format!("sessions/{}/{}", s.day, s.id);
        let Some(mut meta) = store.sidecar(&s.day, &s.id)? else { return Ok(()) };
        if meta.status != Status::Recording || meta.recorder.as_deref().is_some_and(|r| r != replica) {
            return Ok(()); // it ended, another recorder adopted it first, or took it over
        }
        let parts = store.parts(&base)?;
        let (mut cast, gap) = parts.join(store)?;
        if gap {
            log::warn!("a lost recorder's session has a gap in its segments: what follows it is left out id={}", s.id);
        }
        cast.truncate(crate::storage::whole_lines(&cast));
        store.put(&format!("{base}.cast"), &cast)?;
        meta.status = Status::Interrupted;
        meta.bytes = cast.len() as u64;
        meta.ended = Some(crate::wire::time::now_rfc3339());
        meta.reason = Some(format!("its recorder ({replica}) was lost with its spool: what it had not yet uploaded (at most the last flush interval) is missing"));
        store.put(&format!("{base}.json"), &self.sidecar(&meta)?)?;
        store.delete_parts(&base)?;
        log::warn!("recording interrupted: adopted from a lost recorder id={} replica={replica} bytes={}", s.id, meta.bytes);
        Ok(())
    }
}

/// Reaches the bucket, then runs passes every half `flush` (retrying failures with a
/// doubling delay) on a thread of its own for as long as the process lives. The
/// returned uploader is `None` until the bucket was reached; the recorder runs a last
/// pass with it at shutdown.
pub fn spawn(s3: Arc<S3>, dir: PathBuf, here: Arc<dyn Spool>) -> std::io::Result<Arc<Mutex<Option<Uploader>>>> {
    let every = (s3.config.flush / 2).max(MIN_PASS);
    let replica = s3.replica().to_string();
    let lease = SharedLease::default();
    {
        let (s3, replica, lease) = (s3.clone(), replica.clone(), lease.clone());
        std::thread::Builder::new().name("s3-lease".into()).spawn(move || loop {
            std::thread::sleep(every);
            if let Some(store) = s3.store() {
                if let Err(e) = put_lease(store, &replica, &lease) {
                    log::debug!("s3 lease renewal failed error={e}");
                }
            }
        })?;
    }
    let shared = Arc::new(Mutex::new(None::<Uploader>));
    let uploader = shared.clone();
    let spool = FsStore::open_read_only(&dir);
    std::thread::Builder::new().name("s3-upload".into()).spawn(move || {
        let (mut delay, mut failing) = (Duration::ZERO, false);
        loop {
            std::thread::sleep(delay);
            let mut current = lock(&uploader);
            let result = match current.as_mut() {
                Some(up) => up.pass(here.as_ref()),
                None => connect(&s3, &dir, &replica, &lease, here.as_ref()).map(|up| *current = Some(up)),
            };
            drop(current);
            match result {
                Ok(()) => {
                    if s3.set_problem(None) {
                        log::info!("s3 ready bucket={}", s3.config.bucket);
                    }
                    (delay, failing) = (every, false);
                }
                Err(e) => {
                    s3.stats.errors.fetch_add(1, Ordering::Relaxed);
                    delay = if failing { (delay * 2).min(RETRY_MAX) } else { RETRY_FIRST };
                    failing = true;
                    // One line naming what is wrong, at most every RETRY_MAX.
                    log::warn!("s3 upload pass failed, retrying in {delay:?} error={e}");
                    s3.set_problem(Some(e.to_string()));
                }
            }
            // Counted whether or not S3 answers: the bound matters most when it does not.
            s3.stats.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
        }
    })?;
    Ok(shared)
}

/// Reaches the bucket and starts the uploader, with a first pass.
fn connect(s3: &Arc<S3>, dir: &Path, replica: &str, lease: &SharedLease, here: &dyn Spool) -> Result<Uploader> {
    if s3.store().is_none() {
        let store = S3Store::connect(&s3.config)?;
        let _ = s3.store.set(store);
        log::info!("s3 bucket reached bucket={} prefix={:?} flush_interval={:?}", s3.config.bucket, s3.config.prefix, s3.config.flush);
    }
    let mut up = Uploader::start(s3.clone(), dir, replica, lease.clone())?;
    up.pass(here)?;
    Ok(up)
}
