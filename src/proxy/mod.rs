//! `kubetape proxy`: the Kubernetes API server proxy every kubectl user goes through.
//!
//! One thread per client connection parses HTTP/1.1 by hand, authenticates the
//! caller, applies the policy, rewrites identity (see `rewrite`) and forwards to the
//! API server over a verified TLS connection that lives as long as the client's.
//! Bodies stream in both directions; chunked bodies are re-framed, so a smuggled
//! message can never reach the API server. Upgrades (exec, attach, port-forward)
//! become a two-way tunnel.
//!
//! A request goes through phases, each in its own file: `admission` (may it go on,
//! and as whom), `recorders` (its API event and session recording, before anything
//! goes upstream) and `forward` (the exchange with the API server). This file holds
//! the configuration, the keep-alive loop of a client connection and the sequence
//! of phases (`Connection::run`).

mod admission;
mod certs;
mod discovery;
mod forward;
mod metrics;
pub mod policy;
mod recorders;
mod respond;
pub mod rewrite;
pub mod session;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::{Args, Flag};
use crate::error::{Context, Error, Result};
use crate::kube::auth::{self, TokenFile, UserInfo};
use crate::kube::client::ApiServer;
use crate::net::conn::{Conn, Input, WriteHalf};
use crate::net::hangup::HangupWatch;
use crate::net::head::HeadLimits;
use crate::net::reload::Reloading;
use crate::net::server::{self, Admission, Lifecycle};
use crate::net::{signal, tunnel};
use crate::record::event::{FILE_TRANSFER, PORT_FORWARD};
use crate::record::protocol::Outcome;
use crate::recording::events_client::EventSink;
use crate::recording::health::RecorderHealth;
use crate::recording::{portforward, transfer};
use crate::wire::http::{self, BodyLength, RequestHead};
use admission::{Admitted, Caller, LocalReply, Route};
use certs::{CertFiles, Certs};
use forward::{Capture, Exchange, Upstream};
use policy::{FailMode, Policy, PolicyHandle};
use recorders::{EventPlan, FollowUp, SessionStart};
use respond::Refusal;
use rewrite::Mode;

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
/// Where a pod learns its own namespace.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

