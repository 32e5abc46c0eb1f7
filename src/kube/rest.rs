//! The Kubernetes REST calls of the control loops (the operator's reconcile loop, the
//! proxy's recorder discovery), over ureq with connection reuse. Answers are JSON;
//! an error status comes back as a [`Failure`] carrying the API server's `Status`
//! reason and message, so a caller can tell a conflict from a missing object.

use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::kube::client::ApiServer;

/// Connect, send and read one answer: a control loop never waits longer than this.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// A list bigger than this is refused rather than read into memory.
const MAX_BODY: u64 = 64 * 1024 * 1024;

pub const MERGE_PATCH: &str = "application/merge-patch+json";

/// A non-2xx answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: u16,
    /// The `Status` object's `reason` (`AlreadyExists`, `Conflict`, `Invalid`...).
    pub reason: String,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status {} {}: {}", self.code, self.reason, self.message)
    }
}

/// What a call gives: the object, or the API server's refusal, or a transport error.
pub type Answer = std::result::Result<Value, CallError>;

#[derive(Debug)]
pub enum CallError {
    Refused(Failure),
    Transport(Error),
}

impl CallError {
    pub fn code(&self) -> Option<u16> {
        match self {
            CallError::Refused(f) => Some(f.code),
            CallError::Transport(_) => None,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused(x) => x.fmt(f),
            CallError::Transport(e) => e.fmt(f),
        }
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Error {
        Error::new(e.to_string())
    }
}

pub struct Rest {
    agent: ureq::Agent,
    base: String,
    api: ApiServer,
}

impl Rest {
    pub fn new(api: ApiServer) -> Result<Rest> {
        let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&api.ca_pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if roots.is_empty() {
            crate::bail!("certificate-authority: no certificate in it");
        }
        let client_cert = match &api.identity {
            Some((chain, key)) => {
                let chain: Vec<_> = chain.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect();
                // ureq takes a key from PEM (its key kinds are not public): re-wrap the DER.
                let label = match key {
                    rustls::pki_types::PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
                    rustls::pki_types::PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
                    _ => "PRIVATE KEY",
                };
                let pem = format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", crate::wire::base64::encode(key.secret_der()));
                let key = ureq::tls::PrivateKey::from_pem(pem.as_bytes()).map_err(|e| Error::new(format!("client-key: {e}")))?;
                Some(ureq::tls::ClientCert::new_with_certs(&chain, key))
            }
            None => None,
        };
        let tls =
            ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls).root_certs(ureq::tls::RootCerts::new_with_certs(&roots)).client_cert(client_cert).build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            // The API server is reached directly, whatever HTTPS_PROXY says.
            .proxy(None)
            .https_only(true)
            .timeout_global(Some(CALL_TIMEOUT))
            .user_agent(concat!("kubetape/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Rest { base: format!("https://{}", api.host_header()), agent, api })
    }

    /// GET; `Ok(None)` when the object does not exist.
    pub fn get(&self, path: &str) -> std::result::Result<Option<Value>, CallError> {
        match self.call("GET", path, None, None) {
            Ok(v) => Ok(Some(v)),
            Err(CallError::Refused(f)) if f.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn create(&self, collection: &str, obj: &Value) -> Answer {
        self.call("POST", collection, Some(obj), Some("application/json"))
    }

    /// PUT: `obj` must carry the `resourceVersion` it was read at (a conflict otherwise).
    pub fn replace(&self, path: &str, obj: &Value) -> Answer {
        self.call("PUT", path, Some(obj), Some("application/json"))
    }

    pub fn merge_patch(&self, path: &str, patch: &Value) -> Answer {
        self.call("PATCH", path, Some(patch), Some(MERGE_PATCH))
    }

    /// DELETE with `propagationPolicy`; a missing object is not an error.
    pub fn delete(&self, path: &str, propagation: &str) -> std::result::Result<(), CallError> {
        let body = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation});
        match self.call("DELETE", path, Some(&body), Some("application/json")) {
            Ok(_) => Ok(()),
            Err(CallError::Refused(f)) if f.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>, content_type: Option<&str>) -> Answer {
        let transport = |e: ureq::Error| CallError::Transport(Error::new(format!("{method} {path}: {e}")));
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url).header("Accept", "application/json");
        if let Some(auth) = self.api.authorization().map_err(CallError::Transport)? {
            req = req.header("Authorization", auth);
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let req = req.body(bytes).map_err(|e| CallError::Transport(Error::new(format!("{method} {path}: {e}"))))?;
        let mut resp = self.agent.run(req).map_err(transport)?;
        let code = resp.status().as_u16();
        let text = resp.body_mut().with_config().limit(MAX_BODY).read_to_string().map_err(transport)?;
        let value: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if (200..300).contains(&code) {
            return Ok(value);
        }
        let field = |k: &str| value.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        Err(CallError::Refused(Failure { code, reason: field("reason"), message: field("message") }))
    }
}
