//! S3-compatible storage for recordings, behind the filesystem spool. The recorder
//! still acknowledges a byte once it is fsync'd in the spool (`--storage-dir`); an
//! uploader thread copies what is durable there into the bucket, running behind:
//!
//! - while a session records, every pass uploads its new durable whole lines as one
//!   segment object `<prefix>/sessions/<day>/<id>/<offset>.part` (`offset`: where the
//!   segment starts in the cast, 20 digits so keys sort in cast order);
//! - once its sidecar leaves `recording`, the whole cast goes up as
//!   `<prefix>/sessions/<day>/<id>.cast`, then the sidecar as `<id>.json`, then its
//!   segments are deleted. The sidecar goes last: a reader that finds it finds the cast.
//!
//! Passes run every half `--s3-flush-interval`, so while S3 answers, no durable byte
//! stays only in the spool for longer than the interval; a failed pass is retried with
//! a doubling delay. Reads ([`Recordings`]) find recordings by their sidecars, so a
//! recorder with an empty spool serves what another one uploaded. Credentials come
//! from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`(/`AWS_SESSION_TOKEN`) or the
//! shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, as a mounted Secret) and
//! are never logged.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s3::bucket::Bucket;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::region::Region;

use crate::args::{Args, Flag};
use crate::error::{Error, Result};
use crate::net::sync::lock;
use crate::record::protocol::{valid_id, SessionMeta, Status};
use crate::storage::fs::FsStore;
use crate::storage::{Cast, Recordings};

pub const FLAGS: &[Flag] = &[
    Flag { name: "s3-bucket", default: None, help: "also keep recordings in this S3 bucket (the storage dir is then the upload spool)" },
    Flag { name: "s3-endpoint", default: None, help: "S3-compatible endpoint URL (default: AWS for --s3-region)" },
    Flag { name: "s3-region", default: Some("us-east-1"), help: "S3 region (signing region with --s3-endpoint)" },
    Flag { name: "s3-prefix", default: None, help: "key prefix, so several clusters can share a bucket" },
    Flag { name: "s3-path-style", default: Some("false"), help: "path-style requests (endpoint/bucket/key), as most S3-compatible servers need" },
    Flag { name: "s3-flush-interval", default: Some("10s"), help: "longest a durable byte waits in the spool while S3 is healthy (e.g. 10s, 500ms)" },
];

/// An S3 request that takes longer than this failed (the pass is retried); long
/// enough for a large cast on a slow link, short enough that a hung endpoint does not
/// hold the uploader for minutes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The first retry after a failed pass, doubling up to [`RETRY_MAX`]: an endpoint that
/// is down is not hammered, one that is back is used again within half a minute.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Passes never come closer than this, whatever the flush interval.
const MIN_PASS: Duration = Duration::from_millis(100);
/// How much of a server's error body goes into a message (they can be long XML).
const ERROR_BODY_MAX: usize = 300;

/// The `--s3-*` flags.
#[derive(Clone, Debug)]
pub struct S3Config {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub prefix: String,
    pub path_style: bool,
    pub flush: Duration,
}

