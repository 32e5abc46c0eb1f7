//! S3-compatible storage for recordings and API events, behind the filesystem spool.
//! The recorder still acknowledges a byte once it is fsync'd in the spool
//! (`--storage-dir`); the uploader ([`upload`]) copies what is durable there into the
//! bucket, running behind, and then removes it from the spool. Object layout, under
//! `--s3-prefix`:
//!
//! - `sessions/<day>/<id>.json`: a recording's sidecar. Put when its first bytes go
//!   up (saying `recording`), and again, final, once it ended.
//! - `sessions/<day>/<id>/<offset>.part`: while it records, the durable whole lines of
//!   each pass as one segment (`offset`: where the segment starts in the cast, 20
//!   digits so keys sort in cast order).
//! - `sessions/<day>/<id>.cast`: once it ended, the whole cast; then the final sidecar
//!   (a reader that finds it finds the cast), then the segments are deleted.
//! - `events/<segment>.ndjson`, and `events/<segment>/<offset>.part` while the segment
//!   is open: API events, the same way.
//! - `recorders/<replica>.json`: each recorder's lease, renewed every pass, naming the
//!   sessions it is recording. A lease that stops changing belongs to a recorder that
//!   is gone: whichever recorder sees that turns its sessions' segments into
//!   `interrupted` recordings.
//!
//! Reads ([`Recordings`]) find recordings by their sidecars (a running one by its
//! segments), so any recorder answers for what another one wrote. Credentials come
//! from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`(/`AWS_SESSION_TOKEN`) or the
//! shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, as a mounted Secret) and
//! are never logged. A private CA is trusted through `--s3-ca-file`.

pub mod upload;

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use s3::bucket::Bucket;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::region::Region;

use crate::args::{Args, Flag};
use crate::error::{Error, Result};
use crate::net::sync::lock;
use crate::record::protocol::{valid_id, SessionMeta, Status};
use crate::storage::{Cast, Recordings};

pub const FLAGS: &[Flag] = &[
    Flag { name: "s3-bucket", default: None, help: "also keep recordings in this S3 bucket (the storage dir is then the upload spool)" },
    Flag { name: "s3-endpoint", default: None, help: "S3-compatible endpoint URL (default: AWS for --s3-region)" },
    Flag { name: "s3-region", default: Some("us-east-1"), help: "S3 region (signing region with --s3-endpoint)" },
    Flag { name: "s3-prefix", default: None, help: "key prefix, so several clusters can share a bucket" },
    Flag { name: "s3-path-style", default: Some("false"), help: "path-style requests (endpoint/bucket/key), as most S3-compatible servers need" },
    Flag { name: "s3-flush-interval", default: Some("10s"), help: "longest a durable byte waits in the spool while S3 is healthy (e.g. 10s, 500ms)" },
    Flag { name: "s3-ca-file", default: None, help: "CA bundle (PEM) to trust for an HTTPS endpoint, beside the built-in public roots (in place of the system's store)" },
    Flag { name: "spool-max-bytes", default: Some("8Gi"), help: "spool size at which new fail-closed sessions are refused and fail-open ones kept truncated (e.g. 8Gi, 500Mi)" },
    Flag { name: "replica-name", default: None, help: "this recorder's name in the bucket's leases (default: host name and listen port); stable across restarts" },
];

/// An S3 request that takes longer than this failed (the pass is retried); long
/// enough for a large cast on a slow link, short enough that a hung endpoint does not
/// hold the uploader for minutes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The first retry after a failed pass, doubling up to [`RETRY_MAX`]: an endpoint that
/// is down is not hammered, one that is back is used again within half a minute.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
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
    pub ca_file: Option<std::path::PathBuf>,
    /// Spool bytes at which new sessions are refused or kept truncated.
    pub spool_max: u64,
    pub replica: Option<String>,
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

/// `8Gi`, `500Mi`, `64Ki` or plain bytes.
fn parse_size(v: &str) -> Option<u64> {
    let (num, unit) = v.find(|c: char| !c.is_ascii_digit()).map(|i| v.split_at(i)).unwrap_or((v, ""));
    let n: u64 = num.parse().ok()?;
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        "Ti" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift).filter(|b| *b > 0)
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
            ca_file: args.path("s3-ca-file").inspect(|ca| {
                // rust-s3's HTTP client reads extra trusted roots from here (its native
                // roots), and only from here; set while the process is one thread.
                std::env::set_var("SSL_CERT_FILE", ca);
            }),
            spool_max: parse_size(&args.required("spool-max-bytes")?).ok_or_else(|| Error::new("--spool-max-bytes: expected a size such as 8Gi, 500Mi or a byte count"))?,
            replica: args.opt("replica-name"),
        }))
    }
}

