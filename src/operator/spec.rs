//! The `Recorder` resource (`recorders.kubetape.dev/v1alpha1`) as the operator reads
//! it, and the checks its schema cannot express (it must load on Kubernetes 1.20, so
//! no CEL): what fails here becomes the `Ready=False, reason Invalid` condition with
//! the field and what is wrong, never an unreadable admission error.

use serde::Deserialize;
use serde_json::Value;

use super::quantity;

pub use crate::kube::recorders::{DEFAULT_TAG, GROUP, VERSION};

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecorderSpec {
    /// `None` is 1: the schema defaults it, and an old object may lack it.
    pub replicas: Option<i64>,
    #[serde(default)]
    pub storage: Storage,
    pub tags: Option<Vec<String>>,
    #[serde(default, rename = "enableUI")]
    pub enable_ui: bool,
    pub image: Option<String>,
    pub image_pull_policy: Option<String>,
    pub resources: Option<Value>,
    #[serde(default)]
    pub pod: PodOverrides,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    pub filesystem: Option<Filesystem>,
    pub s3: Option<S3>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Filesystem {
    /// A claim per replica; without it the recordings live in an emptyDir.
    pub persistent_volume_claim: Option<Claim>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    pub size: String,
    pub storage_class_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3 {
    #[serde(default)]
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub prefix: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    /// A Secret in the Recorder's namespace with `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (and optionally `AWS_SESSION_TOKEN`); without it the
    /// recorder uses its pod's identity (for example IRSA through the service
    /// account's annotations).
    pub credentials_secret: Option<String>,
    pub ca: Option<CaSource>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaSource {
    pub secret: Option<KeyRef>,
    pub config_map: Option<KeyRef>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default)]
    pub labels: serde_json::Map<String, Value>,
    #[serde(default)]
    pub annotations: serde_json::Map<String, Value>,
    pub node_selector: Option<Value>,
    pub tolerations: Option<Value>,
    pub affinity: Option<Value>,
    pub security_context: Option<Value>,
    pub container_security_context: Option<Value>,
    #[serde(default)]
    pub service_account: ServiceAccount,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ServiceAccount {
    #[serde(default)]
    pub annotations: serde_json::Map<String, Value>,
}

impl RecorderSpec {
    pub fn replicas(&self) -> i64 {
        self.replicas.unwrap_or(1)
    }

    pub fn tags(&self) -> Vec<String> {
        self.tags.clone().unwrap_or_else(|| vec![DEFAULT_TAG.to_string()])
    }

    pub fn storage_kind(&self) -> &'static str {
        match (&self.storage.s3, &self.storage.filesystem) {
            (Some(_), _) => "s3",
            (None, Some(Filesystem { persistent_volume_claim: Some(_) })) => "pvc",
            _ => "emptyDir",
        }
    }

    /// What the schema cannot say, as `field: what is wrong`.
    pub fn problems(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        // The StatefulSet's pods are `<name>-<ordinal>` and its Services
        // `<name>-replicas`: all must stay valid DNS labels.
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            out.push(format!("metadata.name: {name:?} must be a DNS label (lower-case letters, digits and dashes: it names the replicas' pods and host names)"));
        }
        if name.len() > MAX_NAME {
            out.push(format!("metadata.name: at most {MAX_NAME} characters (the replicas' host names are built from it), found {}", name.len()));
        }
        let replicas = self.replicas();
        if !(0..=MAX_REPLICAS).contains(&replicas) {
            out.push(format!("spec.replicas: expected 0 to {MAX_REPLICAS}, found {replicas}"));
        }
        if replicas > 1 && self.storage.s3.is_none() {
            out.push(format!("spec.replicas: {replicas} replicas need spec.storage.s3 (on a filesystem each replica would hold only a part of the recordings)"));
        }
        if self.storage.s3.is_some() && self.storage.filesystem.is_some() {
            out.push("spec.storage: give filesystem or s3, not both".into());
        }
        if let Some(s3) = &self.storage.s3 {
            if s3.bucket.is_empty() {
                out.push("spec.storage.s3.bucket: required".into());
            }
            if let Some(e) = &s3.endpoint {
                if !(e.starts_with("https://") || e.starts_with("http://")) {
                    out.push(format!("spec.storage.s3.endpoint: expected an http:// or https:// URL, found {e:?}"));
                }
            }
            if let Some(ca) = &s3.ca {
                if ca.secret.is_some() == ca.config_map.is_some() {
                    out.push("spec.storage.s3.ca: give exactly one of secret or configMap".into());
                }
            }
        }
        if let Some(Filesystem { persistent_volume_claim: Some(c) }) = &self.storage.filesystem {
            if !quantity::positive(&c.size) {
                out.push(format!("spec.storage.filesystem.persistentVolumeClaim.size: expected a quantity such as 10Gi, found {:?}", c.size));
            }
        }
        if let Some(r) = &self.resources {
            out.extend(resources_problems(r));
        }
        for t in self.tags() {
            if !tag_ok(&t) {
                out.push(format!("spec.tags: {t:?} is not tag:NAME (a letter, then letters, digits and dashes)"));
            }
        }
        if let Some(p) = &self.image_pull_policy {
            if !matches!(p.as_str(), "Always" | "IfNotPresent" | "Never") {
                out.push(format!("spec.imagePullPolicy: expected Always, IfNotPresent or Never, found {p:?}"));
            }
        }
        for (k, _) in self.pod.labels.iter().filter(|(k, _)| k.starts_with("app.kubernetes.io/")) {
            out.push(format!("spec.pod.labels: {k:?} is set by the operator (it selects the replicas)"));
        }
        out
    }
}

