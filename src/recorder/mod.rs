//! `kubetape recorder`: receives session recordings from proxies over mutual TLS and
//! keeps them (filesystem storage; with `--s3-bucket` that is the spool an uploader
//! copies to the bucket), acknowledging only what is durably written; serves a JSON
//! API to list and fetch recordings (from the spool, then the bucket), health checks
//! and Prometheus metrics.
//!
//! Who may do what is decided by the client certificate's CN: `--writers` may stream
//! sessions, `--readers` may use the API and metrics. With `--viewers-from-cluster`, a
//! Kubernetes bearer token may use the API too, for the recordings of the namespaces
//! RBAC lets its user watch (`viewers`). With `--ui`, the recorder also serves its web
//! UI, where such a viewer signs in once and a cookie stands for the token (`web`).
//! Every read of a recording's output is itself recorded (`views`). Health checks
//! and the UI's pages (which hold no recording data) are open.

mod ingest;
mod live;
mod metrics;
mod reads;
mod search;
pub mod viewers;
mod views;
mod web;

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
use reads::{Form, Sent};
use viewers::Access;
use views::{View, Views};

/// Readers following running recordings at once; one more is answered 503.
pub use live::MAX_FOLLOWERS;

const MAX_HEAD: usize = 64 * 1024;
/// The most recordings one list answer holds (`limit`); more are had with `offset`.
const MAX_PAGE: usize = 10_000;
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
    Flag { name: "ui", default: Some("false"), help: "serve the web UI at / (viewers sign in with a token: needs --viewers-from-cluster)" },
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
    ui: bool,
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
            ui: args.bool("ui")?,
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
    /// Who watched which recording.
    views: Views,
    /// The web UI's signed-in browsers.
    sessions: web::Sessions,
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
    let views = Views::open(&config.storage_dir).context("--storage-dir")?;
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
        views,
        sessions: Default::default(),
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
    respond(out, code, "application/json", body.to_string().as_bytes(), &[])
}