pub const FLAGS: &[Flag] = &[
    Flag { name: "listen", default: Some("0.0.0.0:8443"), help: "address to serve kubectl on" },
    Flag { name: "tls-cert", default: None, help: "serving certificate chain (PEM), required; this and the other certificate files are reloaded on change" },
    Flag { name: "tls-key", default: None, help: "serving private key (PEM), required" },
    Flag { name: "client-ca", default: None, help: "CA that signs client certificates (CN user, O groups)" },
    Flag { name: "token-file", default: None, help: "static tokens: token,user,uid,\"group1,group2\"" },
    Flag { name: "kubeconfig", default: None, help: "upstream API server and the proxy's credentials [default: in-cluster]" },
    Flag { name: "context", default: None, help: "kubeconfig context [default: current-context]" },
    Flag { name: "mode", default: Some("auth"), help: "auth: impersonate callers; noauth: pass their credentials through" },
    Flag { name: "policy", default: None, help: "policy file (JSON), reloaded on change; required in auth mode" },
    Flag { name: "recorder-cert", default: None, help: "the proxy's client certificate for recorders (PEM)" },
    Flag { name: "recorder-key", default: None, help: "the proxy's client key for recorders (PEM)" },
    Flag { name: "recorders-from-cluster", default: Some("false"), help: "also route to the ready replicas of Recorder resources (see --recorder-namespaces)" },
    Flag { name: "recorder-namespaces", default: None, help: "comma-separated namespaces whose Recorders may receive recordings, or * [default: the proxy's own]" },
    Flag { name: "recorder-ca", default: None, help: "CA that issued the cluster Recorders' certificates (the operator's ca.crt); required with --recorders-from-cluster" },
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
    /// The serving config and the identity towards recorders, rebuilt when renewed.
    certs: Arc<Reloading<Certs>>,
    tokens: Option<TokenFile>,
    /// Shared with the lookups a session makes after its connection's thread moved on.
    upstream: Arc<ApiServer>,
    /// `upstream.host_header()`, computed once rather than per request.
    upstream_host: String,
    policy: Option<PathBuf>,
    /// `--recorders-from-cluster`: where to list Recorders, and in which namespaces
    /// (the TLS to reach their replicas with is in `certs`).
    discovery: Option<(crate::kube::rest::Rest, Vec<String>)>,
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
        let cert = args.required_path("tls-cert")?;
        let key = args.required_path("tls-key")?;
        let client_ca = args.path("client-ca");
        let tokens = match args.path("token-file") {
            Some(p) => Some(TokenFile::load(&p).context("--token-file")?),
            None => None,
        };
        if mode == Mode::Auth && client_ca.is_none() && tokens.is_none() {
            crate::bail!("--client-ca or --token-file: auth mode needs at least one way to authenticate callers");
        }
        let api_server = || match args.path("kubeconfig") {
            Some(p) => ApiServer::from_kubeconfig(&p, args.opt("context").as_deref()).context("--kubeconfig"),
            None => ApiServer::in_cluster().context("--kubeconfig not given and not in a cluster"),
        };
        let upstream = api_server()?;
        // Without this, a caller with no credentials would borrow the proxy's.
        let upstream = if mode == Mode::NoAuth { upstream.anonymous()? } else { upstream };
        let policy = args.path("policy");
        if mode == Mode::Auth && policy.is_none() {
            crate::bail!("--policy: required in auth mode (callers who match no grant are refused)");
        }
        let recorder = match (args.path("recorder-cert"), args.path("recorder-key")) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => crate::bail!("--recorder-cert and --recorder-key go together"),
        };
        let from_cluster = args.bool("recorders-from-cluster")?;
        let recorder_ca = match from_cluster {
            true => Some(args.path("recorder-ca").ok_or_else(|| Error::new("--recorder-ca: required with --recorders-from-cluster"))?),
            false => None,
        };
        let certs = CertFiles { cert, key, client_ca, recorder, recorder_ca }.load()?;
        let discovery = if from_cluster {
            let namespaces: Vec<String> = match args.opt("recorder-namespaces") {
                Some(list) => list.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect(),
                None => vec![std::fs::read_to_string(NAMESPACE_FILE)
                    .map(|n| n.trim().to_string())
                    .map_err(|e| Error::new(format!("--recorder-namespaces not given and the proxy's own namespace is unknown ({NAMESPACE_FILE}: {e})")))?],
            };
            Some((crate::kube::rest::Rest::new(api_server()?)?, namespaces))
        } else {
            None
        };
        let upstream_host = upstream.host_header();
        Ok(Config {
            discovery,
            upstream_host,
            listen: args.required("listen")?,
            mode,
            certs,
            tokens,
            upstream: Arc::new(upstream),
            policy,
            recorder_timeout: match args.parsed("recorder-timeout")? {
                0 => crate::bail!("--recorder-timeout: expected at least 1 second, found 0"),
                secs => Duration::from_secs(secs),
            },
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

/// An API event stream for one set of recorder tags, with what it was last routed by:
/// the policy, the cluster recorders' generation and the certificates' generation.
type RoutedSink = ((Arc<Policy>, u64, u64), Arc<EventSink>);

struct State {
    config: Config,
    policy: Arc<PolicyHandle>,
    life: Arc<Lifecycle>,
    metrics: Arc<metrics::Metrics>,
    event_sinks: std::sync::Mutex<std::collections::HashMap<String, RoutedSink>>,
    /// Recorders that failed lately, skipped by session starts for a while.
    recorder_health: Arc<RecorderHealth>,
    cluster_recorders: Option<Arc<discovery::ClusterRecorders>>,
}

/// Serves until SIGTERM or SIGINT, then lets open connections finish for the grace period.
pub fn run(mut config: Config) -> Result<()> {
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
    let cluster_recorders = match config.discovery.take() {
        Some((rest, namespaces)) => {
            log::info!("recorders from the cluster namespaces={}", namespaces.join(","));
            Some(discovery::ClusterRecorders::start(rest, namespaces, config.certs.clone())?)
        }
        None => None,
    };
    let state = Arc::new(State { config, policy, life: life.clone(), metrics, event_sinks: Default::default(), recorder_health: Default::default(), cluster_recorders });
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

/// The client half of a connection.
struct Client {
    input: Input,
    output: WriteHalf,
}

fn handle_connection(state: &State, sock: TcpStream, id: u64, admission: &Admission) {
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    // The serving config as renewed now; an open connection keeps the one it started with.
    let conn = match Conn::accept_tls(sock, &state.config.certs.get().server, TLS_HANDSHAKE_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            log::debug!("handshake failed conn={id} peer={peer} error={e}");
            return;
        }
    };
    let cert_user = conn.peer_certs.first().and_then(|c| auth::user_from_cert(c));
    let client_ip = conn.peer.ip().to_string();
    let mut client = Client { input: Input::new(conn.read), output: conn.write };
    if cert_user.is_some() && !admission.authenticated() {
        let _ = respond::refuse(&mut client.output, &Refusal::Busy);
        return;
    }
    Connection { state, id, peer: &peer, client_ip: &client_ip, cert_user: cert_user.as_ref(), admission }.keep_alive(client);
}

/// Why a request went no further: a refusal the client is told of, or a failure
/// that ends the connection with nothing to tell.
enum Stop {
    Refused(Refusal),
    Failed(Error),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Self {
        Stop::Refused(r)
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        Stop::Failed(e.into())
    }
}

enum Next {
    KeepAlive,
    Close,
    /// The API server switched protocols: the connection becomes a tunnel, recorded
    /// when `record` is given, its port-forward counted when `forward` is.
    Tunnel {
        upstream: Upstream,
        record: Option<Box<RecordPlan>>,
        forward: Option<Box<ForwardPlan>>,
    },
}

/// A session whose recorder acknowledged its header, waiting for the tunnel.
struct RecordPlan {
    session: SessionStart,
    taps: session::Taps,
    subprotocol: String,
    /// A `kubectl cp` whose files the taps list, for its event.
    transfer: Option<(transfer::Watch, FollowUp)>,
}

/// A port-forward whose bytes are counted, for its event.
struct ForwardPlan {
    meter: Arc<portforward::Meter>,
    follow: FollowUp,
}

/// Shuts the upstream connection down when the client hangs up, which ends the copy
/// of a streamed response at once.
fn hangup_watch(client: &Input, upstream: &Upstream) -> Result<HangupWatch> {
    let up = upstream.input.half.shutdown_handle()?;
    Ok(HangupWatch::start(client.half.shutdown_handle()?, move || {
        let _ = up.shutdown(std::net::Shutdown::Both);
    })?)
}

/// What a request's phases know of the connection it came on.
struct Connection<'a> {
    state: &'a State,
    id: u64,
    peer: &'a str,
    client_ip: &'a str,
    cert_user: Option<&'a UserInfo>,
    admission: &'a Admission,
}

/// A request on its way upstream: what the exchange and the response phases need of it.
struct InFlight<'r> {
    head: &'r RequestHead,
    client_close: bool,
    is_upgrade: bool,
    event: Option<EventPlan>,
    capture: Option<Capture>,
    session: Option<SessionStart>,
    /// A watch or a followed log: its response streams until one side ends it.
    long_running: bool,
}

