//! `kubetape sim`: a simulated kube-apiserver (and, with `--kubelet`, the kubelet's
//! streaming endpoints; with `--kubeconfig` too, the kubelet of one Node of a real
//! API server, `kubelet` and `podworker`) for demos and tests. Bound to loopback
//! only: pod commands run as host processes.
//!
//! It is faithful where kubectl looks: legacy discovery, Tables for `kubectl get`,
//! watches with resource versions, exec/attach over SPDY/3.1 and WebSocket
//! (v4/v5.channel.k8s.io) with a real PTY for `tty=true`, port-forward, logs,
//! ephemeral containers, SelfSubjectReview, client-certificate and token
//! authentication, and the impersonation rules of the real API server.

mod api;
mod discovery;
mod env;
mod expand;
mod gourl;
mod kubelet;
mod netns;
mod podrefs;
mod pods;
mod podstatus;
mod podworker;
mod probe;
mod process;
mod runtime;
mod session;
mod store;
mod streams;
mod volumes;

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::args::{Args, Flag};
use crate::error::{Context, Error, Result};
use crate::kube::auth::{self, TokenFile, UserInfo};
use crate::net::body;
use crate::net::conn::{Conn, Input, WriteHalf};
use crate::net::head::HeadLimits;
use crate::net::server::{self, Lifecycle};
use crate::net::{signal, tls};
use crate::wire::http::{self, RequestHead};
use crate::wire::status;

const MAX_HEAD: usize = 64 * 1024;
/// Object bodies larger than this are refused, as kube-apiserver refuses >3 MiB.
const MAX_BODY: usize = 3 * 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const HEAD_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_CONNECTIONS: usize = 512;

pub const FLAGS: &[Flag] = &[
    Flag { name: "listen", default: Some("127.0.0.1:6443"), help: "loopback address to serve on" },
    Flag { name: "tls-cert", default: None, help: "serving certificate (PEM), required" },
    Flag { name: "tls-key", default: None, help: "serving key (PEM), required" },
    Flag { name: "client-ca", default: None, help: "CA for client certificates (CN user, O groups)" },
    Flag { name: "token-file", default: None, help: "static tokens: token,user,uid,\"group1,group2\"" },
    Flag { name: "data-dir", default: None, help: "scratch directory for pod files, required" },
    Flag { name: "impersonators", default: Some("system:masters"), help: "comma-separated groups allowed to impersonate" },
    Flag { name: "kubelet", default: Some("false"), help: "act as a kubelet for a real kube-apiserver: serve /exec, /attach, /portForward, /containerLogs" },
    Flag { name: "kubeconfig", default: None, help: "kubelet mode: the API server to register a Node with and run its pods for" },
    Flag { name: "node-name", default: Some("kubetape-sim"), help: "kubelet mode: the Node's name" },
    Flag { name: "schedule", default: Some("false"), help: "kubelet mode: also bind unscheduled pods to this node (a one-node scheduler)" },
    Flag {
        name: "pod-cidr",
        default: None,
        help: "kubelet mode: give each pod an address of this IPv4 range, added to lo as a /32 (root, and refused in the host's network namespace)",
    },
    Flag { name: "image-map", default: None, help: "kubelet mode: IMAGE=PATH[,IMAGE=PATH...]: a container of IMAGE runs the host program PATH as its entrypoint" },
    Flag { name: "apiserver-address", default: None, help: "kubelet mode: HOST:PORT given to pods as KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT" },
    Flag { name: "seed", default: Some("false"), help: "create namespace default with running pod web-0 (container main)" },
    Flag {
        name: "recording-viewers",
        default: None,
        help: "comma-separated users a SubjectAccessReview allows get on recordings.kubetape.dev in every namespace (no one else; every other review is allowed)",
    },
];

pub struct Config {
    listen: String,
    tls: Arc<rustls::ServerConfig>,
    tokens: TokenFile,
    data_dir: PathBuf,
    impersonators: Vec<String>,
    kubelet: bool,
    /// Kubelet mode with an API server: register a Node and run its pods.
    agent: Option<Agent>,
    schedule: bool,
    seed: bool,
    recording_viewers: Vec<String>,
}

/// Kubelet mode's settings for the node it runs.
pub struct Agent {
    api: crate::kube::client::ApiServer,
    node: String,
    pod_cidr: Option<netns::Cidr>,
    /// Image → the host program that is its entrypoint.
    images: HashMap<String, PathBuf>,
    /// What stands in for the `kubernetes` Service's variables.
    service_env: Vec<(String, String)>,
}

