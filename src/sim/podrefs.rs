//! What a pod's spec refers to beyond itself, as the kubelet resolves it: Secrets and
//! ConfigMaps by name (`secretKeyRef`, `envFrom`, secret and configMap volumes),
//! service-account tokens (the TokenRequest API, for projected volumes), and the
//! pod's own fields (`fieldRef`, downward API). The resolving functions are pure and
//! take the objects through [`Objects`]; [`ApiObjects`] is the one implementation that
//! asks a real API server (one GET per object per sync, tokens kept until 80% of
//! their lifetime has passed, as the kubelet's token manager keeps them).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::kube::client::ApiServer;
use crate::wire::base64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Secret,
    ConfigMap,
}

impl Kind {
    /// The resource, as the API server names it in paths and in "not found" errors.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Secret => "secrets",
            Kind::ConfigMap => "configmaps",
        }
    }

    /// The kind as the kubelet's messages name it (`couldn't find key K in Secret NS/N`).
    pub fn title(self) -> &'static str {
        match self {
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
        }
    }
}

/// What only the kubelet knows about a pod when it starts it: its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNet {
    pub pod_ip: String,
    pub host_ip: String,
}

/// Where a pod's references are looked up.
pub trait Objects {
    /// The Secret or ConfigMap `name` in the pod's namespace; `Ok(None)` when it does
    /// not exist, `Err` when it could not be read.
    fn get(&mut self, kind: Kind, name: &str) -> Result<Option<Value>, String>;
    /// A token for the pod's service account, bound to the pod.
    fn token(&mut self, audience: Option<&str>, expiration_seconds: u64) -> Result<String, String>;
}

/// The error the API server gives for a missing object, which the kubelet passes on.
pub fn not_found(kind: Kind, name: &str) -> String {
    format!("{} \"{name}\" not found", kind.resource())
}

/// A Secret's `data` (base64) or a ConfigMap's `data` and `binaryData`, by key.
/// `text_only` leaves out a ConfigMap's `binaryData`, as `envFrom` does.
pub fn object_data(kind: Kind, obj: &Value, text_only: bool) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    match kind {
        Kind::Secret => {
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                let bytes = v.as_str().and_then(base64::decode).ok_or_else(|| format!("secret {name:?} key {k:?}: expected base64"))?;
                out.insert(k.clone(), bytes);
            }
        }
        Kind::ConfigMap => {
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                out.insert(k.clone(), v.as_str().unwrap_or_default().as_bytes().to_vec());
            }
            if !text_only {
                for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
                    let bytes = v.as_str().and_then(base64::decode).ok_or_else(|| format!("configmap {name:?} binaryData {k:?}: expected base64"))?;
                    out.insert(k.clone(), bytes);
                }
            }
        }
    }
    Ok(out)
}

/// Go's `%q` for the strings a label or annotation holds.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A whole label or annotation map as the downward API writes it: `k="v"` lines in
/// key order, no final newline (`fieldpath.FormatMap`).
fn format_map(m: &Value) -> String {
    let sorted: BTreeMap<&String, &str> = m.as_object().into_iter().flatten().map(|(k, v)| (k, v.as_str().unwrap_or_default())).collect();
    sorted.iter().map(|(k, v)| format!("{k}={}", go_quote(v))).collect::<Vec<_>>().join("\n")
}

/// `metadata.labels['k']` → (`metadata.labels`, `k`), as `fieldpath.SplitMaybeSubscriptedPath`.
fn split_subscript(path: &str) -> (&str, Option<&str>) {
    if let Some(rest) = path.strip_suffix("']") {
        if let Some((base, key)) = rest.split_once("['") {
            return (base, Some(key));
        }
    }
    (path, None)
}