impl<'a> Connection<'a> {
    /// Serves requests one after another, on one upstream connection kept between
    /// them, until the client closes, a request fails or asks to close, or the
    /// connection becomes a tunnel.
    fn keep_alive(&self, mut client: Client) {
        let Connection { id, peer, admission, .. } = *self;
        let mut upstream: Option<Upstream> = None;
        loop {
            let idle = if admission.is_authenticated() { IDLE_TIMEOUT } else { UNAUTHENTICATED_IDLE_TIMEOUT };
            let head = match client.input.next_request(&HeadLimits { max_len: MAX_HEAD, idle, whole: HEAD_TIMEOUT }) {
                Ok(Some(h)) => h,
                Ok(None) => break, // closed or timed out between requests
                Err(bad) => {
                    log::info!("bad request head conn={id} peer={peer} error={bad}");
                    let _ = respond::refuse(&mut client.output, &Refusal::from(bad));
                    break;
                }
            };
            match self.serve(head, &mut client, &mut upstream) {
                Ok(Next::KeepAlive) => {}
                Ok(Next::Close) => break,
                Ok(Next::Tunnel { upstream, record, forward }) => return self.tunnel(client, upstream, record, forward),
                Err(e) => {
                    log::info!("request failed conn={id} peer={peer} error={e}");
                    break;
                }
            }
        }
        let _ = client.output.shutdown_write();
    }

