//! Where and how to reach a Kubernetes API server: from a kubeconfig (YAML or JSON)
//! or the in-cluster service account. The server certificate is always verified.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde_json::Value;

use crate::error::{Context, Error, Result};
use crate::kube::yaml;
use crate::net::conn::{Conn, Input};
use crate::net::tls;
use crate::wire::base64;
use crate::wire::http::{self, RequestHead};
use std::io::Write;

const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Connect, send and first response byte, for one control-loop request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// A list of every pod in a big cluster fits; a response beyond this is refused.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

enum Token {
    None,
    Static(String),
    /// Re-read per connection: projected service-account tokens rotate.
    File(PathBuf),
}

/// A dialable API server with the credentials to present to it.
pub struct ApiServer {
    pub host: String,
    pub port: u16,
    server_name: ServerName<'static>,
    roots: rustls::RootCertStore,
    tls: Arc<ClientConfig>,
    token: Token,
    /// Kept for `kube::rest`, whose HTTP client builds its own TLS configuration.
    pub(super) ca_pem: Vec<u8>,
    pub(super) identity: Option<Identity>,
}

type Identity = (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>);

/// Splits `https://host:port/` into host and port.
fn parse_server_url(url: &str) -> Result<(String, u16)> {
    let rest = url.strip_prefix("https://").ok_or_else(|| Error::new(format!("server {url:?}: expected an https:// URL")))?;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| Error::new(format!("server {url:?}: bad IPv6 host")))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        None => 443,
        Some(p) => p.parse().map_err(|_| Error::new(format!("server {url:?}: bad port {p:?}")))?,
    };
    if host.is_empty() {
        crate::bail!("server {url:?}: missing host");
    }
    Ok((host, port))
}

/// Bytes from `{field}-data` (base64) or the file `{field}`, relative to `base`.
fn data_or_file(obj: &Value, field: &str, base: &Path) -> Result<Option<Vec<u8>>> {
    if let Some(data) = obj.get(format!("{field}-data")).and_then(Value::as_str) {
        return base64::decode(data).map(Some).ok_or_else(|| Error::new(format!("{field}-data: bad base64")));
    }
    match obj.get(field).and_then(Value::as_str) {
        Some(path) => tls::read_file(&base.join(path)).map(Some),
        None => Ok(None),
    }
}

fn named<'a>(doc: &'a Value, list: &str, name: &str, inner: &str) -> Result<&'a Value> {
    doc.get(list)
        .and_then(Value::as_array)
        .and_then(|items| items.iter().find(|i| i.get("name").and_then(Value::as_str) == Some(name)))
        .and_then(|i| i.get(inner))
        .ok_or_else(|| Error::new(format!("{list}: no entry named {name:?}")))
}

impl ApiServer {
    /// Reads `path`, using `context` or the file's current context.
    pub fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<ApiServer> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
        let doc = yaml::parse(&text).with_context(|| format!("kubeconfig {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_kubeconfig_doc(&doc, context, base).with_context(|| format!("kubeconfig {}", path.display()))
    }

    fn from_kubeconfig_doc(doc: &Value, context: Option<&str>, base: &Path) -> Result<ApiServer> {
        let context = match context {
            Some(c) => c.to_string(),
            None => {
                doc.get("current-context").and_then(Value::as_str).filter(|c| !c.is_empty()).ok_or_else(|| Error::new("no current-context and no --context given"))?.to_string()
            }
        };
        let ctx = named(doc, "contexts", &context, "context")?;
        let cluster_name = ctx.get("cluster").and_then(Value::as_str).unwrap_or_default();
        let user_name = ctx.get("user").and_then(Value::as_str).unwrap_or_default();
        let cluster = named(doc, "clusters", cluster_name, "cluster")?;
        let user = named(doc, "users", user_name, "user").unwrap_or(&Value::Null);
        if cluster.get("insecure-skip-tls-verify").and_then(Value::as_bool) == Some(true) {
            crate::bail!("cluster {cluster_name:?}: insecure-skip-tls-verify is refused; give certificate-authority");
        }
        let server = cluster.get("server").and_then(Value::as_str).ok_or_else(|| Error::new("cluster has no server"))?;
        let ca = data_or_file(cluster, "certificate-authority", base)?.ok_or_else(|| Error::new(format!("cluster {cluster_name:?}: certificate-authority is required")))?;
        let identity = match (data_or_file(user, "client-certificate", base)?, data_or_file(user, "client-key", base)?) {
            (Some(c), Some(k)) => Some((tls::certs_from_pem(&c, "client-certificate")?, tls::key_from_pem(&k, "client-key")?)),
            (None, None) => None,
            _ => crate::bail!("user {user_name:?}: client-certificate and client-key go together"),
        };
        let token = match (user.get("token").and_then(Value::as_str), user.get("tokenFile").and_then(Value::as_str)) {
            (Some(t), _) => Token::Static(t.to_string()),
            (None, Some(f)) => Token::File(base.join(f)),
            (None, None) => Token::None,
        };
        Self::new(server, &ca, identity, token)
    }

    /// The service account of the pod this runs in.
    pub fn in_cluster() -> Result<ApiServer> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").context("KUBERNETES_SERVICE_HOST (not in a pod?)")?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let dir = Path::new(IN_CLUSTER_DIR);
        let ca = tls::read_file(&dir.join("ca.crt"))?;
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        Self::new(&format!("https://{host}:{port}"), &ca, None, Token::File(dir.join("token")))
    }