/// `10s`, `500ms`, `2m` or plain seconds.
fn parse_interval(v: &str) -> Option<Duration> {
    let (num, unit) = v.find(|c: char| !c.is_ascii_digit()).map(|i| v.split_at(i)).unwrap_or((v, "s"));
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

impl S3Config {
    /// `None` without `--s3-bucket` (filesystem only).
    pub fn from_args(args: &Args) -> Result<Option<S3Config>> {
        let Some(bucket) = args.opt("s3-bucket") else { return Ok(None) };
        let interval = args.required("s3-flush-interval")?;
        let flush = parse_interval(&interval).ok_or_else(|| Error::new(format!("--s3-flush-interval: expected a duration such as 10s or 500ms, found {interval:?}")))?;
        Ok(Some(S3Config {
            bucket,
            endpoint: args.opt("s3-endpoint"),
            region: args.required("s3-region")?,
            prefix: args.opt("s3-prefix").map(|p| p.trim_matches('/').to_string()).unwrap_or_default(),
            path_style: args.bool("s3-path-style")?,
            flush,
        }))
    }
}

/// One line, bounded: what an S3 error says, for logs and startup errors.
fn describe(e: &S3Error) -> String {
    let text = match e {
        S3Error::HttpFailWithBody(code, body) => {
            // The S3 error code is the useful part of the XML body.
            let code_text = body.split("<Code>").nth(1).and_then(|r| r.split("</Code>").next()).unwrap_or("");
            format!("HTTP {code} {code_text}")
        }
        other => other.to_string(),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(ERROR_BODY_MAX).collect()
}

fn s3_err(what: &str) -> impl Fn(S3Error) -> Error + '_ {
    move |e| Error::new(format!("S3 {what}: {}", describe(&e)))
}

/// The credentials from the environment, else from the shared credentials file.
fn credentials() -> Result<Credentials> {
    Credentials::from_env().or_else(|_| Credentials::from_profile(None)).map_err(|_| {
        Error::new("S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if temporary), or AWS_SHARED_CREDENTIALS_FILE to a credentials file")
    })
}

/// A bucket and the prefix of this recorder's keys.
pub struct S3Store {
    bucket: Box<Bucket>,
    /// `""` or `"<prefix>/"`.
    prefix: String,
}

impl S3Store {
    /// Connects and checks the bucket can be listed; every error names the flag or
    /// variable to fix, on one line.
    pub fn connect(config: &S3Config) -> Result<S3Store> {
        let region = match &config.endpoint {
            Some(endpoint) => Region::Custom { region: config.region.clone(), endpoint: endpoint.trim_end_matches('/').to_string() },
            None => config.region.parse().map_err(|_| Error::new(format!("--s3-region: unknown region {:?}", config.region)))?,
        };
        let mut bucket = Bucket::new(&config.bucket, region, credentials()?).map_err(|e| Error::new(format!("--s3-bucket {:?}: {}", config.bucket, describe(&e))))?;
        if config.path_style {
            bucket = bucket.with_path_style();
        }
        bucket.set_request_timeout(Some(REQUEST_TIMEOUT));
        let prefix = if config.prefix.is_empty() { String::new() } else { format!("{}/", config.prefix) };
        let store = S3Store { bucket, prefix };
        let where_ = config.endpoint.as_deref().unwrap_or("AWS");
        match store.bucket.list_page(store.key("sessions/"), None, None, None, Some(1)) {
            Ok(_) => Ok(store),
            Err(S3Error::HttpFailWithBody(code @ (401 | 403), body)) => crate::bail!(
                "--s3-bucket {:?}: access denied at {where_} ({}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the credentials file",
                config.bucket,
                describe(&S3Error::HttpFailWithBody(code, body))
            ),
            Err(e @ S3Error::HttpFailWithBody(..)) => crate::bail!("--s3-bucket {:?}: the bucket cannot be listed at {where_}: {}", config.bucket, describe(&e)),
            Err(e) => crate::bail!("--s3-endpoint {where_}: not reachable for bucket {:?}: {}", config.bucket, describe(&e)),
        }
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// Every key under `rel`.
    fn keys(&self, rel: &str) -> Result<Vec<String>> {
        let pages = self.bucket.list(self.key(rel), None).map_err(s3_err("listing"))?;
        Ok(pages.into_iter().flat_map(|p| p.contents).map(|o| o.key).collect())
    }

    /// `(day, id)` of every sidecar in the bucket.
    fn sidecars(&self) -> Result<Vec<(String, String)>> {
        let base = self.key("sessions/");
        Ok(self
            .keys("sessions/")?
            .into_iter()
            .filter_map(|k| {
                let rel = k.strip_prefix(&base)?;
                let (day, file) = rel.split_once('/')?;
                let id = file.strip_suffix(".json")?;
                valid_id(id).then(|| (day.to_string(), id.to_string()))
            })
            .collect())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        Ok(self.bucket.get_object(key).map_err(s3_err("reading"))?.to_vec())
    }

    fn sidecar(&self, day: &str, id: &str) -> Result<Option<SessionMeta>> {
        let key = self.key(&format!("sessions/{day}/{id}.json"));
        match serde_json::from_slice(&self.get(&key)?) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                log::warn!("unreadable recording sidecar in the bucket key={key} error={e}");
                Ok(None)
            }
        }
    }

    fn find(&self, id: &str) -> Result<Option<String>> {
        if !valid_id(id) {
            return Ok(None);
        }
        Ok(self.sidecars()?.into_iter().find(|(_, i)| i == id).map(|(day, _)| day))
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.bucket.put_object(key, data).map_err(s3_err("writing"))?;
        Ok(())
    }

    fn put_stream(&self, key: &str, data: &mut impl Read) -> Result<()> {
        self.bucket.put_object_stream(data, key).map_err(s3_err("writing"))?;
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.bucket.delete_object(key).map_err(s3_err("deleting"))?;
        Ok(())
    }
}

