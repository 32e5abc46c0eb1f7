//! `kubetape proxy`: the Kubernetes API server proxy every kubectl user goes through.
//!
//! One thread per client connection parses HTTP/1.1 by hand, authenticates the
//! caller, applies the policy, rewrites identity (see `rewrite`) and forwards to the
//! API server over a verified TLS connection that lives as long as the client's.
//! Bodies stream in both directions; chunked bodies are re-framed, so a smuggled
//! message can never reach the API server. Upgrades (exec, attach, port-forward)
//! become a two-way tunnel.

mod metrics;
pub mod policy;
mod respond;
pub mod rewrite;
pub mod session;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::{Args, Flag};
use crate::error::{Context, Error, Result};
use crate::kube::auth::{self, TokenFile, UserInfo};
use crate::kube::client::ApiServer;
use crate::kube::request_info::{request_info, RequestInfo};
use crate::net::body::BodyReader;
use crate::net::conn::{Conn, Input, WriteHalf};
use crate::net::server::{self, Admission, Lifecycle};
use crate::net::{signal, tls, tunnel};
use crate::record::event::{ApiEvent, EventUser, Impersonated};
use crate::record::protocol::Outcome;
use crate::recording::cast;
use crate::recording::client::{RecorderTarget, Recording};
use crate::recording::events_client::EventSink;
use crate::recording::fail::{self, Decision, Situation};
use crate::recording::tap::Tap;
use crate::wire::http::{self, BodyLength, RequestHead, ResponseHead};
use policy::{FailMode, Grants, Policy, PolicyHandle};
use respond::Refusal;
use rewrite::{Impersonation, Mode};

/// Larger request or response heads are refused (kube-apiserver allows 1 MiB, but
/// no kubectl request comes near this).
const MAX_HEAD: usize = 64 * 1024;
/// A client must finish its TLS handshake within this (kubectl needs milliseconds;
/// the slot is in the bounded unauthenticated pool meanwhile).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle keep-alive connection is closed after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A connection with no identity yet (no client certificate, no token seen) must
/// send its next request head within this.
const UNAUTHENTICATED_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Once a head has started it must be complete within this (slow-loris bound).
const HEAD_TIMEOUT: Duration = Duration::from_secs(15);
/// A request body may pause this long between reads.
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server must start answering within this (watches answer at once).
const UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
const COPY_CHUNK: usize = 32 * 1024;
/// A fail-closed request waits this long for its event to be acknowledged.
const EVENT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

pub const FLAGS: &[Flag] = &[
    Flag { name: "listen", default: Some("0.0.0.0:8443"), help: "address to serve kubectl on" },
    Flag { name: "tls-cert", default: None, help: "serving certificate chain (PEM), required" },
    Flag { name: "tls-key", default: None, help: "serving private key (PEM), required" },
    Flag { name: "client-ca", default: None, help: "CA that signs client certificates (CN user, O groups)" },
    Flag { name: "token-file", default: None, help: "static tokens: token,user,uid,\"group1,group2\"" },
    Flag { name: "kubeconfig", default: None, help: "upstream API server and the proxy's credentials [default: in-cluster]" },
    Flag { name: "context", default: None, help: "kubeconfig context [default: current-context]" },
    Flag { name: "mode", default: Some("auth"), help: "auth: impersonate callers; noauth: pass their credentials through" },
    Flag { name: "policy", default: None, help: "policy file (JSON), reloaded on change; required in auth mode" },
    Flag { name: "recorder-cert", default: None, help: "the proxy's client certificate for recorders (PEM)" },
    Flag { name: "recorder-key", default: None, help: "the proxy's client key for recorders (PEM)" },
    Flag { name: "recorder-timeout", default: Some("3"), help: "seconds to connect to one recorder and get the header acknowledged" },
    Flag { name: "metrics-listen", default: None, help: "address for Prometheus metrics (plain HTTP, GET /metrics)" },
    server::LIMIT_FLAGS[0],
    server::LIMIT_FLAGS[1],
    server::LIMIT_FLAGS[2],
    Flag { name: "shutdown-grace", default: Some("30"), help: "seconds open sessions may run on after SIGTERM" },
    Flag { name: "proxy-id", default: None, help: "this proxy's name in logs and recordings [default: hostname]" },
];