    /// One request: its phases, then what the client is told if one refused it.
    fn serve(&self, head: RequestHead, client: &mut Client, upstream: &mut Option<Upstream>) -> Result<Next> {
        metrics::inc(&self.state.metrics.requests);
        match self.run(head, client, upstream) {
            Ok(next) => Ok(next),
            Err(Stop::Refused(refusal)) => self.refuse(client, &refusal),
            Err(Stop::Failed(e)) => Err(e),
        }
    }

    /// The phases in order: admission, the API event, the session recording, the
    /// upstream exchange, then the response, relayed or switched to a tunnel.
    fn run(&self, mut head: RequestHead, client: &mut Client, upstream: &mut Option<Upstream>) -> Result<Next, Stop> {
        let Admitted { framing, client_close, path, info, route } = self.admit(&mut head)?;
        let caller = match route {
            Route::Local(reply) => return self.reply_locally(client, reply, client_close || framing != BodyLength::Empty),
            Route::Upstream(caller) => caller,
        };
        // An identity was shown (in noauth mode the API server judges it): the
        // connection now counts against the callers' pool, not the anonymous one.
        if !self.admission.authenticated() {
            return Err(Refusal::Busy.into());
        }
        let audit_id = crate::net::random::uuid();
        let up_head = self.upstream_request(&head, framing, &caller, &audit_id)?;
        let event = self.start_event(&head, &info, &audit_id, &caller)?;
        // From here a refusal also completes the request's event, with its status.
        log::debug!("request conn={} user={} method={} path={}", self.id, caller.who(), head.method, head.path());
        let session = self.start_recording(&head, &path, &info, &caller).map_err(|r| self.stopped(event.as_ref(), r))?;
        let is_upgrade = head.upgrade().is_some();
        if is_upgrade {
            log::info!("upgrade requested conn={} user={} peer={} path={} protocol={}", self.id, caller.who(), self.peer, head.path(), head.upgrade().unwrap_or(""));
        }
        let capture = event.as_ref().and_then(|e| e.capture).map(Capture::new);
        let long_running = recorders::long_running(&head, &info);
        let mut request = InFlight { head: &head, client_close, is_upgrade, event, capture, session, long_running };
        let exchange = forward::exchange(&self.state.config.upstream, upstream, &up_head, framing, &mut client.input, request.capture.as_mut())
            .map_err(|e| e.refusal().map_or_else(Stop::Failed, |r| self.stopped(request.event.as_ref(), r)))?;
        if exchange.response.status == 101 {
            return self.switch_protocols(client, exchange, request);
        }
        self.relay_response(client, upstream, exchange, request)
    }