    fn new(server: &str, ca: &[u8], identity: Option<Identity>, token: Token) -> Result<ApiServer> {
        let (host, port) = parse_server_url(server)?;
        let roots = tls::roots_from_pem(ca, "certificate-authority")?;
        let server_name = ServerName::try_from(host.clone()).map_err(|e| Error::new(format!("server name {host:?}: {e}")))?;
        let kept = identity.as_ref().map(|(c, k)| (c.clone(), k.clone_key()));
        Ok(ApiServer { host, port, server_name, tls: tls::client_config(roots.clone(), identity)?, roots, token, ca_pem: ca.to_vec(), identity: kept })
    }

    /// A server (`https://host:port`) trusted by `ca`, to which we present `identity`
    /// and no token: a recorder's API, say.
    pub fn with_certificate(server: &str, ca: &[u8], identity: Identity) -> Result<ApiServer> {
        Self::new(server, ca, Some(identity), Token::None)
    }

    /// A server (`https://host:port`) trusted by `ca`, to which we present the bearer
    /// token in `token_file` (read per connection): a recorder's API, for a viewer.
    pub fn with_token_file(server: &str, ca: &[u8], token_file: PathBuf) -> Result<ApiServer> {
        Self::new(server, ca, None, Token::File(token_file))
    }

    /// The same server, reached without any credentials of ours (no client
    /// certificate, no token): for a proxy that passes its callers' credentials on.
    pub fn anonymous(self) -> Result<ApiServer> {
        Ok(ApiServer { tls: tls::client_config(self.roots.clone(), None)?, token: Token::None, identity: None, ..self })
    }

