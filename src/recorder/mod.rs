//! `kubetape recorder`: receives session recordings from proxies over mutual TLS and
//! keeps them (filesystem storage; with `--s3-bucket` that is the spool an uploader
//! copies to the bucket), acknowledging only what is durably written; serves a JSON
//! API to list and fetch recordings (from the spool, then the bucket), health checks
//! and Prometheus metrics.
//!
//! Who may do what is decided by the client certificate's CN: `--writers` may stream
//! sessions, `--readers` may use the API and metrics. With `--viewers-from-cluster`, a
//! Kubernetes bearer token may use the API too, for the recordings of the namespaces
//! RBAC lets its user watch (`viewers`). Health checks are open.

mod ingest;
mod live;
mod metrics;
mod reads;
mod search;
pub mod viewers;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::args::{Args, Flag};
use crate::error::{Context, Error, Result};
use crate::kube::client::ApiServer;
use crate::kube::rest::Rest;
use crate::net::conn::{Conn, Input, ReadHalf, WriteHalf};
use crate::net::head::HeadLimits;
use crate::net::server::{self, Lifecycle};
use crate::net::sync::lock;
use crate::net::{signal, tls};
use crate::record::event::ApiEvent;
use crate::record::protocol::{SessionMeta, EVENTS_PATH, PATH};
use crate::storage::events::EventLog;
use crate::storage::fs::FsStore;
use crate::storage::s3::{self, upload, S3Config, S3Store, S3};
use crate::storage::{Layered, Recordings};
use crate::wire::der;
use crate::wire::http::{self, RequestHead};
use crate::wire::status;
use live::Live;
use metrics::Metrics;
use reads::Sent;
use viewers::Access;

/// Readers following running recordings at once; one more is answered 503.
pub use live::MAX_FOLLOWERS;

const MAX_HEAD: usize = 64 * 1024;
/// Proxies and readers need milliseconds; the slot is in the bounded unauthenticated
/// pool meanwhile.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection without a writer's or reader's certificate (health checks) must send
/// its next request within this.
const UNAUTHENTICATED_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const HEAD_TIMEOUT: Duration = Duration::from_secs(15);
/// The recorder acknowledges at least this often while a session is idle.
const ACK_INTERVAL: Duration = Duration::from_secs(1);
/// At shutdown, how long the main thread waits for sessions to park; a parked session
/// waits twice that for its bytes to go up before it is asked to move regardless (the
/// pod's grace period is 30 s by default).
const HAND_OFF_WAIT: Duration = Duration::from_secs(10);
/// A proxy that sends nothing (not even a close) for this long is gone.
const SESSION_IDLE_LIMIT: Duration = Duration::from_secs(3600);

pub const FLAGS: &[Flag] = &[
    Flag { name: "listen", default: Some("0.0.0.0:8444"), help: "address to serve proxies and readers on" },
    Flag { name: "tls-cert", default: None, help: "serving certificate (PEM), required" },
    Flag { name: "tls-key", default: None, help: "serving key (PEM), required" },
    Flag { name: "client-ca", default: None, help: "CA that signs proxy and reader client certificates, required" },
    Flag { name: "writers", default: Some("kubetape-proxy"), help: "comma-separated client certificate CNs that may write recordings" },
    Flag { name: "readers", default: None, help: "comma-separated client certificate CNs that may read recordings and metrics" },
    Flag { name: "storage-dir", default: None, help: "directory to keep recordings in, required" },
    Flag {
        name: "viewers-from-cluster",
        default: Some("false"),
        help: "let Kubernetes bearer tokens read the API: TokenReview, then SubjectAccessReview for get on recordings.kubetape.dev in each recording's namespace",
    },
    Flag { name: "kubeconfig", default: None, help: "with --viewers-from-cluster: the API server to ask, and the recorder's credentials [default: in-cluster]" },
    server::LIMIT_FLAGS[0],
    server::LIMIT_FLAGS[1],
    server::LIMIT_FLAGS[2],
    s3::FLAGS[0],
    s3::FLAGS[1],
    s3::FLAGS[2],
    s3::FLAGS[3],
    s3::FLAGS[4],
    s3::FLAGS[5],
    s3::FLAGS[6],
    s3::FLAGS[7],
    s3::FLAGS[8],
];

pub struct Config {
    listen: String,
    tls: Arc<rustls::ServerConfig>,
    writers: Vec<String>,
    readers: Vec<String>,
    storage_dir: PathBuf,
    limits: server::Limits,
    s3: Option<S3Config>,
    viewers: Option<viewers::Viewers>,
}