impl Recordings for S3Store {
    fn list(&self) -> Result<Vec<SessionMeta>> {
        let mut out = Vec::new();
        for (day, id) in self.sidecars()? {
            out.extend(self.sidecar(&day, &id)?);
        }
        Ok(out)
    }

    fn meta(&self, id: &str) -> Result<Option<SessionMeta>> {
        match self.find(id)? {
            Some(day) => self.sidecar(&day, id),
            None => Ok(None),
        }
    }

    fn open(&self, id: &str) -> Result<Option<(SessionMeta, Cast)>> {
        let Some(day) = self.find(id)? else { return Ok(None) };
        let Some(meta) = self.sidecar(&day, id)? else { return Ok(None) };
        let cast = self.get(&self.key(&format!("sessions/{day}/{id}.cast")))?;
        Ok(Some((meta, Cast::Fetched(cast))))
    }
}

/// What the uploader has done, for the recorder's metrics.
#[derive(Default)]
pub struct UploadStats {
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    /// Durable bytes only in the spool at the end of the last pass.
    pub pending: AtomicU64,
}

/// Copies the spool's durable bytes into the bucket, one pass at a time.
pub struct Uploader {
    store: Arc<S3Store>,
    spool: FsStore,
    /// Recordings whose cast and sidecar are in the bucket.
    done: HashSet<String>,
    /// Per running session: how much of its cast is in segment objects.
    sent: HashMap<String, u64>,
    stats: Arc<UploadStats>,
}

/// The spool's day folder of a cast file (its parent's name).
fn day_of(cast: &Path) -> String {
    cast.parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().into_owned()).unwrap_or_default()
}

impl Uploader {
    /// An uploader for `spool`; recordings whose sidecar is in the bucket already are
    /// not sent again.
    pub fn new(store: Arc<S3Store>, spool: &Path, stats: Arc<UploadStats>) -> Result<Uploader> {
        let done = store.sidecars()?.into_iter().map(|(_, id)| id).collect();
        Ok(Uploader { store, spool: FsStore::open_read_only(spool), done, sent: HashMap::new(), stats })
    }