pub struct Config {
    pub listen: String,
    pub mode: Mode,
    server_tls: Arc<rustls::ServerConfig>,
    tokens: Option<TokenFile>,
    upstream: ApiServer,
    /// `upstream.host_header()`, computed once rather than per request.
    upstream_host: String,
    policy: Option<PathBuf>,
    recorder_identity: Option<(Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>)>,
    recorder_timeout: Duration,
    metrics_listen: Option<String>,
    pub limits: server::Limits,
    pub shutdown_grace: Duration,
    pub proxy_id: String,
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Config> {
        let mode = match args.required("mode")?.as_str() {
            "auth" => Mode::Auth,
            "noauth" => Mode::NoAuth,
            other => crate::bail!("--mode: expected auth or noauth, found {other:?}"),
        };
        let cert_path = args.required_path("tls-cert")?;
        let key_path = args.required_path("tls-key")?;
        let chain = tls::certs_from_pem(&tls::read_file(&cert_path)?, &format!("--tls-cert {}", cert_path.display()))?;
        let key = tls::key_from_pem(&tls::read_file(&key_path)?, &format!("--tls-key {}", key_path.display()))?;
        let client_roots = match args.path("client-ca") {
            Some(p) => Some((tls::roots_from_pem(&tls::read_file(&p)?, &format!("--client-ca {}", p.display()))?, tls::ClientAuth::Optional)),
            None => None,
        };
        let tokens = match args.path("token-file") {
            Some(p) => Some(TokenFile::load(&p).context("--token-file")?),
            None => None,
        };
        if mode == Mode::Auth && client_roots.is_none() && tokens.is_none() {
            crate::bail!("--client-ca or --token-file: auth mode needs at least one way to authenticate callers");
        }
        let upstream = match args.path("kubeconfig") {
            Some(p) => ApiServer::from_kubeconfig(&p, args.opt("context").as_deref()).context("--kubeconfig")?,
            None => ApiServer::in_cluster().context("--kubeconfig not given and not in a cluster")?,
        };
        // Without this, a caller with no credentials would borrow the proxy's.
        let upstream = if mode == Mode::NoAuth { upstream.anonymous()? } else { upstream };
        let policy = args.path("policy");
        if mode == Mode::Auth && policy.is_none() {
            crate::bail!("--policy: required in auth mode (callers who match no grant are refused)");
        }
        let recorder_identity = match (args.path("recorder-cert"), args.path("recorder-key")) {
            (Some(c), Some(k)) => Some((tls::certs_from_pem(&tls::read_file(&c)?, "--recorder-cert")?, tls::key_from_pem(&tls::read_file(&k)?, "--recorder-key")?)),
            (None, None) => None,
            _ => crate::bail!("--recorder-cert and --recorder-key go together"),
        };
        let upstream_host = upstream.host_header();
        Ok(Config {
            upstream_host,
            listen: args.required("listen")?,
            mode,
            server_tls: tls::server_config(chain, key, client_roots)?,
            tokens,
            upstream,
            policy,
            recorder_identity,
            recorder_timeout: Duration::from_secs(args.parsed("recorder-timeout")?),
            metrics_listen: args.opt("metrics-listen"),
            limits: server::Limits::from_args(args)?,
            shutdown_grace: Duration::from_secs(args.parsed("shutdown-grace")?),
            proxy_id: args.opt("proxy-id").unwrap_or_else(hostname),
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "kubetape-proxy".into())
}

struct State {
    config: Config,
    policy: Arc<PolicyHandle>,
    life: Arc<Lifecycle>,
    metrics: Arc<metrics::Metrics>,
    /// API event streams, one per set of recorder tags.
    event_sinks: std::sync::Mutex<std::collections::HashMap<String, Arc<EventSink>>>,
}

/// Requests whose completion may be far off, as kube-apiserver's long-running check.
fn long_running(head: &RequestHead, info: &RequestInfo) -> bool {
    info.verb == "watch" || head.upgrade().is_some() || http::query_pairs(head.query()).iter().any(|(k, v)| k == "follow" && v == "true")
}

/// Serves until SIGTERM or SIGINT, then lets open connections finish for the grace period.
pub fn run(config: Config) -> Result<()> {
    let listener = TcpListener::bind(&config.listen).with_context(|| format!("--listen {}", config.listen))?;
    let policy = match &config.policy {
        Some(p) => PolicyHandle::watch(p.clone()).context("--policy")?,
        None => PolicyHandle::new(Policy::default()),
    };
    log::info!("proxy listening addr={} mode={:?} upstream={} proxy_id={}", listener.local_addr()?, config.mode, config.upstream_host, config.proxy_id);
    let life = Arc::new(Lifecycle::default());
    let metrics = Arc::new(metrics::Metrics::default());
    if let Some(addr) = &config.metrics_listen {
        let l = TcpListener::bind(addr).with_context(|| format!("--metrics-listen {addr}"))?;
        let m = metrics.clone();
        std::thread::Builder::new().name("metrics".into()).spawn(move || metrics::serve(l, m))?;
    }
    let state = Arc::new(State { config, policy, life: life.clone(), metrics, event_sinks: Default::default() });
    let accept = {
        let state = state.clone();
        std::thread::Builder::new().name("accept".into()).spawn(move || {
            let limits = state.config.limits;
            let life = state.life.clone();
            server::serve(listener, "conn", limits, life, move |sock, id, admission| handle_connection(&state, sock, id, admission));
        })?
    };
    let sig = signal::wait_for_termination()?;
    log::info!("stopping signal={sig} open_connections={}", life.active());
    life.stop();
    let _ = accept.join();
    let left = life.drain(state.config.shutdown_grace);
    if left > 0 {
        log::warn!("grace period over, closing connections open_connections={left}");
    }
    Ok(())
}

/// The upstream half of a client connection, opened on first use.
struct Upstream {
    input: Input,
    output: WriteHalf,
    /// When its last response ended; a connection idle longer is checked before reuse.
    idle_since: Instant,
}

/// A connection idle for less than this is reused without a liveness check.
const REUSE_WITHOUT_CHECK: Duration = Duration::from_secs(1);

fn handle_connection(state: &State, sock: TcpStream, id: u64, admission: &Admission) {
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let conn = match Conn::accept_tls(sock, &state.config.server_tls, TLS_HANDSHAKE_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            log::debug!("handshake failed conn={id} peer={peer} error={e}");
            return;
        }
    };
    let cert_user = conn.peer_certs.first().and_then(|c| auth::user_from_cert(c));
    let client_ip = conn.peer.ip().to_string();
    let mut client = (Input::new(conn.read), conn.write);
    if cert_user.is_some() && !admission.authenticated() {
        let _ = respond::refuse(&mut client.1, &Refusal::Busy);
        return;
    }
    let mut upstream: Option<Upstream> = None;
    loop {
        let idle = if admission.is_authenticated() { IDLE_TIMEOUT } else { UNAUTHENTICATED_IDLE_TIMEOUT };
        let head = match client.0.read_head(http::parse_request, MAX_HEAD, idle, HEAD_TIMEOUT) {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => {
                if client.0.buffered().is_empty() && (e.is_timeout() || e.io_kind().is_some()) {
                    break; // idle keep-alive connection closed or timed out
                }
                log::info!("bad request head conn={id} peer={peer} error={e}");
                let refusal = if client.0.buffered().len() > MAX_HEAD {
                    Refusal::HeadTooLarge
                } else if e.is_timeout() {
                    Refusal::Timeout("request head")
                } else {
                    Refusal::BadRequest(e.to_string())
                };
                let _ = respond::refuse(&mut client.1, &refusal);
                break;
            }
        };
        let ctx = Request { state, id, peer: &peer, client_ip: &client_ip, cert_user: cert_user.as_ref(), admission };
        match ctx.serve(head, &mut client, &mut upstream) {
            Ok(Next::KeepAlive) => {}
            Ok(Next::Close) => break,
            Ok(Next::Tunnel(up, Some(plan))) => {
                let started = Instant::now();
                let s = session::run(&format!("conn-{id}"), client, (up.input, up.output), plan.taps, plan.recording, plan.fail, &plan.subprotocol);
                if s.outcome == Outcome::Truncated {
                    metrics::inc(&state.metrics.recordings_truncated);
                    if plan.fail == FailMode::Closed {
                        metrics::inc(&state.metrics.sessions_ended_by_recording_failure);
                    }
                }
                let (up_b, down_b) = s.totals.map(|t| (t.client_to_server, t.server_to_client)).unwrap_or_default();
                log::info!(
                    "session ended conn={id} session={} outcome={:?} exit_code={} up_bytes={up_b} down_bytes={down_b} recorded_bytes={} acked_bytes={} secs={:.1} reason={}",
                    plan.id,
                    s.outcome,
                    s.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                    s.sent,
                    s.acked,
                    started.elapsed().as_secs_f64(),
                    s.reason.as_deref().unwrap_or("-")
                );
                return;
            }
            Ok(Next::Tunnel(up, None)) => {
                let started = Instant::now();
                let result = tunnel::tunnel(&format!("conn-{id}"), client, (up.input, up.output));
                match result {
                    Ok(t) => {
                        log::info!("upgraded stream ended conn={id} up_bytes={} down_bytes={} secs={:.1}", t.client_to_server, t.server_to_client, started.elapsed().as_secs_f64())
                    }
                    Err(e) => log::info!("upgraded stream failed conn={id} error={e}"),
                }
                return;
            }
            Err(e) => {
                log::info!("request failed conn={id} peer={peer} error={e}");
                break;
            }
        }
    }
    let _ = client.1.shutdown_write();
}

enum Next {
    KeepAlive,
    Close,
    Tunnel(Upstream, Option<Box<RecordPlan>>),
}

/// A session whose recorder acknowledged its header, waiting for the tunnel.
struct RecordPlan {
    recording: Recording,
    fail: FailMode,
    taps: (Box<dyn Tap>, Box<dyn Tap>),
    subprotocol: String,
    id: String,
}

struct Request<'a> {
    state: &'a State,
    id: u64,
    peer: &'a str,
    client_ip: &'a str,
    cert_user: Option<&'a UserInfo>,
    admission: &'a Admission,
}