/// `IMAGE=PATH[,IMAGE=PATH...]`, each PATH an existing file.
fn parse_image_map(s: &str) -> Result<HashMap<String, PathBuf>> {
    let mut map = HashMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (image, path) = pair.split_once('=').ok_or_else(|| Error::new(format!("--image-map {pair:?}: expected IMAGE=PATH")))?;
        if image.is_empty() || path.is_empty() {
            crate::bail!("--image-map {pair:?}: expected IMAGE=PATH");
        }
        // Made absolute but not resolved: a multi-call program (busybox) goes by the
        // name it is run as.
        let path = std::path::absolute(path).with_context(|| format!("--image-map {image}={path}"))?;
        if !path.is_file() {
            crate::bail!("--image-map {image}={}: expected a program file", path.display());
        }
        map.insert(image.to_string(), path);
    }
    Ok(map)
}

/// `HOST:PORT` (`[v6]:PORT`) → the two service variables.
fn parse_service_address(s: &str) -> Result<Vec<(String, String)>> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| Error::new(format!("--apiserver-address {s:?}: expected HOST:PORT")))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| Error::new(format!("--apiserver-address {s:?}: bad port {port:?}")))?;
    if host.is_empty() {
        crate::bail!("--apiserver-address {s:?}: expected HOST:PORT");
    }
    Ok(vec![("KUBERNETES_SERVICE_HOST".into(), host.to_string()), ("KUBERNETES_SERVICE_PORT".into(), port.to_string())])
}

impl Agent {
    fn from_args(args: &Args) -> Result<Option<Agent>> {
        let Some(kubeconfig) = args.path("kubeconfig") else {
            for flag in ["pod-cidr", "image-map", "apiserver-address"] {
                if args.opt(flag).is_some() {
                    crate::bail!("--{flag}: only for a kubelet of a real API server (--kubelet --kubeconfig FILE)");
                }
            }
            return Ok(None);
        };
        let pod_cidr = match args.opt("pod-cidr") {
            Some(c) => {
                let cidr = netns::Cidr::parse(&c).context("--pod-cidr")?;
                netns::check_private_netns()?;
                Some(cidr)
            }
            None => None,
        };
        Ok(Some(Agent {
            api: crate::kube::client::ApiServer::from_kubeconfig(&kubeconfig, None).context("--kubeconfig")?,
            node: args.required("node-name")?,
            pod_cidr,
            images: args.opt("image-map").map(|m| parse_image_map(&m)).transpose()?.unwrap_or_default(),
            service_env: args.opt("apiserver-address").map(|a| parse_service_address(&a)).transpose()?.unwrap_or_default(),
        }))
    }
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Config> {
        let listen = args.required("listen")?;
        let addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(listen.as_str()).with_context(|| format!("--listen {listen}"))?.collect();
        if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
            crate::bail!("--listen {listen}: the simulator runs commands on this host, so it binds to loopback only");
        }
        let cert = args.required_path("tls-cert")?;
        let key = args.required_path("tls-key")?;
        let chain = tls::certs_from_pem(&tls::read_file(&cert)?, "--tls-cert")?;
        let key = tls::key_from_pem(&tls::read_file(&key)?, "--tls-key")?;
        let roots = match args.path("client-ca") {
            Some(p) => Some((tls::roots_from_pem(&tls::read_file(&p)?, "--client-ca")?, tls::ClientAuth::Optional)),
            None => None,
        };
        let tokens = match args.path("token-file") {
            Some(p) => TokenFile::load(&p).context("--token-file")?,
            None => TokenFile::default(),
        };
        let data_dir = args.required_path("data-dir")?;
        std::fs::create_dir_all(&data_dir).with_context(|| format!("--data-dir {}", data_dir.display()))?;
        Ok(Config {
            listen,
            tls: tls::server_config(chain, key, roots)?,
            tokens,
            data_dir: std::fs::canonicalize(&data_dir).with_context(|| format!("--data-dir {}", data_dir.display()))?,
            impersonators: args.required("impersonators")?.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            kubelet: args.bool("kubelet")?,
            agent: Agent::from_args(args)?,
            schedule: args.bool("schedule")?,
            seed: args.bool("seed")?,
            recording_viewers: args.opt("recording-viewers").map(|v| v.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect()).unwrap_or_default(),
        })
    }
}

/// (namespace, pod, container)
type ContainerKey = (String, String, String);

