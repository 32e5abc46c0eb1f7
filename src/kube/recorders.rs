//! The `Recorder` resource's contract between the operator, which writes each ready
//! replica into its status, and the proxy, which routes to them: the API path, how a
//! replica is named, and the name its certificate is valid for. The proxy computes
//! that name itself rather than trusting the status for it: whoever may write a
//! Recorder's status can point its address anywhere, but only a server holding a
//! certificate the operator issued for that Recorder's replicas can answer there.

use serde_json::Value;

pub const GROUP: &str = "kubetape.dev";
pub const VERSION: &str = "v1alpha1";
/// Tags a Recorder carries when its spec names none: what grants route to by default.
pub const DEFAULT_TAG: &str = "tag:k8s";

/// Every Recorder in `namespace`, or in every namespace.
pub fn list_path(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("/apis/{GROUP}/{VERSION}/namespaces/{ns}/recorders"),
        None => format!("/apis/{GROUP}/{VERSION}/recorders"),
    }
}

/// The headless Service whose DNS names the replicas of Recorder `name`.
pub fn replicas_service(name: &str) -> String {
    format!("{name}-replicas")
}

/// The name replica `pod` of Recorder `namespace/name` has its certificate for.
pub fn server_name(namespace: &str, name: &str, pod: &str) -> String {
    format!("{pod}.{}.{namespace}.svc", replicas_service(name))
}

/// One ready replica, as the proxy dials it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `namespace/recorder/pod`, in logs and in the recording's `recorder` field.
    pub id: String,
    /// `namespace/recorder`: a grant may name it in place of a tag.
    pub recorder: String,
    pub host: String,
    pub port: u16,
    pub server_name: String,
    pub tags: Vec<String>,
}

/// The endpoints in a Recorder list, for Recorders in `namespaces` whose status
/// names ready replicas. A replica not named `<recorder>-<ordinal>` is ignored.
pub fn endpoints(list: &Value, namespaces: &[String]) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for rec in list["items"].as_array().into_iter().flatten() {
        let (Some(ns), Some(name)) = (rec["metadata"]["namespace"].as_str(), rec["metadata"]["name"].as_str()) else { continue };
        if !namespaces.iter().any(|n| n == "*" || n == ns) {
            continue;
        }
        // Tags are the spec's: the status only says which replicas are ready.
        let tags: Vec<String> = match rec["spec"]["tags"].as_array() {
            Some(t) => t.iter().filter_map(|t| t.as_str().map(String::from)).collect(),
            None => vec![DEFAULT_TAG.to_string()],
        };
        for ep in rec["status"]["endpoints"].as_array().into_iter().flatten() {
            let (Some(pod), Some(address)) = (ep["name"].as_str(), ep["address"].as_str()) else { continue };
            let ordinal = pod.strip_prefix(name).and_then(|r| r.strip_prefix('-'));
            if !ordinal.is_some_and(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit())) {
                continue;
            }
            let Some((host, port)) = address.rsplit_once(':') else { continue };
            let Ok(port) = port.parse() else { continue };
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            out.push(Endpoint { id: format!("{ns}/{name}/{pod}"), recorder: format!("{ns}/{name}"), host, port, server_name: server_name(ns, name, pod), tags: tags.clone() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_come_from_trusted_namespaces_with_names_the_proxy_computes() {
        let list = json!({"items": [
            {"metadata": {"namespace": "kubetape-system", "name": "main"}, "spec": {"tags": ["tag:audit"]},
             "status": {"endpoints": [
                {"name": "main-0", "address": "10.244.0.2:8444", "serverName": "evil.example"},
                {"name": "other-0", "address": "10.244.0.9:8444"},
                {"name": "main-x", "address": "10.244.0.9:8444"},
                {"name": "main-1", "address": "[fd00::1]:8444"}]}},
            {"metadata": {"namespace": "team-a", "name": "main"}, "spec": {}, "status": {"endpoints": [{"name": "main-0", "address": "10.244.0.7:8444"}]}}
        ]});
        let eps = endpoints(&list, &["kubetape-system".to_string()]);
        assert_eq!(eps.len(), 2, "{eps:?}");
        assert_eq!(eps[0].server_name, "main-0.main-replicas.kubetape-system.svc", "the status's serverName is not taken");
        assert_eq!((eps[0].host.as_str(), eps[0].port, eps[0].tags.clone()), ("10.244.0.2", 8444, vec!["tag:audit".to_string()]));
        assert_eq!(eps[1].host, "fd00::1");
        let all = endpoints(&list, &["*".to_string()]);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].tags, vec!["tag:k8s".to_string()]);
    }
}
