//! API request events: one record per request through the proxy, written when the
//! request is received (stage `RequestReceived`) and when its response is complete
//! (stage `ResponseComplete`), both with the id the proxy also sends upstream as
//! `Audit-ID`. Also the mapping to `audit.k8s.io/v1` Event for existing audit tools.
//!
//! ```json
//! {"id":"7f0c...","stage":"ResponseComplete","received":"2026-11-25T22:00:00.123Z",
//!  "completed":"2026-11-25T22:00:00.131Z","latencyMs":8.1,"verb":"list","apiGroup":"",
//!  "apiVersion":"v1","resource":"pods","subresource":"","namespace":"default","name":"",
//!  "method":"GET","path":"/api/v1/namespaces/default/pods","query":"limit=500",
//!  "status":200,"responseBytes":1432,"userAgent":"kubectl/v1.32.4 ...","sourceAddress":"127.0.0.1",
//!  "user":{"name":"alice","groups":["sre"],"authenticatedBy":"x509"},
//!  "impersonated":{"user":"alice","groups":["sre","system:masters"]},"sessionId":null,"proxy":"p1"}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What a request does in Kubernetes terms, as kube-apiserver's `RequestInfoFactory`
/// derives it (`kube::request_info` derives it here).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RequestInfo {
    pub is_resource_request: bool,
    pub verb: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventUser {
    pub name: String,
    pub groups: Vec<String>,
    pub authenticated_by: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Impersonated {
    pub user: String,
    /// A token user's uid, impersonated too (`Impersonate-Uid`); empty for certificates.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    pub groups: Vec<String>,
}

/// Empty strings and absent values are left out of the JSON (smaller events, less to
/// fsync); readers get them back as defaults.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ApiEvent {
    pub id: String,
    pub stage: String,
    pub received: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// verb, apiGroup, apiVersion, resource, subresource, namespace, name.
    #[serde(flatten)]
    pub request: RequestInfo,
    pub method: String,
    pub path: String,
    pub query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
    pub user_agent: String,
    pub source_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<EventUser>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonated: Option<Impersonated>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub proxy: String,
    /// Level `Request` only: the body as text (base64 with `requestBodyBase64` when it
    /// is not UTF-8), cut at the policy's `maxBodyBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request_body_base64: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request_body_truncated: bool,
    /// Empty for a request's own events; [`FILE_TRANSFER`] or [`PORT_FORWARD`] for
    /// what an upgraded stream carried, sent once it ends (stage [`STREAM_COMPLETE`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_transfer: Option<FileTransfer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_forward: Option<PortForward>,
}

/// A `kubectl cp`: its direction, the paths in the pod, and the regular files its tar
/// carried (names and sizes only; the contents of an upload are never kept).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct FileTransfer {
    /// `download` (the pod's tar on stdout) or `upload` (the client's on stdin).
    pub direction: String,
    /// Download: what tar archives; upload: the directory it extracts into.
    pub paths: Vec<String>,
    /// The first files, in archive order, up to `recording::tar::MAX_ENTRIES`.
    pub files: Vec<FileEntry>,
    /// Regular files seen, listed or not, and their total size.
    pub file_count: u64,
    pub total_bytes: u64,
    /// Entries or names were cut, the archive could not be read to its end, or the
    /// stream stopped being read before it.
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
}

/// A port-forward: the ports asked for and the bytes each way, counted as the stream
/// passed (payloads are never kept), and how long it lasted.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct PortForward {
    pub ports: Vec<PortBytes>,
    pub duration_ms: u64,
    /// The stream could not be parsed to its end: counts stop there (`reason` says why).
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct PortBytes {
    pub port: u16,
    /// Connections opened to the port (one stream pair each).
    pub connections: u64,
    pub bytes_to_pod: u64,
    pub bytes_from_pod: u64,
}

pub const RECEIVED: &str = "RequestReceived";
pub const COMPLETE: &str = "ResponseComplete";
/// The stage of what an upgraded stream carried, sent when the stream ends.
pub const STREAM_COMPLETE: &str = "StreamComplete";
pub const FILE_TRANSFER: &str = "FileTransfer";
pub const PORT_FORWARD: &str = "PortForward";

impl ApiEvent {
    pub fn received(id: String, info: &RequestInfo, method: &str, path: &str, query: &str) -> ApiEvent {
        ApiEvent {
            id,
            stage: RECEIVED.into(),
            received: crate::wire::time::now_rfc3339_millis(),
            request: info.clone(),
            method: method.into(),
            path: path.into(),
            query: query.into(),
            ..ApiEvent::default()
        }
    }

    /// Turns the received event into its completion.
    pub fn complete(&mut self, status: u16, bytes: u64, latency_ms: f64) {
        self.stage = COMPLETE.into();
        self.completed = Some(crate::wire::time::now_rfc3339_millis());
        // To the microsecond: the clock says no more, and JSON shows no float noise.
        self.latency_ms = Some((latency_ms * 1000.0).round() / 1000.0);
        self.status = Some(status);
        self.response_bytes = Some(bytes);
    }

    /// The event for what this request's upgraded stream carried (`kind`), sent when
    /// it ends: the request's own fields, completed now, without its body.
    pub fn stream_event(&self, kind: &str) -> ApiEvent {
        ApiEvent {
            stage: STREAM_COMPLETE.into(),
            kind: kind.into(),
            completed: Some(crate::wire::time::now_rfc3339_millis()),
            latency_ms: None,
            request_body: None,
            request_body_base64: false,
            request_body_truncated: false,
            ..self.clone()
        }
    }