fn names(v: Option<String>) -> Vec<String> {
    v.map(|s| s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()).unwrap_or_default()
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Config> {
        let chain = tls::certs_from_pem(&tls::read_file(&args.required_path("tls-cert")?)?, "--tls-cert")?;
        let key = tls::key_from_pem(&tls::read_file(&args.required_path("tls-key")?)?, "--tls-key")?;
        let roots = tls::roots_from_pem(&tls::read_file(&args.required_path("client-ca")?)?, "--client-ca")?;
        Ok(Config {
            listen: args.required("listen")?,
            // Optional at the TLS layer so health checks work without a certificate;
            // every other endpoint requires one (see `role`).
            tls: tls::server_config(chain, key, Some((roots, tls::ClientAuth::Optional)))?,
            writers: names(args.opt("writers")),
            readers: names(args.opt("readers")),
            storage_dir: args.required_path("storage-dir")?,
            limits: server::Limits::from_args(args)?,
            s3: S3Config::from_args(args)?,
            viewers: match (args.bool("viewers-from-cluster")?, args.path("kubeconfig")) {
                (false, None) => None,
                (false, Some(_)) => crate::bail!("--kubeconfig: only used with --viewers-from-cluster"),
                (true, path) => {
                    let api = match path {
                        Some(p) => ApiServer::from_kubeconfig(&p, None).context("--kubeconfig")?,
                        None => ApiServer::in_cluster().context("--viewers-from-cluster: --kubeconfig not given and not in a cluster")?,
                    };
                    Some(viewers::Viewers::new(Rest::new(api)?))
                }
            },
        })
    }
}

struct State {
    config: Config,
    store: FsStore,
    events: EventLog,
    metrics: Metrics,
    /// The sessions being recorded now: how far readers may see them.
    live: Live,
    /// With `--s3-bucket`: where the uploader copies the spool (`store`) to.
    s3: Option<Arc<S3>>,
    /// Set on SIGTERM: the sessions move to another recorder.
    hand_off: live::HandOff,
    /// Held while a resume replaces a recording's spool files and while the uploader
    /// removes an uploaded one, so neither undoes the other.
    spool_files: std::sync::Mutex<()>,
    /// What each recording's terminal showed, for search.
    renderings: search::Renderings,
}

impl State {
    /// What the API reads: the spool, then the bucket (an error while the bucket has
    /// not been reached: a list without it would silently miss recordings).
    fn recordings(&self) -> Result<Layered<'_>, (u16, String)> {
        let mut stores: Vec<&dyn Recordings> = vec![&self.store];
        stores.extend(self.bucket()?.map(|b| b as &dyn Recordings));
        Ok(Layered(stores))
    }

    /// The bucket to read too, if there is one.
    fn bucket(&self) -> Result<Option<&S3Store>, (u16, String)> {
        match &self.s3 {
            Some(s3) => s3.store().map(Some).ok_or_else(|| (503, format!("the S3 bucket has not been reached: {}", s3.problem().unwrap_or_default()))),
            None => Ok(None),
        }
    }

    /// Why this recorder should not be sent sessions now, if it should not.
    fn unready(&self) -> Option<String> {
        let s3 = self.s3.as_ref()?;
        s3.problem().map(|p| format!("S3: {p}")).or_else(|| s3.spool_full())
    }
}

impl upload::Spool for State {
    fn events(&self) -> &EventLog {
        &self.events
    }

    fn durable(&self, id: &str) -> Option<u64> {
        self.live.get(id).map(|p| p.seen().durable)
    }

    fn remove_uploaded(&self, cast: &std::path::Path, uploaded: &SessionMeta) -> std::io::Result<bool> {
        let _files = lock(&self.spool_files);
        let now = match std::fs::read(cast.with_extension("json")) {
            Ok(data) => serde_json::from_slice::<SessionMeta>(&data).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(e),
        };
        if now.is_some_and(|m| m.status != uploaded.status || m.bytes != uploaded.bytes) {
            return Ok(false);
        }
        self.store.remove(cast)?;
        Ok(true)
    }
}