impl Request<'_> {
    /// Who the caller is: a verified client certificate first, then a bearer token,
    /// as kube-apiserver's union authenticator orders them.
    fn authenticate(&self, head: &RequestHead) -> Option<UserInfo> {
        if let Some(u) = self.cert_user {
            return Some(u.clone());
        }
        let token = auth::bearer_token(&head.headers)?;
        self.state.config.tokens.as_ref()?.lookup(token).cloned()
    }

    fn serve(&self, mut head: RequestHead, client: &mut (Input, WriteHalf), upstream: &mut Option<Upstream>) -> Result<Next> {
        let config = &self.state.config;
        let m = &self.state.metrics;
        metrics::inc(&m.requests);
        let refuse = |client: &mut (Input, WriteHalf), r: Refusal| -> Result<Next> {
            match r {
                Refusal::UpstreamUnavailable(_) | Refusal::UpstreamTimeout(_) => metrics::inc(&m.upstream_errors),
                _ => metrics::inc(&m.refused),
            }
            respond::refuse(&mut client.1, &r)?;
            Ok(Next::Close)
        };
        let framing = match http::request_body(&head) {
            Ok(f) => f,
            Err(e) => return refuse(client, Refusal::BadRequest(e.to_string())),
        };
        if let Err(why) = rewrite::check_connection(&head) {
            return refuse(client, Refusal::BadRequest(why));
        }
        // Go's server answers any other expectation 417; so does the proxy, rather
        // than forward what the API server would refuse after reading part of it.
        if let Some(e) = head.headers.get("expect").filter(|e| !e.eq_ignore_ascii_case(b"100-continue")) {
            return refuse(client, Refusal::ExpectationFailed(String::from_utf8_lossy(e).into_owned()));
        }
        // Classified on the path the API server will route (Go decodes it first), and
        // forwarded in that path's canonical encoding, so what was classified is what
        // is routed.
        let path = match http::decode_path(head.path()) {
            Ok(p) => p,
            Err(e) => return refuse(client, Refusal::BadRequest(e.to_string())),
        };
        head.target = match head.query() {
            "" => http::encode_path(&path),
            q => format!("{}?{q}", http::encode_path(&path)),
        };
        let info = request_info(&head.method, &path, head.query());
        let client_close = head.headers.has_token("connection", "close");
        if let Some(body) = self.local_endpoint(&head) {
            respond::plain(&mut client.1, body.0, body.1)?;
            return Ok(if client_close || framing != BodyLength::Empty { Next::Close } else { Next::KeepAlive });
        }
        let user = self.authenticate(&head);
        let grants = self.state.policy.get().grants_for(user.as_ref());
        let impersonation = match (config.mode, &user, &grants) {
            (Mode::Auth, None, _) => return refuse(client, Refusal::Unauthenticated),
            (Mode::Auth, Some(u), None) => {
                log::info!("request refused conn={} user={} reason=no-grant", self.id, u.name);
                return refuse(client, Refusal::Forbidden(format!("user {:?} matches no grant in the kubetape policy", u.name)));
            }
            (Mode::Auth, Some(u), Some(g)) => {
                let mut groups = u.groups.clone();
                for extra in &g.groups {
                    if !groups.contains(extra) {
                        groups.push(extra.clone());
                    }
                }
                Some(Impersonation { user: u, groups })
            }
            (Mode::NoAuth, _, _) => None,
        };
        // An identity was shown (in noauth mode the API server judges it): the
        // connection now counts against the callers' pool, not the anonymous one.
        if !self.admission.authenticated() {
            return refuse(client, Refusal::Busy);
        }
        let upstream_auth = match config.mode {
            Mode::Auth => config.upstream.authorization()?,
            Mode::NoAuth => None,
        };
        let received = Instant::now();
        let audit_id = crate::net::random::uuid();
        let event = match self.start_event(&head, &info, &audit_id, user.as_ref(), impersonation.as_ref(), grants.as_ref()) {
            Ok(e) => e,
            Err(refusal) => return refuse(client, refusal),
        };
        // From here a refusal also completes the request's event, with its status.
        let refuse = |client: &mut (Input, WriteHalf), r: Refusal| -> Result<Next> {
            if let Some(plan) = &event {
                self.complete_event(plan, respond::decide(&r).0, 0, received, |_| {});
            }
            refuse(client, r)
        };
        let forwarding = rewrite::Forwarding {
            mode: config.mode,
            impersonate: impersonation.as_ref(),
            upstream_auth: upstream_auth.as_deref(),
            upstream_host: &config.upstream_host,
            client_ip: self.client_ip,
            audit_id: &audit_id,
        };
        let up_head = rewrite::upstream_request(&head, framing, &forwarding);
        let who = user.as_ref().map(|u| u.name.as_str()).unwrap_or("-");
        log::debug!("request conn={} user={who} method={} path={}", self.id, head.method, head.path());
        let recording = match self.start_recording(&head, &path, &info, user.as_ref(), impersonation.as_ref(), grants.as_ref()) {
            Ok(r) => r,
            Err(refusal) => return refuse(client, refusal),
        };
        let is_upgrade = head.upgrade().is_some();
        if is_upgrade {
            log::info!("upgrade requested conn={} user={who} peer={} path={} protocol={}", self.id, self.peer, head.path(), head.upgrade().unwrap_or(""));
        }

        let mut capture = event.as_ref().and_then(|e| e.capture).map(|limit| Capture { data: Vec::new(), limit, truncated: false });
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            if upstream.as_ref().is_some_and(|up| !up.input.buffered().is_empty() || (up.idle_since.elapsed() > REUSE_WITHOUT_CHECK && !up.input.half.is_reusable())) {
                *upstream = None; // closed or spoke out of turn while idle
            }
            let fresh = upstream.is_none();
            if fresh {
                match config.upstream.connect(UPSTREAM_CONNECT_TIMEOUT) {
                    Ok(c) => *upstream = Some(Upstream { input: Input::new(c.read), output: c.write, idle_since: Instant::now() }),
                    Err(e) => return refuse(client, Refusal::UpstreamUnavailable(e.to_string())),
                }
            }
            let Some(up) = upstream.as_mut() else { unreachable!("connected above") };
            let sent = self.send_request(&up_head, framing, client, up, capture.as_mut());
            if let Err(e) = sent {
                *upstream = None;
                if e.0 == Side::Client {
                    // A malformed chunked body is the client's fault and worth saying so;
                    // the half-sent request dies with the upstream connection dropped above.
                    if e.1.io_kind() == Some(std::io::ErrorKind::InvalidData) {
                        return refuse(client, Refusal::BadRequest(e.1.to_string()));
                    }
                    return Err(e.1);
                }
                // A request without a body is safe to send again on a fresh connection.
                if !fresh && framing == BodyLength::Empty && attempt == 1 {
                    continue;
                }
                return refuse(client, Refusal::UpstreamUnavailable(e.1.to_string()));
            }
            match read_response_head(up) {
                Ok(r) => break r,
                Err(e) => {
                    *upstream = None;
                    if !fresh && framing == BodyLength::Empty && attempt == 1 && !e.is_timeout() {
                        continue;
                    }
                    let r = if e.is_timeout() { Refusal::UpstreamTimeout(e.to_string()) } else { Refusal::UpstreamUnavailable(e.to_string()) };
                    return refuse(client, r);
                }
            }
        };
        let Some(up) = upstream.as_mut() else { unreachable!("response read above") };

        if response.status == 101 {
            if !is_upgrade {
                *upstream = None;
                return refuse(client, Refusal::UpstreamUnavailable("API server switched protocols unasked".into()));
            }
            let out = rewrite::client_response(&response, BodyLength::Empty, false);
            client.1.write_all(&out.encode()).context("writing 101 to client")?;
            let Some(up) = upstream.take() else { unreachable!("response read above") };
            if let Some(plan) = &event {
                self.complete_event(plan, 101, 0, received, |ev| ev.session_id = recording.as_ref().map(|r| r.2.clone()));
            }
            let plan = match recording {
                Some((recording, fail, id)) => {
                    let proto = response.headers.get_str("upgrade").unwrap_or("");
                    let subprotocol = response.headers.get_str("x-stream-protocol-version").or(response.headers.get_str("sec-websocket-protocol")).unwrap_or("").to_string();
                    match session::taps(proto, &subprotocol) {
                        Some(taps) => Some(Box::new(RecordPlan { recording, fail, taps, subprotocol, id })),
                        // The request offered only what the taps parse; a server that
                        // chose otherwise gets no session, in either fail mode.
                        None => {
                            let why = format!("the API server chose stream protocol {proto:?} {subprotocol:?}, which kubetape does not record");
                            recording.finish(Outcome::Truncated, None, Some(why.clone()));
                            return refuse(client, Refusal::Forbidden(why));
                        }
                    }
                }
                None => None,
            };
            return Ok(Next::Tunnel(up, plan));
        }
        if let Some((recording, _, _)) = recording {
            // No session happened: say so, so the recording does not look interrupted.
            recording.finish(Outcome::Complete, None, Some(format!("the API server answered {} instead of switching protocols", response.status)));
        }

        let up_framing = match http::response_body(&head.method, &response) {
            Ok(f) => f,
            Err(e) => {
                *upstream = None;
                return refuse(client, Refusal::UpstreamUnavailable(format!("bad response framing: {e}")));
            }
        };
        let upstream_close = response.headers.has_token("connection", "close") || up_framing == BodyLength::UntilClose || is_upgrade;
        let close = client_close || up_framing == BodyLength::UntilClose;
        let out = rewrite::client_response(&response, up_framing, close);
        if matches!(up_framing, BodyLength::Chunked | BodyLength::UntilClose) {
            // Streams (watches, logs -f) may be silent for long; a sized body keeps the
            // response timeout (left in place: one setsockopt fewer per request).
            up.input.half.set_timeout(None).context("setting upstream timeout")?;
        }
        let copied = copy_body(&mut up.input, up_framing, out.encode(), &mut client.1, None);
        if upstream_close || copied.is_err() {
            *upstream = None;
        } else if let Some(up) = upstream.as_mut() {
            up.idle_since = Instant::now();
        }
        if let Some(plan) = &event {
            let bytes = *copied.as_ref().unwrap_or(&0);
            self.complete_event(plan, response.status, bytes, received, |ev| {
                if let Some(c) = &capture {
                    ev.set_body(&c.data, c.truncated);
                }
            });
        }
        match copied {
            Ok(_) if close => Ok(Next::Close),
            Ok(_) => Ok(Next::KeepAlive),
            Err(CopyError::Write(e)) => Err(e).context("writing response body to client"),
            Err(CopyError::Read(e)) => Err(e).context("reading response body from API server"),
        }
    }

    /// For a caller whose grants enable events: the request's event, recorded before
    /// the request goes upstream. Fail-closed callers wait for the recorder to make it
    /// durable and are refused if it cannot; fail-open ones never wait.
    fn start_event(
        &self,
        head: &RequestHead,
        info: &RequestInfo,
        audit_id: &str,
        user: Option<&UserInfo>,
        impersonation: Option<&Impersonation<'_>>,
        grants: Option<&Grants>,
    ) -> std::result::Result<Option<EventPlan>, Refusal> {
        let Some(grants) = grants.filter(|g| g.events) else { return Ok(None) };
        let policy = self.state.policy.get();
        let capture = match policy.events.level(info) {
            policy::Level::None => return Ok(None),
            policy::Level::Metadata => None,
            policy::Level::Request => Some(policy.events.max_body_bytes),
        };
        let mut ev = ApiEvent::received(audit_id.to_string(), info, &head.method, head.path(), head.query());
        ev.user = user.map(|u| EventUser { name: u.name.clone(), groups: u.groups.clone(), authenticated_by: u.method.to_string() });
        ev.impersonated = impersonation.map(|i| Impersonated { user: i.user.name.clone(), groups: i.groups.clone() });
        ev.user_agent = head.headers.get_str("user-agent").unwrap_or("").to_string();
        ev.source_address = self.client_ip.to_string();
        ev.proxy = self.state.config.proxy_id.clone();
        let who = user.map(|u| u.name.as_str()).unwrap_or("-");
        let unrecordable = |e: &dyn std::fmt::Display| match fail::decide(grants.fail_mode, Situation::EventUnrecordable) {
            Decision::Refuse => {
                metrics::inc(&self.state.metrics.events_refused);
                log::warn!("request refused conn={} user={who} reason=events-unrecordable error={e}", self.id);
                Err(Refusal::Unrecordable { why: format!("API requests must be recorded, and recording is not possible: {e}"), discovery: !info.is_resource_request })
            }
            _ => {
                metrics::inc(&self.state.metrics.events_dropped);
                log::debug!("api event not recorded conn={} error={e}", self.id);
                Ok(None)
            }
        };
        let sink = match self.event_sink(&grants.recorder_tags) {
            Ok(s) => s,
            Err(e) => return unrecordable(&e),
        };
        if grants.fail_mode == FailMode::Closed {
            if let Err(e) = sink.send_and_wait(&ev, EVENT_ACK_TIMEOUT) {
                return unrecordable(&e);
            }
        } else if long_running(head, info) {
            // Fail-open: the completion event alone carries when the request was
            // received, so only requests that may run for long (watches, follows,
            // sessions) are announced now; nothing waits (the sink counts drops).
            sink.send(&ev);
        }
        Ok(Some(EventPlan { sink, event: std::cell::RefCell::new(ev), capture }))
    }

    /// Completes the request's event and queues it without waiting.
    fn complete_event(&self, plan: &EventPlan, status: u16, bytes: u64, received: Instant, finish: impl FnOnce(&mut ApiEvent)) {
        let mut ev = plan.event.borrow_mut();
        ev.complete(status, bytes, received.elapsed().as_secs_f64() * 1000.0);
        finish(&mut ev);
        plan.sink.send(&*ev);
    }

    /// The event stream to the recorders carrying `tags`, started on first use.
    fn event_sink(&self, tags: &[String]) -> Result<Arc<EventSink>> {
        let key = tags.join(",");
        let mut sinks = self.state.event_sinks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sinks.get(&key) {
            return Ok(s.clone());
        }
        let sink = EventSink::start(&key, self.recorder_targets(tags)?, self.state.metrics.events_dropped.clone());
        sinks.insert(key, sink.clone());
        Ok(sink)
    }

    /// For an exec or attach session whose grants name recorders: connects to one
    /// and gets the header acknowledged, before anything goes upstream. Fail-closed
    /// callers are refused when that is impossible; fail-open ones run unrecorded.
    fn start_recording(
        &self,
        head: &RequestHead,
        path: &str,
        info: &RequestInfo,
        user: Option<&UserInfo>,
        impersonation: Option<&Impersonation<'_>>,
        grants: Option<&Grants>,
    ) -> std::result::Result<Option<(Recording, FailMode, String)>, Refusal> {
        let Some(grants) = grants else { return Ok(None) };
        let who = user.map(|u| u.name.as_str()).unwrap_or("-");
        let recorded = !grants.recorder_tags.is_empty() || grants.fail_mode == FailMode::Closed;
        if recorded && session::reaches_kubelet_stream(path) {
            metrics::inc(&self.state.metrics.sessions_refused_unrecordable);
            log::warn!("request refused conn={} user={who} reason=kubelet-stream-via-node-proxy", self.id);
            return Err(Refusal::Forbidden(
                "the kubelet's exec, attach, run and port-forward endpoints cannot be recorded through nodes/proxy: use kubectl exec, attach or port-forward".into(),
            ));
        }
        let request = match session::session_request(head, info) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(why) if recorded => {
                metrics::inc(&self.state.metrics.sessions_refused_unrecordable);
                log::warn!("session refused conn={} user={who} reason=unrecordable-request error={why}", self.id);
                return Err(Refusal::BadRequest(format!("this session cannot be recorded: {why}")));
            }
            Err(_) => return Ok(None),
        };
        let refuse_or_skip = |why: String| {
            if fail::decide(grants.fail_mode, Situation::NoRecorderAtStart) == Decision::Refuse {
                metrics::inc(&self.state.metrics.sessions_refused_unrecordable);
                log::warn!("session refused conn={} user={who} ns={} pod={} reason={why}", self.id, request.namespace, request.pod);
                Err(Refusal::Forbidden(format!("'kubectl {}' sessions must be recorded, and recording is not possible: {why}", request.kind)))
            } else {
                metrics::inc(&self.state.metrics.sessions_unrecorded);
                log::warn!("session not recorded conn={} user={who} ns={} pod={} fail_mode=open reason={why}", self.id, request.namespace, request.pod);
                Ok(None)
            }
        };
        if grants.recorder_tags.is_empty() {
            return if grants.fail_mode == FailMode::Closed { refuse_or_skip("no recorder is configured for you".into()) } else { Ok(None) };
        }
        let targets = match self.recorder_targets(&grants.recorder_tags) {
            Ok(t) => t,
            Err(e) => return refuse_or_skip(e.to_string()),
        };
        let id = crate::record::protocol::new_id();
        let ctx = cast::HeaderContext {
            id: &id,
            request: &request,
            protocol: head.upgrade().unwrap_or(""),
            offered: &session::offered_subprotocols(head),
            user,
            impersonated: impersonation.map(|i| (i.user.name.as_str(), i.groups.as_slice())),
            source: self.client_ip,
            proxy_id: &self.state.config.proxy_id,
            started: std::time::SystemTime::now(),
        };
        match Recording::start(&targets, &id, &cast::header(&ctx), self.state.config.recorder_timeout) {
            Ok(r) => {
                metrics::inc(&self.state.metrics.sessions_recorded);
                log::info!("session recording conn={} session={id} user={who} ns={} pod={} type={} recorder={}", self.id, request.namespace, request.pod, request.kind, r.recorder);
                Ok(Some((r, grants.fail_mode, id)))
            }
            Err(e) => refuse_or_skip(format!("recorders unreachable: {e}")),
        }
    }

    /// The policy's recorders that carry one of `tags` (or are named by one), in order.
    fn recorder_targets(&self, tags: &[String]) -> Result<Vec<RecorderTarget>> {
        let policy = self.state.policy.get();
        let base = self.state.config.policy.as_deref().and_then(|p| p.parent()).unwrap_or(std::path::Path::new("."));
        let mut out = Vec::new();
        for r in policy.recorders.iter().filter(|r| tags.iter().any(|t| r.tags.contains(t) || &r.name == t)) {
            let roots = match &r.ca_file {
                Some(f) => tls::roots_from_pem(&tls::read_file(&base.join(f))?, &format!("recorder {} caFile", r.name))?,
                None => crate::bail!("recorder {}: caFile is required", r.name),
            };
            out.push(crate::recording::client::target(&r.name, &r.url, roots, self.state.config.recorder_identity.as_ref().map(|(c, k)| (c.clone(), k.clone_key())))?);
        }
        if out.is_empty() {
            crate::bail!("no recorder in the policy carries tags {tags:?}");
        }
        Ok(out)
    }

    fn local_endpoint(&self, head: &RequestHead) -> Option<(u16, &'static str)> {
        match (head.method.as_str(), head.path()) {
            ("GET", "/healthz") => Some((200, "ok")),
            ("GET", "/readyz") if self.state.life.is_stopping() => Some((503, "shutting down")),
            ("GET", "/readyz") => Some((200, "ok")),
            _ => None,
        }
    }

    fn send_request(
        &self,
        up_head: &RequestHead,
        framing: BodyLength,
        client: &mut (Input, WriteHalf),
        up: &mut Upstream,
        capture: Option<&mut Capture>,
    ) -> std::result::Result<(), (Side, Error)> {
        client.0.half.set_timeout(Some(BODY_IDLE_TIMEOUT)).map_err(|e| (Side::Client, e.into()))?;
        copy_body(&mut client.0, framing, up_head.encode(), &mut up.output, capture).map(|_| ()).map_err(|e| match e {
            CopyError::Read(e) => (Side::Client, e),
            CopyError::Write(e) => (Side::Upstream, e),
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

enum CopyError {
    Read(Error),
    Write(Error),
}

fn read_response_head(up: &mut Upstream) -> Result<ResponseHead> {
    loop {
        let head = up
            .input
            .read_head(http::parse_response, MAX_HEAD, UPSTREAM_RESPONSE_TIMEOUT, UPSTREAM_RESPONSE_TIMEOUT)
            .context("reading response from API server")?
            .ok_or_else(|| Error::new("API server closed the connection"))?;
        // Interim responses (100 Continue) are consumed here; kubectl never asks for them.
        if head.status >= 200 || head.status == 101 {
            return Ok(head);
        }
    }
}

/// A request's API event, sent or queued, to be completed with the response.
struct EventPlan {
    sink: Arc<EventSink>,
    /// Completed in place once the response is known (no copy per request).
    event: std::cell::RefCell<ApiEvent>,
    /// Keep up to this many bytes of the request body (level `Request`).
    capture: Option<usize>,
}

/// The first bytes of a request body, kept for its API event.
struct Capture {
    data: Vec<u8>,
    limit: usize,
    truncated: bool,
}

/// Writes `head`, then copies one body, re-framing chunked bodies chunk by chunk so
/// streams (watches, `logs -f`) reach the reader as soon as each piece arrives. The
/// head goes out with the first piece of body (one TLS record for small messages).
/// Keeps the body's first bytes in `capture` when given.
fn copy_body(from: &mut Input, framing: BodyLength, head: Vec<u8>, to: &mut WriteHalf, capture: Option<&mut Capture>) -> std::result::Result<u64, CopyError> {
    thread_local! {
        // One copy buffer per connection thread, not one allocation per message.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; COPY_CHUNK]);
    }
    BUF.with(|b| copy_body_with(from, framing, head, to, capture, &mut b.borrow_mut()))
}

fn copy_body_with(
    from: &mut Input,
    framing: BodyLength,
    head: Vec<u8>,
    to: &mut WriteHalf,
    mut capture: Option<&mut Capture>,
    buf: &mut [u8],
) -> std::result::Result<u64, CopyError> {
    let chunked = framing == BodyLength::Chunked;
    let mut pending = head;
    let mut body = BodyReader::new(from, framing);
    let mut total = 0u64;
    loop {
        // Whatever waits to be written goes out before a read that may block.
        if !pending.is_empty() && !body.is_done() && body.available() == 0 {
            to.write_all(&pending).map_err(|e| CopyError::Write(e.into()))?;
            pending.clear();
        }
        let n = body.read(buf).map_err(|e| CopyError::Read(e.into()))?;
        if n == 0 {
            if chunked {
                pending.extend_from_slice(http::LAST_CHUNK);
            }
            if !pending.is_empty() {
                to.write_all(&pending).map_err(|e| CopyError::Write(e.into()))?;
            }
            return Ok(total);
        }
        total += n as u64;
        if let Some(c) = capture.as_deref_mut() {
            let room = c.limit.saturating_sub(c.data.len());
            c.data.extend_from_slice(&buf[..n.min(room)]);
            c.truncated |= n > room;
        }
        if chunked {
            pending.extend_from_slice(&http::encode_chunk(&buf[..n]));
        } else {
            pending.extend_from_slice(&buf[..n]);
        }
        if !body.is_done() {
            to.write_all(&pending).map_err(|e| CopyError::Write(e.into()))?;
            pending.clear();
        }
    }
}