pub struct Cluster {
    config: Config,
    store: store::Store,
    containers: Mutex<HashMap<ContainerKey, Arc<runtime::Container>>>,
    /// Kubelet mode: what an exec into each running container sees.
    exec_envs: Mutex<HashMap<ContainerKey, podworker::ExecEnv>>,
    /// Kubelet mode with `--pod-cidr`: which pod holds which address.
    pod_ips: Mutex<Option<netns::Allocator>>,
}

impl Cluster {
    /// Changes a pod's `status` with `f`: in the simulator's store, or (kubelet mode)
    /// in the real API server.
    pub fn update_pod_status(&self, ns: &str, pod: &str, f: impl Fn(&mut serde_json::Value)) -> Result<(), String> {
        if let Some(agent) = &self.config.agent {
            return kubelet::patch_status(&agent.api, ns, pod, f);
        }
        let key = store::Key { resource: "pods".into(), namespace: ns.into(), name: pod.into() };
        self.store.update(&key, None, |o| f(&mut o["status"])).map(|_| ()).map_err(|_| format!("pod {ns}/{pod} vanished"))
    }
}

pub fn run(config: Config) -> Result<()> {
    let listener = TcpListener::bind(&config.listen).with_context(|| format!("--listen {}", config.listen))?;
    let pod_ips = config.agent.as_ref().and_then(|a| a.pod_cidr).map(netns::Allocator::new);
    let cluster = Arc::new(Cluster { config, store: store::Store::default(), containers: Mutex::new(HashMap::new()), exec_envs: Mutex::default(), pod_ips: Mutex::new(pod_ips) });
    api::bootstrap(&cluster)?;
    log::info!(
        "sim listening addr={} mode={} data_dir={}",
        listener.local_addr()?,
        if cluster.config.kubelet { "kubelet" } else { "apiserver" },
        cluster.config.data_dir.display()
    );
    if let Some(agent) = &cluster.config.agent {
        let port = listener.local_addr()?.port();
        kubelet::register_node(agent, port)?;
        let c = cluster.clone();
        std::thread::Builder::new().name("kubelet-sync".into()).spawn(move || kubelet::sync_forever(&c))?;
        let c = cluster.clone();
        std::thread::Builder::new().name("node-heartbeat".into()).spawn(move || kubelet::heartbeat_forever(&c))?;
    }
    let life = Arc::new(Lifecycle::default());
    let serving = {
        let cluster = cluster.clone();
        let life = life.clone();
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || server::serve(listener, "conn", server::Limits::flat(MAX_CONNECTIONS), life, move |sock, id, _| handle_connection(&cluster, sock, id)))?
    };
    let sig = signal::wait_for_termination()?;
    log::info!("stopping signal={sig}");
    life.stop();
    let _ = serving.join();
    for c in cluster.containers.lock().unwrap_or_else(|e| e.into_inner()).values() {
        c.kill();
    }
    // The pods' addresses go with the pods (the namespace may outlive this process).
    let held = cluster.pod_ips.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(netns::Allocator::held).unwrap_or_default();
    for ip in held {
        if let Err(e) = netns::remove(ip) {
            log::warn!("pod address not removed ip={ip} error={e}");
        }
    }
    Ok(())
}

/// One parsed, authenticated request.
pub struct Request {
    pub head: RequestHead,
    pub body: Vec<u8>,
    pub user: UserInfo,
    /// The path as Go's `URL.Path` holds it: percent-decoded, `%2F` a `/` ([`gourl`]).
    pub path: String,
    /// `req.URL.Query()`: malformed pairs dropped as Go drops them.
    pub query: Vec<(String, String)>,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn params(&self, name: &str) -> Vec<String> {
        self.query.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }
}

/// An HTTP error the simulator answers with a Status body.
pub struct ApiError {
    pub code: u16,
    pub body: serde_json::Value,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ApiError { code, body: status::failure(code, &message.into()) }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::new(500, e.to_string())
    }
}

/// What the connection does after a handler.
pub enum Outcome {
    KeepAlive,
    Close,
    /// The handler switched protocols and owns the connection from here.
    Upgrade(Box<dyn FnOnce(Input, WriteHalf) + Send>),
}

pub fn send_json(out: &mut WriteHalf, code: u16, value: &serde_json::Value) -> std::io::Result<()> {
    out.write_all(&http::response(code, "application/json", value.to_string().as_bytes()))
}

fn authenticate(cluster: &Cluster, cert_user: Option<&UserInfo>, head: &RequestHead) -> Option<UserInfo> {
    if let Some(u) = cert_user {
        return Some(u.clone());
    }
    cluster.config.tokens.lookup(auth::bearer_token(&head.headers)?).cloned()
}