pub fn run(config: Config) -> Result<()> {
    let store = FsStore::open(&config.storage_dir).context("--storage-dir")?;
    let events = EventLog::open(&config.storage_dir).context("--storage-dir")?;
    let listener = TcpListener::bind(&config.listen).with_context(|| format!("--listen {}", config.listen))?;
    let addr = listener.local_addr()?;
    log::info!("recorder listening addr={addr} storage={}", config.storage_dir.display());
    let s3 = config.s3.clone().map(|mut c| {
        c.replica.get_or_insert_with(|| format!("{}-{}", crate::net::host_name(), addr.port()));
        Arc::new(S3::new(c))
    });
    let state = Arc::new(State {
        config,
        store,
        events,
        metrics: Metrics::default(),
        live: Live::default(),
        s3,
        hand_off: Default::default(),
        spool_files: Default::default(),
        renderings: Default::default(),
    });
    // The bucket is reached in the background: a recorder whose S3 settings are wrong
    // serves (not ready, saying why) instead of crash-looping, and spools meanwhile.
    let uploader = match &state.s3 {
        Some(s3) => {
            log::info!("uploading recordings to S3 bucket={} prefix={:?} flush_interval={:?}", s3.config.bucket, s3.config.prefix, s3.config.flush);
            Some(upload::spawn(s3.clone(), state.config.storage_dir.clone(), state.clone())?)
        }
        None => None,
    };
    let life = Arc::new(Lifecycle::default());
    let accept = {
        let (state, life) = (state.clone(), life.clone());
        std::thread::Builder::new().name("accept".into()).spawn(move || {
            let limits = state.config.limits;
            server::serve(listener, "conn", limits, life, move |sock, id, admission| handle_connection(&state, sock, id, admission))
        })?
    };
    let sig = signal::wait_for_termination()?;
    log::info!("stopping signal={sig}");
    life.stop();
    let _ = accept.join();
    // The sessions being recorded move to another recorder: each parks with its last
    // bytes acknowledged, what they hold goes to the bucket, then they are asked to move.
    state.hand_off.ask();
    state.hand_off.wait_parked(|| state.live.count(), HAND_OFF_WAIT);
    if let Some(up) = &uploader {
        if let Some(up) = lock(up).as_mut() {
            if let Err(e) = up.hand_off(state.as_ref()) {
                log::warn!("s3 upload of the sessions moving away failed; the spool keeps them error={e}");
            }
        }
    }
    state.hand_off.uploaded();
    // Whatever is left after a few seconds is recovered as interrupted on the next
    // start, with every acknowledged byte.
    life.drain(Duration::from_secs(5));
    // What ended during the drain goes up now; the rest on the next start.
    if let Some(up) = &uploader {
        if let Some(up) = lock(up).as_mut() {
            if let Err(e) = up.pass(state.as_ref()) {
                log::warn!("s3 upload at shutdown failed; the spool keeps it for the next start error={e}");
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
}

fn reply(out: &mut WriteHalf, code: u16, body: &Value) -> std::io::Result<()> {
    out.write_all(&http::response(code, "application/json", body.to_string().as_bytes()))
}

fn handle_connection(state: &Arc<State>, sock: TcpStream, id: u64, admission: &server::Admission) {
    let conn = match Conn::accept_tls(sock, &state.config.tls, TLS_HANDSHAKE_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            log::debug!("handshake failed conn={id} error={e}");
            return;
        }
    };
    let cn = conn.peer_certs.first().and_then(|c| der::subject_cn_and_orgs(c)).map(|(cn, _)| cn);
    let peer = conn.peer.to_string();
    let mut input = Input::new(conn.read);
    let mut out = conn.write;
    let known = cn.as_ref().is_some_and(|cn| state.config.writers.contains(cn) || state.config.readers.contains(cn));
    if known && !admission.authenticated() {
        let _ = reply(&mut out, 503, &status::failure(503, "too many open connections, try again"));
        return;
    }
    let limits = HeadLimits { max_len: MAX_HEAD, idle: if known { IDLE_TIMEOUT } else { UNAUTHENTICATED_IDLE_TIMEOUT }, whole: HEAD_TIMEOUT };
    loop {
        let head = match input.next_request(&limits) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(bad) => {
                let _ = reply(&mut out, bad.status(), &status::failure(bad.status(), &bad.to_string()));
                return;
            }
        };
        if http::request_body(&head) != Ok(http::BodyLength::Empty) {
            let _ = reply(&mut out, 400, &status::failure(400, "requests to the recorder carry no body"));
            return;
        }
        let role = |r: Role| -> Result<(), (u16, String)> {
            let Some(cn) = &cn else { return Err((401, "a client certificate is required".into())) };
            let allowed = match r {
                Role::Writer => &state.config.writers,
                Role::Reader => &state.config.readers,
            };
            if allowed.contains(cn) {
                Ok(())
            } else {
                Err((403, format!("{cn:?} may not {}", if r == Role::Writer { "write recordings" } else { "read recordings" })))
            }
        };
        // Whose recordings this request may read: a reader certificate all, a viewer's
        // token those RBAC lets its user watch.
        let read_access = || -> Result<Access, (u16, String)> {
            if cn.as_ref().is_some_and(|cn| state.config.readers.contains(cn)) {
                return Ok(Access::All);
            }
            if head.headers.count("authorization") > 1 {
                return Err((400, "more than one Authorization header".into()));
            }
            match (&state.config.viewers, head.headers.get_str("authorization").and_then(viewers::bearer)) {
                (Some(v), Some(token)) => match v.authenticate(token) {
                    Ok(Some(viewer)) => Ok(Access::Viewer(viewer, token.to_string())),
                    Ok(None) => Err((401, "the cluster did not accept the bearer token".into())),
                    Err(e) => Err(unchecked(&e)),
                },
                _ => role(Role::Reader).map(|()| Access::All),
            }
        };
        let path = head.path().to_string();
        let result = match (head.method.as_str(), path.as_str()) {
            ("GET", "/healthz") => out.write_all(&http::response(200, "text/plain", b"ok")).map_err(|e| (500, e.to_string())),
            ("GET", "/readyz") => {
                let (code, text) = match state.unready() {
                    Some(why) => (503, why),
                    None => (200, "ok".to_string()),
                };
                out.write_all(&http::response(code, "text/plain", text.as_bytes())).map_err(|e| (500, e.to_string()))
            }
            ("GET", p) if p == PATH => match role(Role::Writer) {
                Ok(()) => {
                    ingest::session(state, &head, input, out, cn.unwrap_or_default(), &peer);
                    return;
                }
                Err(e) => Err(e),
            },
            ("GET", p) if p == EVENTS_PATH && head.upgrade().is_some() => match role(Role::Writer) {
                Ok(()) => {
                    ingest::events(state, &head, input, out, &peer);
                    return;
                }
                Err(e) => Err(e),
            },
            ("GET", p) if p == EVENTS_PATH => read_access().and_then(|access| query_events(state, &head, &access, &mut out)),
            ("GET", "/v1/search") => read_access().and_then(|access| serve_search(state, &head, &access, &mut out)),
            ("GET", "/metrics") => role(Role::Reader).and_then(|()| {
                let text = state.metrics.render(state.s3.as_ref().map(|s| &s.stats));
                out.write_all(&http::response(200, "text/plain; version=0.0.4", text.as_bytes())).map_err(|e| (500, e.to_string()))
            }),
            ("GET", p) if p == "/v1/recordings" || p.starts_with("/v1/recordings/") => {
                match read_access().and_then(|access| serve_api(state, &head, &access, &input.half, &mut out)) {
                    // Part of a body went out: nothing more can be said on this connection.
                    Ok(Sent::Broken) => return,
                    other => other.map(|_| ()),
                }
            }
            _ => Err((404, "not found".into())),
        };
        if let Err((code, msg)) = result {
            if reply(&mut out, code, &status::failure(code, &msg)).is_err() {
                return;
            }
        }
    }
}

/// The cluster could not say whether a viewer may read: 503, never a yes.
fn unchecked(e: &str) -> (u16, String) {
    log::warn!("viewer not checked error={e}");
    (503, "the cluster could not be asked whether this viewer may read recordings; try again".into())
}

/// Whether `access` may read the recordings of `namespace`.
fn may_view(state: &State, access: &Access, namespace: &str) -> Result<bool, (u16, String)> {
    access.may_view(state.config.viewers.as_ref(), namespace).map_err(|e| unchecked(&e))
}

/// The recordings `access` may read that the query's filters (`user`, `namespace`,
/// `pod`, `since`, `until`) keep, newest first.
fn listed<'q>(state: &State, access: &Access, param: &impl Fn(&str) -> Option<&'q str>) -> Result<Vec<SessionMeta>, (u16, String)> {
    let list: Vec<SessionMeta> = state
        .recordings()?
        .list()
        .map_err(|e| (500, e.to_string()))?
        .into_iter()
        .map(|m| state.live.current(m))
        .filter(|m| param("user").is_none_or(|u| m.user() == u))
        .filter(|m| param("namespace").is_none_or(|n| m.namespace() == n))
        .filter(|m| param("pod").is_none_or(|p| m.pod() == p))
        .filter(|m| param("since").is_none_or(|s| m.started.as_str() >= s))
        .filter(|m| param("until").is_none_or(|u| m.started.as_str() <= u))
        .collect();
    // Asked once per namespace (the answers are cached), not per recording.
    list.into_iter().filter_map(|m| may_view(state, access, m.namespace()).map(|yes| yes.then_some(m)).transpose()).collect()
}