/// A `fieldRef`'s value. With `net` (environment variables) the `spec` and `status`
/// fields are allowed too, as in `podFieldSelectorRuntimeValue`; without it (downward
/// API volumes) only `metadata` ones, as in `fieldpath.ExtractFieldPathAsString`.
pub fn field_ref(pod: &Value, path: &str, net: Option<&PodNet>) -> Result<String, String> {
    let meta = &pod["metadata"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    if let Some(net) = net {
        match path {
            "spec.nodeName" => return Ok(text(&pod["spec"]["nodeName"])),
            "spec.serviceAccountName" => return Ok(text(&pod["spec"]["serviceAccountName"])),
            "status.hostIP" => return Ok(net.host_ip.clone()),
            "status.podIP" => return Ok(net.pod_ip.clone()),
            // One address per family; this simulator gives one IPv4 address.
            "status.podIPs" => return Ok(net.pod_ip.clone()),
            _ => {}
        }
    }
    match split_subscript(path) {
        ("metadata.annotations", Some(k)) => Ok(text(&meta["annotations"][k])),
        ("metadata.labels", Some(k)) => Ok(text(&meta["labels"][k])),
        ("metadata.annotations", None) => Ok(format_map(&meta["annotations"])),
        ("metadata.labels", None) => Ok(format_map(&meta["labels"])),
        ("metadata.name", None) => Ok(text(&meta["name"])),
        ("metadata.namespace", None) => Ok(text(&meta["namespace"])),
        ("metadata.uid", None) => Ok(text(&meta["uid"])),
        _ => Err(format!("unsupported fieldPath: {path}")),
    }
}

/// A requested token is renewed after this share of its lifetime, as the kubelet does.
const TOKEN_REFRESH_PERCENT: u32 = 80;
const TOKEN_REQUEST_API: &str = "authentication.k8s.io/v1";

/// Tokens a pod's projected volumes hold, by (audience, expirationSeconds); kept
/// across syncs.
#[derive(Default)]
pub struct TokenCache {
    tokens: HashMap<(Option<String>, u64), (String, Instant)>,
}

/// The objects of one pod's namespace, read from the API server once per sync.
pub struct ApiObjects<'a> {
    pub api: &'a ApiServer,
    pub pod: &'a Value,
    pub tokens: &'a mut TokenCache,
    cache: HashMap<(Kind, String), Option<Value>>,
}

impl<'a> ApiObjects<'a> {
    pub fn new(api: &'a ApiServer, pod: &'a Value, tokens: &'a mut TokenCache) -> Self {
        ApiObjects { api, pod, tokens, cache: HashMap::new() }
    }

    fn namespace(&self) -> &str {
        self.pod["metadata"]["namespace"].as_str().unwrap_or("default")
    }
}

impl Objects for ApiObjects<'_> {
    fn get(&mut self, kind: Kind, name: &str) -> Result<Option<Value>, String> {
        if let Some(v) = self.cache.get(&(kind, name.to_string())) {
            return Ok(v.clone());
        }
        let path = format!("/api/v1/namespaces/{}/{}/{name}", self.namespace(), kind.resource());
        let (code, obj) = self.api.json("GET", &path, "", None).map_err(|e| format!("reading {} {name:?}: {e}", kind.resource()))?;
        let found = match code {
            200 => Some(obj),
            404 => None,
            _ => return Err(format!("reading {} {name:?}: status {code}: {}", kind.resource(), obj["message"].as_str().unwrap_or_default())),
        };
        self.cache.insert((kind, name.to_string()), found.clone());
        Ok(found)
    }

    fn token(&mut self, audience: Option<&str>, expiration_seconds: u64) -> Result<String, String> {
        let key = (audience.map(String::from), expiration_seconds);
        if let Some((token, renew_at)) = self.tokens.tokens.get(&key) {
            if Instant::now() < *renew_at {
                return Ok(token.clone());
            }
        }
        let meta = &self.pod["metadata"];
        let sa = self.pod["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
        let mut spec = json!({
            "expirationSeconds": expiration_seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
        });
        if let Some(a) = audience {
            spec["audiences"] = json!([a]);
        }
        let body = json!({"apiVersion": TOKEN_REQUEST_API, "kind": "TokenRequest", "spec": spec});
        let path = format!("/api/v1/namespaces/{}/serviceaccounts/{sa}/token", self.namespace());
        let (code, resp) = self.api.json("POST", &path, "application/json", Some(&body)).map_err(|e| format!("requesting a token for serviceaccount {sa:?}: {e}"))?;
        if code != 201 && code != 200 {
            return Err(format!("requesting a token for serviceaccount {sa:?}: status {code}: {}", resp["message"].as_str().unwrap_or_default()));
        }
        let token = resp["status"]["token"].as_str().ok_or_else(|| format!("token request for serviceaccount {sa:?}: no status.token in the answer"))?.to_string();
        let lifetime = Duration::from_secs(expiration_seconds) * TOKEN_REFRESH_PERCENT / 100;
        self.tokens.tokens.insert(key, (token.clone(), Instant::now() + lifetime));
        Ok(token)
    }
}