/// A whole response, with the security headers and `extra`.
fn respond(out: &mut WriteHalf, code: u16, content_type: &str, body: &[u8], extra: &[(&str, String)]) -> std::io::Result<()> {
    let mut head = http::ResponseHead::new(code);
    head.headers.push("Content-Type", content_type);
    head.headers.push("Content-Length", body.len().to_string());
    web::security_headers(&mut head.headers);
    for (name, value) in extra {
        head.headers.push(name, value.as_str());
    }
    let mut bytes = head.encode();
    bytes.extend_from_slice(body);
    out.write_all(&bytes)
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
        // token (or the browser session standing for one) those RBAC lets its user watch.
        let read_access = || -> Result<Access, (u16, String)> {
            if let Some(cn) = cn.as_ref().filter(|cn| state.config.readers.contains(cn)) {
                return Ok(Access::Reader(cn.clone()));
            }
            // Neither: without viewers `role` says what is missing (no certificate, or
            // the wrong one); with them, a token is the other way in.
            let Some(v) = &state.config.viewers else { return Err(role(Role::Reader).err().unwrap_or((401, "a reader certificate is required".into()))) };
            let Some(token) = viewer_token(state, &head)? else {
                return match (&cn, head.headers.get_str("authorization")) {
                    (_, Some(_)) => Err((401, "the Authorization header is not a well-formed Bearer token".into())),
                    (Some(cn), None) => Err((403, format!("{cn:?} may not read recordings, and no viewer's token was given"))),
                    (None, None) => Err((401, "sign in: a reader certificate or a viewer's token is required".into())),
                };
            };
            match v.authenticate(&token) {
                // A viewer the cluster knows: out of reach of the unauthenticated
                // pool's eviction, as a certificate is.
                Ok(Some(_)) if !admission.authenticated() => Err((503, "too many open connections, try again".into())),
                Ok(Some(viewer)) => Ok(Access::Viewer(viewer, token)),
                Ok(None) => Err((401, "the cluster did not accept the bearer token".into())),
                Err(e) => Err(unchecked(&e)),
            }
        };
        let path = head.path().to_string();
        // The UI's pages hold no recording data: open to all, under their policy.
        if let Some(a) = (state.config.ui && head.method == "GET").then(|| web::asset(&path)).flatten() {
            if respond(&mut out, 200, a.content_type, a.body, &[("Content-Security-Policy", web::CONTENT_SECURITY_POLICY.into())]).is_err() {
                return;
            }
            continue;
        }
        let result = match (head.method.as_str(), path.as_str()) {
            ("POST", "/ui/login") if state.config.ui => sign_in(state, &head, &mut out),
            ("POST", "/ui/logout") if state.config.ui => sign_out(state, &head, &mut out),
            ("GET", "/v1/whoami") => read_access().and_then(|access| {
                let me = match &access {
                    Access::Reader(cn) => json!({"kind": "reader", "name": cn}),
                    Access::Viewer(v, _) => json!({"kind": "viewer", "name": v.name, "groups": v.groups}),
                };
                reply(&mut out, 200, &me).map_err(|e| (500, e.to_string()))
            }),
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
            ("GET", "/v1/search") => read_access().and_then(|access| serve_search(state, &head, &access, &peer, &mut out)),
            ("GET", "/metrics") => role(Role::Reader).and_then(|()| {
                let text = state.metrics.render(state.s3.as_ref().map(|s| &s.stats));
                out.write_all(&http::response(200, "text/plain; version=0.0.4", text.as_bytes())).map_err(|e| (500, e.to_string()))
            }),
            ("GET", p) if p == "/v1/recordings" || p.starts_with("/v1/recordings/") => {
                match read_access().and_then(|access| serve_api(state, &head, &access, &peer, &input.half, &mut out)) {
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

/// The viewer's token: from the `Authorization` header, or the browser session the
/// cookie stands for. `None` when the request carries neither.
fn viewer_token(state: &State, head: &RequestHead) -> Result<Option<String>, (u16, String)> {
    if head.headers.count("authorization") > 1 {
        return Err((400, "more than one Authorization header".into()));
    }
    if let Some(token) = head.headers.get_str("authorization").and_then(viewers::bearer) {
        return Ok(Some(token.to_string()));
    }
    match web::session_cookie(&head.headers) {
        Ok(None) => Ok(None),
        // The cookie goes with any request from the same site (another port of this
        // host, say): only the UI's own pages, or a typed address, may use it.
        Ok(Some(_)) if !web::from_the_ui(&head.headers) => Err((403, "a browser session serves only the recorder's own pages".into())),
        Ok(Some(id)) => state.sessions.token(id).map(Some).ok_or((401, "the browser session has ended; sign in again".into())),
        Err(()) => Err((400, format!("more than one {} cookie", web::COOKIE))),
    }
}

/// `POST /ui/login` with `Authorization: Bearer TOKEN`: a browser session for a token
/// the cluster accepts.
fn sign_in(state: &State, head: &RequestHead, out: &mut WriteHalf) -> Result<(), (u16, String)> {
    if !web::same_origin(&head.headers) {
        return Err((403, "sign-in from another origin".into()));
    }
    let Some(v) = &state.config.viewers else {
        return Err((400, "this recorder takes no tokens (it was started without --viewers-from-cluster); use a reader certificate".into()));
    };
    if head.headers.count("authorization") != 1 {
        return Err((400, "sign in with one Authorization: Bearer header".into()));
    }
    let token = head.headers.get_str("authorization").and_then(viewers::bearer).ok_or((400, "sign in with Authorization: Bearer TOKEN".to_string()))?;
    let viewer = match v.authenticate(token) {
        Ok(Some(viewer)) => viewer,
        Ok(None) => return Err((401, "the cluster did not accept the token".into())),
        Err(e) => return Err(unchecked(&e)),
    };
    // A browser signing in again leaves no session behind.
    if let Ok(Some(old)) = web::session_cookie(&head.headers) {
        state.sessions.close(old);
    }
    let id = state.sessions.open(token, &format!("{}/{}", viewer.name, viewer.uid)).map_err(|e| (503, e))?;
    log::debug!("ui sign-in user={}", viewer.name);
    let body = json!({"kind": "viewer", "name": viewer.name, "groups": viewer.groups}).to_string();
    respond(out, 200, "application/json", body.as_bytes(), &[("Set-Cookie", web::set_cookie(&id))]).map_err(|e| (500, e.to_string()))
}

fn sign_out(state: &State, head: &RequestHead, out: &mut WriteHalf) -> Result<(), (u16, String)> {
    if !web::same_origin(&head.headers) {
        return Err((403, "sign-out from another origin".into()));
    }
    if let Ok(Some(id)) = web::session_cookie(&head.headers) {
        state.sessions.close(id);
    }
    respond(out, 200, "application/json", b"{}", &[("Set-Cookie", web::clear_cookie())]).map_err(|e| (500, e.to_string()))
}

/// Notes that `access` is about to read recording `id`'s output; refuses the read
/// when that cannot be written, so nobody watches unrecorded.
fn note_view(state: &State, access: &Access, id: &str, how: &str, peer: &str) -> Result<(), (u16, String)> {
    let view = View { at: crate::wire::time::rfc3339_millis(std::time::SystemTime::now()), recording: id.into(), by: access.who(), how: how.into(), source_address: peer.into() };
    state.views.note(&view).map_err(|e| {
        log::error!("could not record a view, refusing it id={id} error={e}");
        (503, format!("this read could not be recorded ({e}); try again"))
    })
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

/// The recordings `access` may read that the query's filters keep, newest first:
/// `user`, `group`, `namespace`, `pod`, `container`, `type` (exec, attach, ...),
/// `status`, and `since`/`until` on the start time.
fn listed<'q>(state: &State, access: &Access, param: &impl Fn(&str) -> Option<&'q str>) -> Result<Vec<SessionMeta>, (u16, String)> {
    let text = |m: &SessionMeta, at: &str| m.session.pointer(at).and_then(Value::as_str).unwrap_or_default().to_string();
    let in_group = |m: &SessionMeta, g: &str| m.session.pointer("/user/groups").and_then(Value::as_array).is_some_and(|gs| gs.iter().any(|x| x == g));
    let list: Vec<SessionMeta> = state
        .recordings()?
        .list()
        .map_err(|e| (500, e.to_string()))?
        .into_iter()
        .map(|m| state.live.current(m))
        .filter(|m| param("user").is_none_or(|u| m.user() == u))
        .filter(|m| param("group").is_none_or(|g| in_group(m, g)))
        .filter(|m| param("namespace").is_none_or(|n| m.namespace() == n))
        .filter(|m| param("pod").is_none_or(|p| m.pod() == p))
        .filter(|m| param("container").is_none_or(|c| text(m, "/container") == c))
        .filter(|m| param("type").is_none_or(|t| text(m, "/type") == t))
        .filter(|m| param("status").is_none_or(|s| m.status.as_str() == s))
        .filter(|m| param("since").is_none_or(|s| m.started.as_str() >= s))
        .filter(|m| param("until").is_none_or(|u| m.started.as_str() <= u))
        .collect();
    // Asked once per namespace (the answers are cached), not per recording.
    list.into_iter().filter_map(|m| may_view(state, access, m.namespace()).map(|yes| yes.then_some(m)).transpose()).collect()
}

/// `limit` and `offset` of a list query: a page of at most [`MAX_PAGE`].
fn page<'q>(param: &impl Fn(&str) -> Option<&'q str>) -> Result<(usize, usize), (u16, String)> {
    let number = |k: &str, default: usize| match param(k) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| (400, format!("{k}: expected a whole number, found {v:?}"))),
    };
    Ok((number("offset", 0)?, number("limit", MAX_PAGE)?.min(MAX_PAGE)))
}

fn serve_api(state: &State, head: &RequestHead, access: &Access, peer_addr: &str, peer: &ReadHalf, out: &mut WriteHalf) -> Result<Sent, (u16, String)> {
    let internal = |e: Error| (500, e.to_string());
    let io = |e: std::io::Error| (500, e.to_string());
    let rest = head.path().trim_start_matches("/v1/recordings").trim_start_matches('/');
    let q = http::query_pairs(head.query());
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if rest.is_empty() {
        let (offset, limit) = page(&param)?;
        let list = listed(state, access, &param)?;
        let total = list.len();
        let items: Vec<SessionMeta> = list.into_iter().skip(offset).take(limit).collect();
        return reply(out, 200, &json!({"items": items, "total": total, "offset": offset})).map(|()| Sent::Whole).map_err(io);
    }
    let (id, part) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(part, "" | "cast" | "live" | "views") {
        return Err((404, "not found".into()));
    }
    let meta = state.recordings()?.meta(id).map_err(internal)?.ok_or((404, format!("recording {id:?} not found")))?;
    if !may_view(state, access, meta.namespace())? {
        // Not which namespace: that would tell a viewer where a recording they may not see is.
        return Err((403, "you may not watch this recording (RBAC: get on recordings.kubetape.dev in its namespace)".into()));
    }
    let namespace = meta.namespace().to_string();
    let still_may_view = || access.still_may_view(state.config.viewers.as_ref(), &namespace);
    // Only durable whole lines are served, of a running session too.
    match (part, param("follow")) {
        ("cast", None | Some("false")) => {
            note_view(state, access, id, "cast", peer_addr)?;
            return reads::snapshot(state, id, out);
        }
        ("cast", Some(other)) if other != "true" => return Err((400, format!("follow: expected true or false, found {other:?}"))),
        ("cast" | "live", _) => {
            let (form, how) = if part == "live" { (Form::EventStream, "live") } else { (Form::Cast, "follow") };
            let viewer = match access {
                Access::Viewer(v, _) => Some(format!("{}/{}", v.name, v.uid)),
                Access::Reader(_) => None,
            };
            let noted = || note_view(state, access, id, how, peer_addr);
            return reads::follow(state, id, peer, out, reads::Follow { form, viewer: viewer.as_deref(), noted: &noted, still_allowed: &still_may_view });
        }
        ("views", _) => {
            let views = state.views.of(id).map_err(io)?;
            return reply(out, 200, &json!({"items": views})).map(|()| Sent::Whole).map_err(io);
        }
        _ => {}
    }
    let meta = state.live.current(meta);
    reply(out, 200, &serde_json::to_value(&meta).unwrap_or(Value::Null)).map(|()| Sent::Whole).map_err(io)
}

fn serve_search(state: &State, head: &RequestHead, access: &Access, peer: &str, out: &mut WriteHalf) -> Result<(), (u16, String)> {
    let q = http::query_pairs(head.query());
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let words = search::words(param("q").unwrap_or_default())?;
    let found = search::search(state, &listed(state, access, &param)?, &words);
    // Hits are what the terminal showed: each recording they come from is viewed.
    for id in found["items"].as_array().into_iter().flatten().filter_map(|i| i["id"].as_str()) {
        note_view(state, access, id, "search", peer)?;
    }
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
            && param("session").is_none_or(|s| e.session_id.as_deref() == Some(s))
            && param("status").is_none_or(|s| e.status.is_some_and(|c| c.to_string() == s))
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