    /// Keeps a captured request body.
    pub fn set_body(&mut self, body: &[u8], truncated: bool) {
        match std::str::from_utf8(body) {
            Ok(text) => self.request_body = Some(text.to_string()),
            Err(_) => {
                self.request_body = Some(crate::wire::base64::encode(body));
                self.request_body_base64 = true;
            }
        }
        self.request_body_truncated = truncated;
    }

    /// Whether the event matches the API's query filters.
    pub fn matches(&self, user: Option<&str>, verb: Option<&str>, resource: Option<&str>, namespace: Option<&str>, since: Option<&str>, until: Option<&str>) -> bool {
        let r = &self.request;
        user.is_none_or(|u| self.user.as_ref().is_some_and(|x| x.name == u))
            && verb.is_none_or(|v| r.verb == v)
            && resource.is_none_or(|x| r.resource == x || format!("{}/{}", r.resource, r.subresource) == x)
            && namespace.is_none_or(|n| r.namespace == n)
            && since.is_none_or(|s| self.received.as_str() >= s)
            && until.is_none_or(|u| self.received.as_str() <= u)
    }

    /// The `audit.k8s.io/v1` Event for this record (level Metadata).
    pub fn to_audit(&self) -> Value {
        let r = &self.request;
        let user = self.user.as_ref().map(|u| json!({"username": u.name, "groups": u.groups, "extra": {"kubetape.dev/authenticated-by": [u.authenticated_by]}}));
        let mut ev = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": self.id,
            "stage": self.stage,
            "requestURI": if self.query.is_empty() { self.path.clone() } else { format!("{}?{}", self.path, self.query) },
            "verb": r.verb,
            "user": user.unwrap_or_else(|| json!({"username": "system:anonymous"})),
            "sourceIPs": [self.source_address],
            "userAgent": self.user_agent,
            "requestReceivedTimestamp": self.received,
            "stageTimestamp": self.completed.clone().unwrap_or_else(|| self.received.clone()),
            "annotations": {"kubetape.dev/proxy": self.proxy},
        });
        if let Some(imp) = &self.impersonated {
            ev["impersonatedUser"] = json!({"username": imp.user, "groups": imp.groups});
        }
        if !r.resource.is_empty() {
            let mut o = json!({"resource": r.resource, "namespace": r.namespace, "name": r.name, "apiGroup": r.api_group, "apiVersion": r.api_version});
            if !r.subresource.is_empty() {
                o["subresource"] = json!(r.subresource);
            }
            ev["objectRef"] = o;
        }
        if let Some(code) = self.status {
            ev["responseStatus"] = json!({"metadata": {}, "code": code});
        }
        if let Some(s) = &self.session_id {
            ev["annotations"]["kubetape.dev/session-id"] = json!(s);
        }
        // Audit annotations are strings: what a stream carried goes as its JSON.
        let carried = [
            ("kubetape.dev/file-transfer", self.file_transfer.as_ref().map(serde_json::to_string)),
            ("kubetape.dev/port-forward", self.port_forward.as_ref().map(serde_json::to_string)),
        ];
        for (key, value) in carried {
            if let Some(Ok(v)) = value {
                ev["annotations"][key] = json!(v);
            }
        }
        if !self.kind.is_empty() {
            ev["annotations"]["kubetape.dev/kind"] = json!(self.kind);
        }
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::request_info::request_info;

    #[test]
    fn audit_mapping() {
        let info = request_info("GET", "/api/v1/namespaces/default/pods/web-0/log", "follow=true");
        let mut ev = ApiEvent::received("abc".into(), &info, "GET", "/api/v1/namespaces/default/pods/web-0/log", "follow=true");
        ev.user = Some(EventUser { name: "alice".into(), groups: vec!["sre".into()], authenticated_by: "x509".into() });
        ev.complete(200, 10, 1.5);
        let done = ev;
        let a = done.to_audit();
        assert_eq!(a["auditID"], "abc");
        assert_eq!(a["stage"], "ResponseComplete");
        assert_eq!(a["verb"], "get");
        assert_eq!(a["objectRef"]["subresource"], "log");
        assert_eq!(a["responseStatus"]["code"], 200);
        assert_eq!(a["user"]["username"], "alice");
        assert!(done.matches(Some("alice"), Some("get"), Some("pods/log"), Some("default"), None, None));
        assert!(!done.matches(Some("bob"), None, None, None, None, None));
        let mut pf = done.stream_event(PORT_FORWARD);
        pf.port_forward = Some(PortForward { ports: vec![PortBytes { port: 80, connections: 1, bytes_to_pod: 3, bytes_from_pod: 4 }], duration_ms: 5, ..Default::default() });
        let a = pf.to_audit();
        assert_eq!((a["stage"].as_str(), a["annotations"]["kubetape.dev/kind"].as_str()), (Some(STREAM_COMPLETE), Some(PORT_FORWARD)));
        let carried: PortForward = serde_json::from_str(a["annotations"]["kubetape.dev/port-forward"].as_str().unwrap()).unwrap();
        assert_eq!(Some(carried), pf.port_forward);
        let line = serde_json::to_string(&pf).unwrap();
        assert!(line.contains(r#""kind":"PortForward""#) && line.contains(r#""bytesToPod":3"#), "{line}");
        assert_eq!(serde_json::from_str::<ApiEvent>(&line).unwrap(), pf, "stored and read back whole");
        assert!(!serde_json::to_string(&done).unwrap().contains("kind"), "a request's own events have no kind");
    }
}