/// 63 (a DNS label) less `-replicas`.
const MAX_NAME: usize = 54;
/// More replicas than this is a typo, not a plan.
const MAX_REPLICAS: i64 = 32;

fn tag_ok(t: &str) -> bool {
    let Some(name) = t.strip_prefix("tag:") else { return false };
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// `spec.resources` as a container's: `requests` and `limits`, each of quantities.
fn resources_problems(r: &Value) -> Vec<String> {
    let Some(r) = r.as_object() else { return vec![format!("spec.resources: expected requests and limits, found {r}")] };
    let mut out = Vec::new();
    for (part, amounts) in r {
        let Some(amounts) = amounts.as_object().filter(|_| part == "requests" || part == "limits") else {
            out.push(format!("spec.resources.{part}: expected requests or limits, each a map of quantities"));
            continue;
        };
        for (name, q) in amounts {
            // The API server takes a bare number as well as a string.
            let text = q.as_str().map(String::from).or_else(|| q.as_number().map(|n| n.to_string()));
            if text.is_none_or(|t| quantity::parse(&t).is_none_or(|v| v < 0)) {
                out.push(format!("spec.resources.{part}.{name}: expected a quantity such as 500m or 64Mi, found {q}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> RecorderSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_quickstart_spec_is_valid() {
        let s = spec(serde_json::json!({}));
        assert_eq!((s.replicas(), s.tags(), s.storage_kind()), (1, vec!["tag:k8s".to_string()], "emptyDir"));
        assert!(s.problems("main").is_empty());
    }

    #[test]
    fn replicas_on_a_filesystem_are_refused_with_the_reason() {
        let p = spec(serde_json::json!({"replicas": 2})).problems("main");
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("spec.storage.s3"), "{p:?}");
        assert!(spec(serde_json::json!({"replicas": 2, "storage": {"s3": {"bucket": "b"}}})).problems("main").is_empty());
    }

    #[test]
    fn what_the_schema_cannot_check() {
        let bad = spec(serde_json::json!({
            "replicas": 40, "tags": ["k8s", "tag:9x", "tag:ok-1"], "imagePullPolicy": "Sometimes",
            "storage": {"s3": {"bucket": "", "endpoint": "s3.local", "ca": {}}, "filesystem": {}},
            "pod": {"labels": {"app.kubernetes.io/instance": "x", "team": "a"}}
        }));
        let p = bad.problems(&"r".repeat(60)).join("\n");
        for needle in [
            "metadata.name",
            "spec.replicas: expected 0 to 32",
            "not both",
            "bucket: required",
            "endpoint",
            "exactly one",
            "\"k8s\"",
            "\"tag:9x\"",
            "Sometimes",
            "app.kubernetes.io/instance",
        ] {
            assert!(p.contains(needle), "{needle} missing from:\n{p}");
        }
        assert!(!p.contains("tag:ok-1") && !p.contains("team"), "{p}");
        assert!(spec(serde_json::json!({"storage": {"filesystem": {"persistentVolumeClaim": {"size": "ten"}}}})).problems("a")[0].contains("quantity"));
        // A dotted name would make host names that are not the replicas'.
        assert!(spec(serde_json::json!({})).problems("main-0.main-replicas.kubetape-system")[0].contains("DNS label"));
        let bad = spec(serde_json::json!({"resources": {"requests": {"memory": "lots", "cpu": 1}, "limit": {}}})).problems("a").join("\n");
        assert!(bad.contains("spec.resources.requests.memory") && bad.contains("spec.resources.limit:") && !bad.contains("cpu"), "{bad}");
    }
}