fn serve_api(state: &State, head: &RequestHead, access: &Access, peer: &ReadHalf, out: &mut WriteHalf) -> Result<Sent, (u16, String)> {
    let internal = |e: Error| (500, e.to_string());
    let io = |e: std::io::Error| (500, e.to_string());
    let rest = head.path().trim_start_matches("/v1/recordings").trim_start_matches('/');
    let q = http::query_pairs(head.query());
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if rest.is_empty() {
        let list = listed(state, access, &param)?;
        return reply(out, 200, &json!({"items": list})).map(|()| Sent::Whole).map_err(io);
    }
    let (id, cast) = match rest.split_once('/') {
        Some((id, "cast")) => (id, true),
        Some(_) => return Err((404, "not found".into())),
        None => (rest, false),
    };
    let meta = state.recordings()?.meta(id).map_err(internal)?.ok_or((404, format!("recording {id:?} not found")))?;
    if !may_view(state, access, meta.namespace())? {
        return Err((403, format!("you may not watch recordings of namespace {:?} (RBAC: get on recordings.kubetape.dev there)", meta.namespace())));
    }
    if cast {
        // Only durable whole lines are served, of a running session too.
        return match param("follow") {
            None | Some("false") => reads::snapshot(state, id, out),
            Some("true") => {
                let namespace = meta.namespace().to_string();
                reads::follow(state, id, peer, out, &|| access.still_may_view(state.config.viewers.as_ref(), &namespace))
            }
            Some(other) => Err((400, format!("follow: expected true or false, found {other:?}"))),
        };
    }
    let meta = state.live.current(meta);
    reply(out, 200, &serde_json::to_value(&meta).unwrap_or(Value::Null)).map(|()| Sent::Whole).map_err(io)
}