/// Applies `Impersonate-*` headers the way kube-apiserver does: only members of the
/// impersonator groups may, and the result is an ordinary authenticated user.
fn impersonate(cluster: &Cluster, mut user: UserInfo, head: &RequestHead) -> Result<UserInfo, ApiError> {
    let target = head.headers.get_str("impersonate-user").map(String::from);
    let groups: Vec<String> = head.headers.get_all("impersonate-group").map(|g| String::from_utf8_lossy(g).into_owned()).collect();
    let extras = head.headers.0.iter().any(|h| {
        let n = h.name.to_ascii_lowercase();
        n.starts_with("impersonate-extra-") || n == "impersonate-uid"
    });
    match target {
        None if groups.is_empty() && !extras => {}
        None => return Err(ApiError::new(500, "requested impersonation of groups or extras without impersonating a user")),
        Some(target) => {
            if !user.groups.iter().any(|g| cluster.config.impersonators.contains(g)) {
                let msg = format!("users \"{target}\" is forbidden: User \"{}\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope", user.name);
                return Err(ApiError::new(403, msg));
            }
            // Impersonate-Uid (Kubernetes 1.22+) sets the uid; it needs a user too.
            let uid = head.headers.get_str("impersonate-uid").unwrap_or("").to_string();
            user = UserInfo { name: target, uid, groups, method: user.method };
        }
    }
    if !user.groups.iter().any(|g| g == "system:authenticated") {
        user.groups.push("system:authenticated".into());
    }
    Ok(user)
}

fn handle_connection(cluster: &Arc<Cluster>, sock: TcpStream, id: u64) {
    let conn = match Conn::accept_tls(sock, &cluster.config.tls, TLS_HANDSHAKE_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            log::debug!("handshake failed conn={id} error={e}");
            return;
        }
    };
    let cert_user = conn.peer_certs.first().and_then(|c| auth::user_from_cert(c));
    let mut input = Input::new(conn.read);
    let mut out = conn.write;
    let limits = HeadLimits { max_len: MAX_HEAD, idle: IDLE_TIMEOUT, whole: HEAD_TIMEOUT };
    loop {
        let head = match input.next_request(&limits) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(bad) => {
                let _ = send_json(&mut out, bad.status(), &status::failure(bad.status(), &bad.to_string()));
                return;
            }
        };
        // A body that cannot be read leaves the connection out of step: answer and close.
        let body = http::request_body(&head)
            .map_err(|e| ApiError::new(400, e.to_string()))
            .and_then(|framing| body::read_to_vec(&mut input, framing, MAX_BODY).map_err(|e| ApiError::new(413, e.to_string())));
        let outcome = match body {
            Err(e) => {
                let _ = send_json(&mut out, e.code, &e.body);
                Outcome::Close
            }
            Ok(body) => serve(cluster, &head, body, cert_user.as_ref(), &mut out).unwrap_or_else(|e| match send_json(&mut out, e.code, &e.body) {
                Ok(()) => Outcome::KeepAlive,
                Err(_) => Outcome::Close,
            }),
        };
        match outcome {
            Outcome::KeepAlive if !head.headers.has_token("connection", "close") => {}
            Outcome::KeepAlive | Outcome::Close => {
                let _ = out.shutdown_write();
                return;
            }
            Outcome::Upgrade(session) => {
                let _ = input.half.set_timeout(None);
                session(input, out);
                return;
            }
        }
    }
}

fn serve(cluster: &Arc<Cluster>, head: &RequestHead, body: Vec<u8>, cert_user: Option<&UserInfo>, out: &mut WriteHalf) -> Result<Outcome, ApiError> {
    if matches!(head.path(), "/healthz" | "/readyz" | "/livez") {
        send_json(out, 200, &serde_json::json!("ok"))?;
        return Ok(Outcome::KeepAlive);
    }
    // Go's server parses the target before any handler runs; a target it cannot
    // parse is answered 400 there.
    let path = gourl::request_path(&head.target).map_err(|e| ApiError::new(400, e.to_string()))?;
    let user = authenticate(cluster, cert_user, head).ok_or_else(|| ApiError::new(401, "Unauthorized"))?;
    let user = impersonate(cluster, user, head)?;
    let req = Request { head: head.clone(), body, user, path, query: gourl::query_values(head.query()) };
    log::debug!("request user={} method={} path={}", req.user.name, head.method, head.path());
    api::route(cluster, &req, out)
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::new(500, e.to_string())
    }
}
