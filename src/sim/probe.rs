//! Readiness and liveness probes as the kubelet runs them (Kubernetes 1.20,
//! `pkg/kubelet/prober`): `httpGet` (a status from 200 to 399 is a success; HTTPS
//! without certificate verification, as the kubelet does), `tcpSocket` (a connection
//! is a success) and `exec` (exit status 0), with `initialDelaySeconds`,
//! `periodSeconds`, `timeoutSeconds`, and a result that flips only after
//! `successThreshold` or `failureThreshold` results in a row. Parsing and the
//! threshold bookkeeping are pure; [`http_get`] and [`tcp_socket`] do network I/O.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;

use crate::net::conn::{Conn, Input};
use crate::wire::http::{self, RequestHead};

/// A probe response head larger than this is a failure.
const MAX_PROBE_HEAD: usize = 16 * 1024;
/// The User-Agent the kubelet's prober sends.
const USER_AGENT: &str = "kube-probe/1.20";

/// A port by number or by the name of one of the container's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Port {
    Number(i64),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handler {
    Http { https: bool, host: Option<String>, port: Port, path: String, headers: Vec<(String, String)> },
    Tcp { host: Option<String>, port: Port },
    Exec { command: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub handler: Handler,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn port_of(v: &Value) -> Result<Port, String> {
    match v {
        Value::Number(n) => n.as_i64().map(Port::Number).ok_or_else(|| format!("invalid port {n}")),
        Value::String(s) => Ok(Port::Name(s.clone())),
        other => Err(format!("invalid port {other}")),
    }
}

/// The probe `v` describes; `Ok(None)` when there is none.
pub fn parse(v: &Value) -> Result<Option<Probe>, String> {
    if !v.is_object() {
        return Ok(None);
    }
    let host = |h: &Value| h["host"].as_str().filter(|s| !s.is_empty()).map(String::from);
    let handler = if let Some(h) = v.get("httpGet") {
        let https = match h["scheme"].as_str().unwrap_or("HTTP") {
            "HTTP" => false,
            "HTTPS" => true,
            other => return Err(format!("httpGet: unsupported scheme {other:?}")),
        };
        let path = h["path"].as_str().unwrap_or_default();
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        let headers = h["httpHeaders"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| (x["name"].as_str().unwrap_or_default().to_string(), x["value"].as_str().unwrap_or_default().to_string()))
            .collect();
        Handler::Http { https, host: host(h), port: port_of(&h["port"])?, path, headers }
    } else if let Some(t) = v.get("tcpSocket") {
        Handler::Tcp { host: host(t), port: port_of(&t["port"])? }
    } else if let Some(e) = v.get("exec") {
        let command: Vec<String> = e["command"].as_array().into_iter().flatten().filter_map(Value::as_str).map(String::from).collect();
        if command.is_empty() {
            return Err("exec: command is empty".into());
        }
        Handler::Exec { command }
    } else {
        return Err("no httpGet, tcpSocket or exec handler".into());
    };
    let secs = |field: &str, default: u64, min: u64| Duration::from_secs(v[field].as_u64().unwrap_or(default).max(min));
    let count = |field: &str, default: u32| v[field].as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(default).max(1);
    Ok(Some(Probe {
        handler,
        initial_delay: secs("initialDelaySeconds", 0, 0),
        period: secs("periodSeconds", 10, 1),
        timeout: secs("timeoutSeconds", 1, 1),
        success_threshold: count("successThreshold", 1),
        failure_threshold: count("failureThreshold", 3),
    }))
}

/// A port number, looking a name up among the container's `ports` (then trying it as
/// a number, as the kubelet's `extractPort` does).
pub fn resolve_port(port: &Port, container: &Value) -> Result<u16, String> {
    let n = match port {
        Port::Number(n) => *n,
        Port::Name(name) => {
            let named = container["ports"].as_array().into_iter().flatten().find(|p| p["name"].as_str() == Some(name)).and_then(|p| p["containerPort"].as_i64());
            match named.or_else(|| name.parse().ok()) {
                Some(n) => n,
                None => return Err(format!("couldn't find port: {name:?} in container")),
            }
        }
    };
    u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| format!("invalid port number: {n}"))
}

/// A probe's result over time: the kubelet's worker, without the thread.
#[derive(Clone, Debug)]
pub struct Tracker {
    pub probe: Probe,
    /// The current result (readiness starts false, liveness true).
    pub ok: bool,
    streak: u32,
    next: Instant,
}

impl Tracker {
    pub fn new(probe: Probe, started: Instant, initial: bool) -> Tracker {
        Tracker { next: started + probe.initial_delay, probe, ok: initial, streak: 0 }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Records one result at `now`; returns whether the current result flipped.
    pub fn record(&mut self, success: bool, now: Instant) -> bool {
        self.next = now + self.probe.period;
        if success == self.ok {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let threshold = if success { self.probe.success_threshold } else { self.probe.failure_threshold };
        if self.streak >= threshold {
            self.ok = success;
            self.streak = 0;
            return true;
        }
        false
    }
}

fn connect(host: &str, port: u16, timeout: Duration) -> Result<(TcpStream, SocketAddr), String> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(|e| format!("resolving {host}: {e}"))?.collect();
    let mut last = format!("{host}: no addresses");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok((s, addr)),
            Err(e) => last = format!("dial tcp {addr}: {e}"),
        }
    }
    Err(last)
}