    /// The admission phase, against the policy as it is now.
    fn admit(&self, head: &mut RequestHead) -> std::result::Result<Admitted<'a>, Refusal> {
        let state = self.state;
        let policy = state.policy.get();
        let gate = admission::Gate {
            conn: self.id,
            mode: state.config.mode,
            cert_user: self.cert_user,
            tokens: state.config.tokens.as_ref(),
            policy: &policy,
            stopping: state.life.is_stopping(),
        };
        admission::admit(head, &gate)
    }

    /// The proxy's own answer (health checks); the connection stays open unless the
    /// client asked to close it or sent a body that was not read.
    fn reply_locally(&self, client: &mut Client, reply: LocalReply, close: bool) -> Result<Next, Stop> {
        respond::plain(&mut client.output, reply.status, reply.body)?;
        Ok(if close { Next::Close } else { Next::KeepAlive })
    }

    /// The request the API server receives, with the proxy's credentials in auth mode.
    fn upstream_request(&self, head: &RequestHead, framing: BodyLength, caller: &Caller<'_>, audit_id: &str) -> Result<RequestHead> {
        let config = &self.state.config;
        let upstream_auth = match config.mode {
            Mode::Auth => config.upstream.authorization()?,
            Mode::NoAuth => None,
        };
        let forwarding = rewrite::Forwarding {
            mode: config.mode,
            impersonate: caller.impersonation.as_ref(),
            upstream_auth: upstream_auth.as_deref(),
            upstream_host: &config.upstream_host,
            client_ip: self.client_ip,
            audit_id,
        };
        Ok(rewrite::upstream_request(head, framing, &forwarding))
    }

    /// A refusal of a request that has an event: the event is completed with the
    /// refusal's status before the client is told.
    fn stopped(&self, event: Option<&EventPlan>, refusal: Refusal) -> Stop {
        if let Some(plan) = event {
            self.complete_event(plan, respond::decide(&refusal).0, 0, |_| {});
        }
        Stop::Refused(refusal)
    }

    /// Tells the client why its request is refused, and ends the connection.
    fn refuse(&self, client: &mut Client, refusal: &Refusal) -> Result<Next> {
        let m = &self.state.metrics;
        match refusal {
            Refusal::UpstreamUnavailable(_) | Refusal::UpstreamTimeout(_) => metrics::inc(&m.upstream_errors),
            _ => metrics::inc(&m.refused),
        }
        respond::refuse(&mut client.output, refusal)?;
        Ok(Next::Close)
    }

    /// The API server switched protocols: the client is told, the event completed,
    /// and the connection handed on to become a tunnel, recorded when a recording
    /// was started for it.
    fn switch_protocols(&self, client: &mut Client, exchange: Exchange, request: InFlight<'_>) -> Result<Next, Stop> {
        let Exchange { upstream, response } = exchange;
        if !request.is_upgrade {
            drop(upstream);
            return Err(self.stopped(request.event.as_ref(), Refusal::UpstreamUnavailable("API server switched protocols unasked".into())));
        }
        let out = rewrite::client_response(&response, BodyLength::Empty, false);
        client.output.write_all(&out.encode()).context("writing 101 to client")?;
        if let Some(plan) = &request.event {
            self.complete_event(plan, 101, 0, |ev| ev.session_id = request.session.as_ref().map(|s| s.id.clone()));
        }
        let follow = request.event.as_ref().map(EventPlan::follow_up);
        let proto = response.headers.get_str("upgrade").unwrap_or("");
        let subprotocol = response.headers.get_str("x-stream-protocol-version").or(response.headers.get_str("sec-websocket-protocol")).unwrap_or("").to_string();
        let Some(session) = request.session else {
            let forward = follow
                .filter(|f| f.event.request.subresource == "portforward")
                .map(|follow| Box::new(ForwardPlan { meter: Arc::new(portforward::Meter::new(proto, &subprotocol, request.head.query(), follow.fail)), follow }));
            return Ok(Next::Tunnel { upstream, record: None, forward });
        };
        match session::taps(proto, &subprotocol) {
            Some(mut taps) => {
                let transfer = follow.and_then(|f| Some((transfer::Watch::new(transfer::recognise(&session.command)?), f)));
                if let Some((watch, _)) = &transfer {
                    let tap = if watch.from_client() { &mut taps.client } else { &mut taps.server };
                    tap.observe(watch.observer());
                }
                Ok(Next::Tunnel { upstream, forward: None, record: Some(Box::new(RecordPlan { session, taps, subprotocol, transfer })) })
            }
            // The request offered only what the taps parse; a server that chose
            // otherwise gets no session, in either fail mode.
            None => {
                let why = format!("the API server chose stream protocol {proto:?} {subprotocol:?}, which kubetape does not record");
                session.recording.finish(Outcome::Truncated, None, Some(why.clone()));
                Err(self.stopped(request.event.as_ref(), Refusal::Forbidden(why)))
            }
        }
    }

    /// Any other response: its head re-framed for the client, then its body; the
    /// upstream connection is kept for the next request unless either side ends it.
    fn relay_response(&self, client: &mut Client, kept: &mut Option<Upstream>, exchange: Exchange, request: InFlight<'_>) -> Result<Next, Stop> {
        let Exchange { mut upstream, response } = exchange;
        if let Some(session) = request.session {
            // No session happened: say so, so the recording does not look interrupted.
            session.recording.finish(Outcome::Complete, None, Some(format!("the API server answered {} instead of switching protocols", response.status)));
        }
        let framing = match http::response_body(&request.head.method, &response) {
            Ok(f) => f,
            Err(e) => {
                drop(upstream);
                return Err(self.stopped(request.event.as_ref(), Refusal::UpstreamUnavailable(format!("bad response framing: {e}"))));
            }
        };
        let upstream_close = response.headers.has_token("connection", "close") || framing == BodyLength::UntilClose || request.is_upgrade;
        let close = request.client_close || framing == BodyLength::UntilClose;
        let mut out = rewrite::client_response(&response, framing, close);
        if self.state.config.mode == Mode::Auth && rewrite::asks_to_impersonate(request.head) {
            out.headers.push("Warning", rewrite::IMPERSONATION_IGNORED);
        }
        // A stream ends when the client hangs up, noticed at once rather than at the
        // next write, which may be hours away for a quiet watch.
        let mut watch = match request.long_running && matches!(framing, BodyLength::Chunked | BodyLength::UntilClose) {
            true => hangup_watch(&client.input, &upstream).map_err(|e| log::warn!("cannot watch for the client hanging up conn={} error={e}", self.id)).ok(),
            false => None,
        };
        let mut forwarded = 0;
        let copied = forward::receive_body(&mut upstream, framing, &out, &mut client.output, &mut forwarded);
        // A hangup noticed as the copy ended has shut the upstream connection down.
        let hung_up = watch.take().is_some_and(|w| w.stop());
        if upstream_close || copied.is_err() || hung_up {
            drop(upstream);
        } else {
            upstream.keep(kept);
        }
        if let Some(plan) = &request.event {
            self.complete_event(plan, response.status, forwarded, |ev| {
                if let Some(c) = &request.capture {
                    ev.set_body(&c.data, c.truncated);
                }
            });
        }
        match copied {
            Ok(_) if close => Ok(Next::Close),
            Ok(_) => Ok(Next::KeepAlive),
            // Part of the response may have reached the client: nothing more to tell it.
            Err(e) => Err(Stop::Failed(e.into())),
        }
    }

    /// Runs the upgraded stream to its end, tapped into its recording when it has one,
    /// and logs how it ended.
    fn tunnel(&self, client: Client, upstream: Upstream, record: Option<Box<RecordPlan>>, forward: Option<Box<ForwardPlan>>) {
        let (id, started) = (self.id, Instant::now());
        let (client, upstream) = ((client.input, client.output), (upstream.input, upstream.output));
        let Some(plan) = record else {
            let ran = match &forward {
                Some(f) => portforward::run(&format!("conn-{id}"), client, upstream, &f.meter),
                None => tunnel::tunnel(&format!("conn-{id}"), client, upstream),
            };
            if let Some(ForwardPlan { meter, follow }) = forward.map(|f| *f) {
                follow.send(PORT_FORWARD, |ev| ev.port_forward = Some(meter.report()));
            }
            match ran {
                Ok(t) => {
                    log::info!("upgraded stream ended conn={id} up_bytes={} down_bytes={} secs={:.1}", t.client_to_server, t.server_to_client, started.elapsed().as_secs_f64())
                }
                Err(e) => log::info!("upgraded stream failed conn={id} error={e}"),
            }
            return;
        };
        let SessionStart { recording, fail, id: session_id, exit_probe, .. } = plan.session;
        let s = session::run(&format!("conn-{id}"), client, upstream, plan.taps, session::Link::new(recording, fail, exit_probe), &plan.subprotocol);
        if let Some((watch, follow)) = plan.transfer {
            follow.send(FILE_TRANSFER, |ev| ev.file_transfer = Some(watch.report(s.exit_code)));
        }
        if s.outcome == Outcome::Truncated {
            metrics::inc(&self.state.metrics.recordings_truncated);
            if fail == FailMode::Closed {
                metrics::inc(&self.state.metrics.sessions_ended_by_recording_failure);
            }
        }
        let (up_b, down_b) = s.totals.map(|t| (t.client_to_server, t.server_to_client)).unwrap_or_default();
        log::info!(
            "session ended conn={id} session={session_id} outcome={:?} exit_code={} up_bytes={up_b} down_bytes={down_b} recorded_bytes={} acked_bytes={} secs={:.1} reason={}",
            s.outcome,
            s.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            s.sent,
            s.acked,
            started.elapsed().as_secs_f64(),
            s.reason.as_deref().unwrap_or("-")
        );
    }
}