/// One line, bounded: what an S3 error says, for logs and startup errors.
fn describe(e: &S3Error) -> String {
    let text = match e {
        S3Error::HttpFailWithBody(code, body) => {
            // The S3 error code is the useful part of the XML body.
            match body.split("<Code>").nth(1).and_then(|r| r.split("</Code>").next()) {
                Some(code_text) => format!("HTTP {code} {code_text}"),
                // Not an S3 error document: its start says what it is.
                None => format!("HTTP {code}: unexpected answer {:?}", body.chars().take(120).collect::<String>()),
            }
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

/// The bucket as this recorder sees it. It is reached in the background
/// ([`upload::spawn`]), so a recorder whose S3 settings are wrong keeps running with
/// its readiness saying why (and its spool taking sessions) instead of crash-looping.
pub struct S3 {
    pub config: S3Config,
    store: OnceLock<S3Store>,
    /// Why the bucket cannot be used now, or uploads are failing; `None` once a pass
    /// worked.
    problem: Mutex<Option<String>>,
    pub stats: UploadStats,
}

/// What the uploader has done and has left, for the recorder's metrics and readiness.
#[derive(Default)]
pub struct UploadStats {
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    /// Durable bytes only in the spool at the end of the last pass.
    pub pending: AtomicU64,
    /// Milliseconds since a pass last left nothing pending (0 when none is pending).
    pub lag_millis: AtomicU64,
    /// The spool's size, counted by the last pass plus what was appended since.
    pub spool_bytes: AtomicU64,
}

impl S3 {
    pub fn new(config: S3Config) -> S3 {
        S3 { config, store: OnceLock::new(), problem: Mutex::new(Some("the S3 bucket has not been reached yet".into())), stats: UploadStats::default() }
    }

    /// The bucket, once it has been reached.
    pub fn store(&self) -> Option<&S3Store> {
        self.store.get()
    }

    /// Why the recorder is not ready for S3, if it is not.
    pub fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }

    /// Records the outcome of the uploader's last attempt; true if that changed it.
    fn set_problem(&self, now: Option<String>) -> bool {
        let mut p = lock(&self.problem);
        let changed = *p != now;
        *p = now;
        changed
    }

    /// This recorder's name in the bucket (set from `--replica-name` or its default
    /// before the recorder starts).
    pub fn replica(&self) -> &str {
        self.config.replica.as_deref().unwrap_or("recorder")
    }

    /// A sidecar as the bucket keeps it: naming this recorder as the one holding it.
    pub fn sidecar(&self, meta: &SessionMeta) -> Result<Vec<u8>> {
        let meta = SessionMeta { recorder: Some(self.replica().to_string()), ..meta.clone() };
        serde_json::to_vec_pretty(&meta).map_err(|e| Error::new(e.to_string()))
    }

    /// Puts a session's sidecar in the bucket now, naming this recorder: a session
    /// continued here is this recorder's before the proxy sends it more.
    pub fn announce(&self, meta: &SessionMeta, day: &str) -> Result<()> {
        let store = self.store().ok_or_else(|| Error::new("the S3 bucket has not been reached yet"))?;
        store.put(&format!("sessions/{day}/{}.json", meta.id), &self.sidecar(meta)?)
    }

    /// Whether the spool has reached `--spool-max-bytes`.
    pub fn spool_full(&self) -> Option<String> {
        let used = self.stats.spool_bytes.load(std::sync::atomic::Ordering::Relaxed);
        (used >= self.config.spool_max).then(|| format!("the recorder's spool is full ({used} of {} bytes): S3 uploads are behind", self.config.spool_max))
    }
}

/// A bucket and the prefix of this recorder's keys.
pub struct S3Store {
    bucket: Box<Bucket>,
    /// `""` or `"<prefix>/"`.
    prefix: String,
}

/// The parts of a growing object (`<dir>/<offset>.part`), in order. Parts may overlap
/// (a recorder that took a session over sends it again from its start); each is a
/// slice of the same stream, so overlaps agree.
struct Parts(Vec<(u64, String)>);

impl Parts {
    /// The parts' bytes joined from the object's start up to the first gap, if any,
    /// and whether there was one.
    fn join(&self, store: &S3Store) -> Result<(Vec<u8>, bool)> {
        let mut out: Vec<u8> = Vec::new();
        for (offset, key) in &self.0 {
            let have = out.len() as u64;
            if *offset > have {
                return Ok((out, true));
            }
            let part = store.get(key)?;
            let skip = usize::try_from(have - offset).unwrap_or(usize::MAX);
            out.extend(part.get(skip..).unwrap_or_default());
        }
        Ok((out, false))
    }
}

impl S3Store {
    /// Connects and checks the bucket can be listed; every error names the flag or
    /// variable to fix, on one line.
    pub fn connect(config: &S3Config) -> Result<S3Store> {
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| Error::new(format!("--s3-ca-file {}: {e}", ca.display())))?;
            crate::net::tls::roots_from_pem(&pem, "--s3-ca-file")?;
        }
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
            Err(e) if config.ca_file.is_none() && e.to_string().contains("certificate") => {
                crate::bail!("--s3-endpoint {where_}: its certificate is not trusted ({}): set --s3-ca-file to its CA", describe(&e))
            }
            Err(e) if config.ca_file.is_some() && e.to_string().contains("certificate") => {
                crate::bail!("--s3-ca-file: the certificate of {where_} is not signed by it ({})", describe(&e))
            }
            Err(e) => crate::bail!("--s3-endpoint {where_}: not reachable for bucket {:?}: {}", config.bucket, describe(&e)),
        }
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// Every key under `rel`, relative to the prefix.
    fn keys(&self, rel: &str) -> Result<Vec<String>> {
        let pages = self.bucket.list(self.key(rel), None).map_err(s3_err("listing"))?;
        Ok(pages.into_iter().flat_map(|p| p.contents).filter_map(|o| o.key.strip_prefix(&self.prefix).map(String::from)).collect())
    }

    /// The parts under `dir` (relative), in offset order.
    fn parts(&self, dir: &str) -> Result<Parts> {
        let mut v: Vec<(u64, String)> = self
            .keys(&format!("{dir}/"))?
            .into_iter()
            .filter_map(|k| {
                let offset = k.rsplit('/').next()?.strip_suffix(".part")?.parse().ok()?;
                Some((offset, k))
            })
            .collect();
        v.sort();
        Ok(Parts(v))
    }

    /// `(day, id)` of every sidecar in the bucket.
    fn sidecars(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .keys("sessions/")?
            .into_iter()
            .filter_map(|k| {
                let (day, file) = k.strip_prefix("sessions/")?.split_once('/')?;
                let id = file.strip_suffix(".json")?;
                valid_id(id).then(|| (day.to_string(), id.to_string()))
            })
            .collect())
    }

    /// An object's bytes (`rel` to the prefix); `None` when there is no such object.
    fn get_opt(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match self.bucket.get_object(self.key(rel)) {
            Ok(r) => Ok(Some(r.to_vec())),
            Err(S3Error::HttpFailWithBody(404, _)) => Ok(None),
            Err(e) => Err(s3_err("reading")(e)),
        }
    }

    fn get(&self, rel: &str) -> Result<Vec<u8>> {
        self.get_opt(rel)?.ok_or_else(|| Error::new(format!("S3 reading: {rel} is gone")))
    }

    fn sidecar(&self, day: &str, id: &str) -> Result<Option<SessionMeta>> {
        let rel = format!("sessions/{day}/{id}.json");
        let Some(data) = self.get_opt(&rel)? else { return Ok(None) };
        match serde_json::from_slice(&data) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                log::warn!("unreadable recording sidecar in the bucket key={rel} error={e}");
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

    fn put(&self, rel: &str, data: &[u8]) -> Result<()> {
        self.bucket.put_object(self.key(rel), data).map_err(s3_err("writing"))?;
        Ok(())
    }

    fn delete(&self, rel: &str) -> Result<()> {
        self.bucket.delete_object(self.key(rel)).map_err(s3_err("deleting"))?;
        Ok(())
    }

    /// Deletes the parts under `dir`, once the whole object is in place.
    fn delete_parts(&self, dir: &str) -> Result<()> {
        for (_, key) in self.parts(dir)?.0 {
            self.delete(&key)?;
        }
        Ok(())
    }

    /// The names of the event segments in the bucket (whole or still in parts).
    pub fn event_segments(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .keys("events/")?
            .into_iter()
            .filter_map(|k| {
                let rest = k.strip_prefix("events/")?;
                let name = rest.split('/').next()?.trim_end_matches(".ndjson");
                crate::storage::events::valid_segment(name).then(|| name.to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// One event segment's lines: the whole object, else its parts joined.
    pub fn event_segment(&self, name: &str) -> Result<Vec<u8>> {
        if let Some(whole) = self.get_opt(&format!("events/{name}.ndjson"))? {
            return Ok(whole);
        }
        Ok(self.parts(&format!("events/{name}"))?.join(self)?.0)
    }
}

/// The durable whole lines of a running recording's segments (another recorder's, or
/// one whose recorder is gone), and the sidecar counting them.
fn running(store: &S3Store, day: &str, mut meta: SessionMeta) -> Result<(SessionMeta, Cast)> {
    let (mut data, _) = store.parts(&format!("sessions/{day}/{}", meta.id))?.join(store)?;
    data.truncate(crate::storage::whole_lines(&data));
    meta.bytes = data.len() as u64;
    Ok((meta, Cast::Fetched(data)))
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
        if meta.status == Status::Recording {
            return running(self, &day, meta).map(Some);
        }
        let cast = self.get(&format!("sessions/{day}/{id}.cast"))?;
        Ok(Some((meta, Cast::Fetched(cast))))
    }
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

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("8Gi"), Some(8 << 30));
        assert_eq!(parse_size("500Mi"), Some(500 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        for bad in ["0", "", "Gi", "1G", "-1", "99999999999Ti"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }
}