    /// Opens a verified TLS connection.
    pub fn connect(&self, timeout: Duration) -> Result<Conn> {
        let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(self.host.as_str(), self.port)).with_context(|| format!("resolving {}", self.host))?;
        let mut last = Error::new(format!("{}: no addresses", self.host));
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(sock) => {
                    return Conn::connect_tls(sock, &self.tls, self.server_name.clone(), timeout).with_context(|| format!("connecting to {addr}"));
                }
                Err(e) => last = Error::from(e),
            }
        }
        Err(last).with_context(|| format!("connecting to {}:{}", self.host, self.port))
    }

    /// The `Authorization` header value to send, if this server uses a token.
    pub fn authorization(&self) -> Result<Option<String>> {
        Ok(match &self.token {
            Token::None => None,
            Token::Static(t) => Some(format!("Bearer {t}")),
            Token::File(p) => {
                let t = std::fs::read_to_string(p).with_context(|| format!("reading token {}", p.display()))?;
                Some(format!("Bearer {}", t.trim()))
            }
        })
    }

    /// One request on a fresh connection; returns the status and the whole body.
    /// For control loops (a few requests a second), not for the proxy's data path.
    pub fn request(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        self.request_as(method, path, content_type, body, &[])
    }

    /// [`Self::request`] with more header fields (`Impersonate-*`, to ask as someone).
    pub fn request_as(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8], extra: &[(&str, String)]) -> Result<(u16, Vec<u8>)> {
        let conn = self.connect(REQUEST_TIMEOUT)?;
        let mut head = RequestHead::new(method, path);
        for (name, value) in extra {
            head.headers.push(name, value.as_bytes());
        }
        head.headers.push("Host", self.host_header());
        head.headers.push("Accept", "application/json");
        head.headers.push("User-Agent", concat!("kubetape/", env!("CARGO_PKG_VERSION")));
        head.headers.push("Connection", "close");
        if let Some(auth) = self.authorization()? {
            head.headers.push("Authorization", auth);
        }
        if let Some(ct) = content_type {
            head.headers.push("Content-Type", ct);
        }
        if !body.is_empty() || method != "GET" {
            head.headers.push("Content-Length", body.len().to_string());
        }
        let mut out = conn.write;
        out.write_all(&[head.encode(), body.to_vec()].concat()).with_context(|| format!("{method} {path}"))?;
        let mut input = Input::new(conn.read);
        let resp = input
            .read_head(http::parse_response, MAX_RESPONSE_HEAD, REQUEST_TIMEOUT, REQUEST_TIMEOUT)
            .with_context(|| format!("{method} {path}"))?
            .ok_or_else(|| Error::new(format!("{method} {path}: connection closed before a response")))?;
        let framing = http::response_body(method, &resp)?;
        let body = crate::net::body::read_to_vec(&mut input, framing, MAX_RESPONSE_BODY).with_context(|| format!("{method} {path}: reading body"))?;
        Ok((resp.status, body))
    }

    /// A JSON request; the response body parsed as JSON (`Null` when empty).
    pub fn json(&self, method: &str, path: &str, content_type: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (status, resp) = self.request(method, path, body.map(|_| content_type), &bytes)?;
        if resp.is_empty() {
            return Ok((status, Value::Null));
        }
        let v = serde_json::from_slice(&resp).with_context(|| format!("{method} {path}: response is not JSON (status {status})"))?;
        Ok((status, v))
    }

    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// How a kubeconfig user proves who it is.
pub enum Credential<'a> {
    Cert(&'a crate::net::pki::Pem),
    Token(&'a str),
}

/// A kubeconfig (YAML) for `user` against `server`, trusting `ca_pem`.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, cred: Credential<'_>) -> String {
    let user_fields = match cred {
        Credential::Cert(pem) => format!("    client-certificate-data: {}\n    client-key-data: {}\n", base64::encode(pem.cert.as_bytes()), base64::encode(pem.key.as_bytes())),
        Credential::Token(t) => format!("    token: {t}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubetape\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n{user_fields}contexts:\n- name: {user}@kubetape\n  context:\n    cluster: kubetape\n    user: {user}\n    namespace: default\ncurrent-context: {user}@kubetape\npreferences: {{}}\n",
        ca = base64::encode(ca_pem.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_kubeconfigs_read_back() {
        crate::net::tls::install_provider();
        let ca = crate::net::pki::Ca::new("test-ca").unwrap();
        let alice = ca.client("alice", &["sre"]).unwrap();
        for cred in [Credential::Cert(&alice), Credential::Token("t0k")] {
            let text = kubeconfig("https://127.0.0.1:6443", &ca.cert_pem, "alice", cred);
            let doc = yaml::parse(&text).unwrap();
            let api = ApiServer::from_kubeconfig_doc(&doc, None, Path::new(".")).unwrap();
            assert_eq!((api.host.as_str(), api.port), ("127.0.0.1", 6443));
        }
    }

    #[test]
    fn server_urls() {
        assert_eq!(parse_server_url("https://127.0.0.1:6443").unwrap(), ("127.0.0.1".into(), 6443));
        assert_eq!(parse_server_url("https://[::1]:8443/x").unwrap(), ("::1".into(), 8443));
        assert_eq!(parse_server_url("https://k8s.local").unwrap(), ("k8s.local".into(), 443));
        assert!(parse_server_url("http://x:1").is_err());
        assert!(parse_server_url("https://x:y").is_err());
    }
}