    /// Uploads what is durable and not in the bucket yet. `durable` says how far a
    /// running session's cast is durable in whole lines (`None`: not running here).
    pub fn pass(&mut self, durable: &dyn Fn(&str) -> Option<u64>) -> Result<()> {
        let mut pending = 0;
        let mut failed = None;
        for (meta, cast) in self.spool.sessions()? {
            if self.done.contains(&meta.id) {
                continue;
            }
            let step = if meta.status == Status::Recording {
                let Some(end) = durable(&meta.id) else { continue };
                let from = self.sent.get(&meta.id).copied().unwrap_or(0);
                pending += end.saturating_sub(from);
                self.segment(&meta, &cast, from, end)
            } else {
                pending += meta.bytes;
                self.finish(&meta, &cast)
            };
            match step {
                Ok(n) => pending = pending.saturating_sub(n),
                // The others still get their turn; the pass reports the first failure.
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        self.stats.pending.store(pending, Ordering::Relaxed);
        match failed {
            Some(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Uploads bytes `from..end` of a running session as one segment; returns them.
    fn segment(&mut self, meta: &SessionMeta, cast: &Path, from: u64, end: u64) -> Result<u64> {
        if end <= from {
            return Ok(0);
        }
        let len = usize::try_from(end - from).map_err(|_| Error::new("segment too large"))?;
        let mut buf = vec![0u8; len];
        File::open(cast)?.read_exact_at(&mut buf, from)?;
        let key = self.store.key(&format!("sessions/{}/{}/{from:020}.part", day_of(cast), meta.id));
        self.store.put(&key, &buf)?;
        self.sent.insert(meta.id.clone(), end);
        self.stats.bytes.fetch_add(end - from, Ordering::Relaxed);
        log::debug!("s3 segment uploaded id={} from={from} bytes={}", meta.id, end - from);
        Ok(end - from)
    }

    /// Uploads an ended recording as its cast and sidecar, then drops its segments.
    fn finish(&mut self, meta: &SessionMeta, cast: &Path) -> Result<u64> {
        let day = day_of(cast);
        let base = format!("sessions/{day}/{}", meta.id);
        let sidecar = std::fs::read(cast.with_extension("json"))?;
        self.store.put_stream(&self.store.key(&format!("{base}.cast")), &mut File::open(cast)?.take(meta.bytes))?;
        self.store.put(&self.store.key(&format!("{base}.json")), &sidecar)?;
        for key in self.store.keys(&format!("{base}/"))? {
            self.store.delete(&key)?;
        }
        let already = self.sent.remove(&meta.id).unwrap_or(0);
        self.done.insert(meta.id.clone());
        self.stats.bytes.fetch_add(meta.bytes.saturating_sub(already), Ordering::Relaxed);
        log::info!("s3 recording uploaded id={} bytes={}", meta.id, meta.bytes);
        Ok(meta.bytes)
    }
}

/// Runs passes every half `flush` (retrying failures with a doubling delay) on a
/// thread of its own, for as long as the process lives.
pub fn spawn(uploader: Arc<Mutex<Uploader>>, flush: Duration, durable: impl Fn(&str) -> Option<u64> + Send + 'static) -> std::io::Result<()> {
    let every = (flush / 2).max(MIN_PASS);
    std::thread::Builder::new().name("s3-upload".into()).spawn(move || {
        let mut delay = every;
        let mut failing = false;
        loop {
            std::thread::sleep(delay);
            match lock(&uploader).pass(&durable) {
                Ok(()) => {
                    if failing {
                        log::info!("s3 uploads recovered");
                    }
                    (delay, failing) = (every, false);
                }
                Err(e) => {
                    delay = if failing { (delay * 2).min(RETRY_MAX) } else { RETRY_FIRST };
                    failing = true;
                    log::warn!("s3 upload pass failed, retrying in {delay:?} error={e}");
                }
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_units() {
        assert_eq!(parse_interval("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_interval("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_interval("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_interval("3"), Some(Duration::from_secs(3)));
        for bad in ["0s", "", "s", "1h", "-1s"] {
            assert_eq!(parse_interval(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn errors_are_one_bounded_line() {
        let body = format!("<?xml?>\n<Error>\n<Code>NoSuchBucket</Code>\n<Message>{}</Message></Error>", "x".repeat(1000));
        assert_eq!(describe(&S3Error::HttpFailWithBody(404, body)), "HTTP 404 NoSuchBucket");
    }
}