/// A TCP connection to `host:port` within `timeout`.
pub fn tcp_socket(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    connect(host, port, timeout).map(|_| ())
}

/// Accepts any server certificate: the kubelet's prober sets `InsecureSkipVerify`.
/// Handshake signatures are still checked, so the peer holds the certificate's key.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn insecure_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The request head an HTTP probe sends.
pub fn probe_request(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> RequestHead {
    let mut head = RequestHead::new("GET", path);
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        head.headers.push("Host", authority);
    }
    if !has("user-agent") {
        head.headers.push("User-Agent", USER_AGENT);
    }
    if !has("accept") {
        head.headers.push("Accept", "*/*");
    }
    for (k, v) in headers {
        head.headers.push(k, v.as_bytes());
    }
    head.headers.push("Connection", "close");
    head
}

/// One HTTP(S) GET; a status from 200 to 399 is a success.
pub fn http_get(https: bool, host: &str, port: u16, path: &str, headers: &[(String, String)], timeout: Duration) -> Result<(), String> {
    let (sock, addr) = connect(host, port, timeout)?;
    let conn = if https {
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("server name {host:?}: {e}"))?;
        Conn::connect_tls(sock, &insecure_tls()?, name, timeout).map_err(|e| e.to_string())?
    } else {
        Conn::plain(sock).map_err(|e| e.to_string())?
    };
    let mut out = conn.write;
    out.write_all(&probe_request(host, port, path, headers).encode()).map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut input = Input::new(conn.read);
    let head = input.read_head(http::parse_response, MAX_PROBE_HEAD, timeout, timeout).map_err(|e| format!("reading from {addr}: {e}"))?;
    let head = head.ok_or_else(|| format!("{addr}: connection closed before a response"))?;
    if (200..400).contains(&head.status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {}", head.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_probes() {
        let p = parse(
            &json!({"httpGet": {"path": "healthz", "port": "http", "scheme": "HTTPS", "httpHeaders": [{"name": "X-A", "value": "1"}]}, "periodSeconds": 2, "failureThreshold": 1}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.handler, Handler::Http { https: true, host: None, port: Port::Name("http".into()), path: "/healthz".into(), headers: vec![("X-A".into(), "1".into())] });
        assert_eq!((p.initial_delay, p.period, p.timeout, p.success_threshold, p.failure_threshold), (Duration::ZERO, Duration::from_secs(2), Duration::from_secs(1), 1, 1));
        let t = parse(&json!({"tcpSocket": {"port": 8080, "host": "10.0.0.1"}, "initialDelaySeconds": 5, "timeoutSeconds": 0})).unwrap().unwrap();
        assert_eq!(t.handler, Handler::Tcp { host: Some("10.0.0.1".into()), port: Port::Number(8080) });
        assert_eq!((t.initial_delay, t.timeout, t.period), (Duration::from_secs(5), Duration::from_secs(1), Duration::from_secs(10)));
        let e = parse(&json!({"exec": {"command": ["cat", "/tmp/ready"]}})).unwrap().unwrap();
        assert_eq!(e.handler, Handler::Exec { command: vec!["cat".into(), "/tmp/ready".into()] });
        assert_eq!(parse(&Value::Null), Ok(None));
        assert!(parse(&json!({"httpGet": {"port": 1, "scheme": "FTP"}})).is_err());
        assert!(parse(&json!({"exec": {"command": []}})).is_err());
        assert!(parse(&json!({"periodSeconds": 1})).is_err());
    }

    #[test]
    fn ports() {
        let c = json!({"ports": [{"name": "http", "containerPort": 8080}]});
        assert_eq!(resolve_port(&Port::Name("http".into()), &c), Ok(8080));
        assert_eq!(resolve_port(&Port::Name("9090".into()), &c), Ok(9090));
        assert_eq!(resolve_port(&Port::Number(443), &c), Ok(443));
        assert_eq!(resolve_port(&Port::Name("grpc".into()), &c), Err("couldn't find port: \"grpc\" in container".into()));
        assert_eq!(resolve_port(&Port::Number(70000), &c), Err("invalid port number: 70000".into()));
    }

    #[test]
    fn thresholds() {
        let probe = parse(&json!({"tcpSocket": {"port": 1}, "initialDelaySeconds": 3, "periodSeconds": 1, "successThreshold": 2, "failureThreshold": 3})).unwrap().unwrap();
        let t0 = Instant::now();
        let mut t = Tracker::new(probe, t0, false);
        assert!(!t.due(t0) && t.due(t0 + Duration::from_secs(3)), "waits the initial delay");
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!t.record(true, at(3)) && !t.ok, "one success of two");
        assert!(!t.due(at(3)) && t.due(at(4)));
        assert!(t.record(true, at(4)) && t.ok, "two in a row");
        assert!(!t.record(false, at(5)) && !t.record(false, at(6)) && t.ok);
        assert!(!t.record(true, at(7)), "a success breaks the run of failures");
        assert!(!t.record(false, at(8)) && !t.record(false, at(9)) && t.record(false, at(10)) && !t.ok, "three failures in a row");
    }

    #[test]
    fn http_probe_head() {
        let h = probe_request("10.244.0.2", 8080, "/ready?x=1", &[("Host".into(), "example".into())]);
        let text = String::from_utf8(h.encode()).unwrap();
        assert!(text.starts_with("GET /ready?x=1 HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("Host: example\r\n") && !text.contains("10.244.0.2:8080"), "{text}");
        assert!(text.contains("User-Agent: kube-probe/1.20\r\n"), "{text}");
    }

    #[test]
    fn http_and_tcp_probes_against_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for (i, conn) in listener.incoming().take(3).enumerate() {
                let mut conn = conn.unwrap();
                if i == 0 {
                    continue; // the TCP probe: connect only
                }
                let mut buf = [0u8; 1024];
                let _ = std::io::Read::read(&mut conn, &mut buf);
                let status = if i == 1 { "204 No Content" } else { "503 Service Unavailable" };
                let _ = conn.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes());
            }
        });
        let t = Duration::from_secs(5);
        assert_eq!(tcp_socket("127.0.0.1", port, t), Ok(()));
        assert_eq!(http_get(false, "127.0.0.1", port, "/", &[], t), Ok(()));
        assert_eq!(http_get(false, "127.0.0.1", port, "/", &[], t), Err("HTTP probe failed with statuscode: 503".into()));
        server.join().unwrap();
        assert!(tcp_socket("127.0.0.1", port, t).is_err(), "nothing listens any more");
    }

    #[test]
    fn https_probes_skip_certificate_verification() {
        crate::net::tls::install_provider();
        // A certificate for another name, from a CA nobody trusts.
        let pem = crate::net::pki::Ca::new("untrusted").unwrap().server("elsewhere.example", &["elsewhere.example"]).unwrap();
        let chain = crate::net::tls::certs_from_pem(pem.cert.as_bytes(), "cert").unwrap();
        let key = crate::net::tls::key_from_pem(pem.key.as_bytes(), "key").unwrap();
        let config = crate::net::tls::server_config(chain, key, None).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = Conn::accept_tls(sock, &config, Duration::from_secs(5)).unwrap();
            let mut input = Input::new(conn.read);
            let head = input.read_head(http::parse_request, MAX_PROBE_HEAD, Duration::from_secs(5), Duration::from_secs(5)).unwrap().unwrap();
            let mut out = conn.write;
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
            head.target
        });
        assert_eq!(http_get(true, "127.0.0.1", port, "/healthz", &[], Duration::from_secs(5)), Ok(()));
        assert_eq!(server.join().unwrap(), "/healthz");
    }
}