/// [`Objects`] from fixed values, for tests.
#[cfg(test)]
pub struct FixedObjects {
    pub objects: HashMap<(Kind, String), Value>,
    pub token: String,
    pub gets: usize,
}

#[cfg(test)]
impl FixedObjects {
    pub fn new(objects: &[(Kind, Value)]) -> Self {
        let objects = objects.iter().map(|(k, v)| ((*k, v["metadata"]["name"].as_str().unwrap_or_default().to_string()), v.clone())).collect();
        FixedObjects { objects, token: "token-for-test".into(), gets: 0 }
    }
}

#[cfg(test)]
impl Objects for FixedObjects {
    fn get(&mut self, kind: Kind, name: &str) -> Result<Option<Value>, String> {
        self.gets += 1;
        Ok(self.objects.get(&(kind, name.to_string())).cloned())
    }

    fn token(&mut self, audience: Option<&str>, expiration_seconds: u64) -> Result<String, String> {
        Ok(format!("{}:{}:{expiration_seconds}", self.token, audience.unwrap_or("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "web-0", "namespace": "rec", "uid": "u-1",
                         "labels": {"app": "web", "tier": "a\"b"}, "annotations": {"note": "x"}},
            "spec": {"nodeName": "node-1", "serviceAccountName": "recorder"}
        })
    }

    #[test]
    fn field_refs() {
        let net = PodNet { pod_ip: "10.244.0.2".into(), host_ip: "127.0.0.1".into() };
        let p = pod();
        let cases = [
            ("metadata.name", Some(&net), Ok("web-0")),
            ("metadata.namespace", None, Ok("rec")),
            ("metadata.uid", None, Ok("u-1")),
            ("metadata.labels['app']", None, Ok("web")),
            ("metadata.labels['missing']", None, Ok("")),
            ("metadata.annotations['note']", None, Ok("x")),
            ("metadata.labels", None, Ok("app=\"web\"\ntier=\"a\\\"b\"")),
            ("spec.nodeName", Some(&net), Ok("node-1")),
            ("spec.serviceAccountName", Some(&net), Ok("recorder")),
            ("status.podIP", Some(&net), Ok("10.244.0.2")),
            ("status.podIPs", Some(&net), Ok("10.244.0.2")),
            ("status.hostIP", Some(&net), Ok("127.0.0.1")),
            ("status.podIP", None, Err("unsupported fieldPath: status.podIP")),
            ("spec.containers", Some(&net), Err("unsupported fieldPath: spec.containers")),
        ];
        for (path, net, want) in cases {
            assert_eq!(field_ref(&p, path, net).as_deref(), want.map_err(String::from).as_deref(), "{path}");
        }
    }

    #[test]
    fn data_of_objects() {
        let secret = json!({"metadata": {"name": "s"}, "data": {"a": "aGk=", "b": ""}});
        let got = object_data(Kind::Secret, &secret, false).unwrap();
        assert_eq!(got.get("a").map(Vec::as_slice), Some(&b"hi"[..]));
        assert_eq!(got.get("b").map(Vec::as_slice), Some(&b""[..]));
        assert!(object_data(Kind::Secret, &json!({"metadata": {"name": "s"}, "data": {"a": "!!"}}), false).is_err());
        let cm = json!({"metadata": {"name": "c"}, "data": {"t": "text"}, "binaryData": {"bin": "AAE="}});
        assert_eq!(object_data(Kind::ConfigMap, &cm, false).unwrap().get("bin").map(Vec::as_slice), Some(&[0u8, 1][..]));
        assert!(!object_data(Kind::ConfigMap, &cm, true).unwrap().contains_key("bin"));
    }
}