fn serve_search(state: &State, head: &RequestHead, access: &Access, out: &mut WriteHalf) -> Result<(), (u16, String)> {
    let q = http::query_pairs(head.query());
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let words = search::words(param("q").unwrap_or_default())?;
    let found = search::search(state, &listed(state, access, &param)?, &words);
    reply(out, 200, &found).map_err(|e| (500, e.to_string()))
}

fn query_events(state: &State, head: &RequestHead, access: &Access, out: &mut WriteHalf) -> Result<(), (u16, String)> {
    let q = http::query_pairs(head.query());
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let limit = param("limit").and_then(|l| l.parse().ok()).unwrap_or(1000usize).min(100_000);
    // A viewer sees the events of the namespaces they may watch; the first refusal to
    // answer from the cluster fails the whole query rather than leave events out.
    let unanswered = std::cell::RefCell::new(None);
    let keep = |e: &ApiEvent| {
        e.matches(param("user"), param("verb"), param("resource"), param("namespace"), param("since"), param("until"))
            // After one unanswered check, no more: the answer is 503 anyway, and a
            // failing API server is not asked once per event.
            && unanswered.borrow().is_none()
            && match may_view(state, access, &e.request.namespace) {
                Ok(yes) => yes,
                Err(err) => {
                    unanswered.borrow_mut().get_or_insert(err);
                    false
                }
            }
    };
    let events = crate::storage::query_events(&state.events, state.bucket()?, keep, limit).map_err(|e| (500, e.to_string()))?;
    if let Some(err) = unanswered.into_inner() {
        return Err(err);
    }
    let io = |e: std::io::Error| (500, e.to_string());
    if param("format") == Some("audit") {
        // audit.k8s.io/v1 Event lines, oldest first, as audit log files are.
        let mut body = String::new();
        for e in events.iter().rev() {
            body.push_str(&e.to_audit().to_string());
            body.push('\n');
        }
        return out.write_all(&http::response(200, "application/x-ndjson", body.as_bytes())).map_err(io);
    }
    reply(out, 200, &json!({"items": events})).map_err(io)
}
