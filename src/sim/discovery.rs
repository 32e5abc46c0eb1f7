//! What the simulated API server says about itself: version, API groups and
//! resources (legacy discovery, which every kubectl falls back to), and the Table
//! columns `kubectl get` prints.

use serde_json::{json, Value};

use crate::sim::store::parse_rfc3339;

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-kubetape-sim",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "none", "compiler": "none", "platform": "linux/amd64"
    })
}

pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
}

const GROUPS: &[&str] = &["authentication.k8s.io", "authorization.k8s.io"];

pub fn api_groups() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource(name: &str, kind: &str, namespaced: bool, verbs: &[&str], short: &[&str]) -> Value {
    let singular = if name.contains('/') { "" } else { kind };
    json!({
        "name": name, "singularName": singular.to_ascii_lowercase(), "namespaced": namespaced,
        "kind": kind, "verbs": verbs, "shortNames": short
    })
}

const OBJECT_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// Resources this simulator serves under `/api/v1`: (name, kind, namespaced).
pub const CORE_RESOURCES: &[(&str, &str, bool)] = &[("namespaces", "Namespace", false), ("pods", "Pod", true), ("configmaps", "ConfigMap", true)];

pub fn api_resources(group_version: &str) -> Option<Value> {
    let resources = match group_version {
        "v1" => {
            let mut r: Vec<Value> = vec![
                resource("namespaces", "Namespace", false, OBJECT_VERBS, &["ns"]),
                resource("pods", "Pod", true, OBJECT_VERBS, &["po"]),
                resource("configmaps", "ConfigMap", true, OBJECT_VERBS, &["cm"]),
            ];
            for (sub, kind, verbs) in [
                ("pods/attach", "PodAttachOptions", &["create", "get"][..]),
                ("pods/exec", "PodExecOptions", &["create", "get"]),
                ("pods/portforward", "PodPortForwardOptions", &["create", "get"]),
                ("pods/log", "Pod", &["get"]),
                ("pods/status", "Pod", &["get", "patch", "update"]),
                ("pods/ephemeralcontainers", "Pod", &["get", "patch", "update"]),
            ] {
                r.push(resource(sub, kind, true, verbs, &[]));
            }
            r
        }
        "authentication.k8s.io/v1" => vec![resource("selfsubjectreviews", "SelfSubjectReview", false, &["create"], &[])],
        "authorization.k8s.io/v1" => vec![resource("selfsubjectaccessreviews", "SelfSubjectAccessReview", false, &["create"], &[])],
        _ => return None,
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

/// The OpenAPI v3 index: one document per group version.
pub fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    for gv in ["api/v1", "apis/authentication.k8s.io/v1", "apis/authorization.k8s.io/v1"] {
        paths.insert(gv.into(), json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash=kubetape-sim")}));
    }
    json!({"paths": paths})
}

/// A group version's OpenAPI v3 document, with just what kubectl reads from it: the
/// PATCH operations and their `fieldValidation` parameter, which tells kubectl to
/// leave field validation to the server instead of validating against schemas.
/// (The simulator accepts any fields; it checks names, kinds and containers.)
pub fn openapi_v3(group_version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    if group_version == "api/v1" {
        for (resource, kind, namespaced) in CORE_RESOURCES {
            let path = if *namespaced { format!("/api/v1/namespaces/{{namespace}}/{resource}/{{name}}") } else { format!("/api/v1/{resource}/{{name}}") };
            let op = json!({
                "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": kind},
                "x-kubernetes-action": "patch",
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}}
            });
            paths.insert(path, json!({"patch": op}));
        }
    } else if !group_version.starts_with("apis/") || api_resources(&group_version["apis/".len()..]).is_none() {
        return None;
    }
    Some(json!({"openapi": "3.0.0", "info": {"title": "Kubernetes (kubetape sim)", "version": "v1.32.0"}, "paths": paths, "components": {"schemas": {}}}))
}

fn varint(mut x: u64, out: &mut Vec<u8>) {
    while x >= 0x80 {
        out.push((x & 0x7f) as u8 | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// Protobuf (proto3 wire format) field `num` holding length-delimited `bytes`.
fn pb_field(num: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 6);
    varint(u64::from(num) << 3 | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// The OpenAPI v2 document kubectl 1.27 fetches (gnostic `openapi.v2.Document`, the
/// protobuf form `/openapi/v2` serves), with the same content as [`openapi_v3`]: a
/// PATCH per object path carrying its GVK extension and the `fieldValidation` query
/// parameter. Field numbers are those of gnostic's OpenAPIv2.proto.
pub fn openapi_v2_protobuf() -> Vec<u8> {
    let mut paths = Vec::new();
    for (resource, kind, namespaced) in CORE_RESOURCES {
        let path = if *namespaced { format!("/api/v1/namespaces/{{namespace}}/{resource}/{{name}}") } else { format!("/api/v1/{resource}/{{name}}") };
        // QueryParameterSubSchema{in=2, name=4, type=6} in NonBodyParameter(3) in Parameter(2) in ParametersItem(1)
        let query = [pb_field(2, b"query"), pb_field(4, b"fieldValidation"), pb_field(6, b"string")].concat();
        let param = pb_field(1, &pb_field(2, &pb_field(3, &query)));
        // NamedAny{name=1, value=Any{yaml=2}}
        let gvk = format!("group: \"\"\nversion: v1\nkind: {kind}\n");
        let ext = [pb_field(1, b"x-kubernetes-group-version-kind"), pb_field(2, &pb_field(2, gvk.as_bytes()))].concat();
        let operation = [pb_field(8, &param), pb_field(13, &ext)].concat();
        let path_item = pb_field(8, &operation); // PathItem.patch
        paths.extend(pb_field(2, &[pb_field(1, path.as_bytes()), pb_field(2, &path_item)].concat()));
    }
    let info = [pb_field(1, b"Kubernetes (kubetape sim)"), pb_field(2, b"v1.32.0")].concat();
    [pb_field(1, b"2.0"), pb_field(2, &info), pb_field(8, &paths)].concat()
}

/// A duration the way `kubectl get` shows ages (k8s.io/apimachinery `HumanDuration`).
pub fn human_age(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    match secs {
        0..120 => format!("{secs}s"),
        120..600 if secs % 60 != 0 => format!("{m}m{}s", secs % 60),
        120..10_800 => format!("{m}m"),
        10_800..28_800 if m % 60 != 0 => format!("{h}h{}m", m % 60),
        10_800..172_800 => format!("{h}h"),
        172_800..691_200 if h % 24 != 0 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

fn age(obj: &Value) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    obj["metadata"]["creationTimestamp"].as_str().and_then(parse_rfc3339).map(|t| human_age(now.saturating_sub(t))).unwrap_or_else(|| "<unknown>".into())
}

fn column(name: &str, kind: &str, priority: u8) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": kind, "format": format, "description": name, "priority": priority})
}

/// One Table row's cells for an object of `resource`, and the column definitions.
fn row(resource: &str, obj: &Value) -> (Vec<Value>, Vec<Value>) {
    let name = obj["metadata"]["name"].clone();
    match resource {
        "pods" => {
            let statuses = obj["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
            let total = obj["spec"]["containers"].as_array().map(Vec::len).unwrap_or(0);
            let ready = statuses.iter().filter(|s| s["ready"] == json!(true)).count();
            let restarts: u64 = statuses.iter().filter_map(|s| s["restartCount"].as_u64()).sum();
            let mut phase = obj["status"]["phase"].as_str().unwrap_or("Pending").to_string();
            if phase == "Succeeded" {
                phase = "Completed".into();
            } else if phase == "Failed" {
                phase = "Error".into();
            }
            if obj["metadata"]["deletionTimestamp"].is_string() {
                phase = "Terminating".into();
            }
            let cols = vec![
                column("Name", "string", 0),
                column("Ready", "string", 0),
                column("Status", "string", 0),
                column("Restarts", "string", 0),
                column("Age", "string", 0),
                column("IP", "string", 1),
                column("Node", "string", 1),
            ];
            let ip = obj["status"]["podIP"].as_str().unwrap_or("<none>");
            let node = obj["spec"]["nodeName"].as_str().unwrap_or("<none>");
            (vec![name, json!(format!("{ready}/{total}")), json!(phase), json!(restarts.to_string()), json!(age(obj)), json!(ip), json!(node)], cols)
        }
        "namespaces" => {
            let phase = obj["status"]["phase"].as_str().unwrap_or("Active");
            (vec![name, json!(phase), json!(age(obj))], vec![column("Name", "string", 0), column("Status", "string", 0), column("Age", "string", 0)])
        }
        "configmaps" => {
            let n = obj["data"].as_object().map(|m| m.len()).unwrap_or(0);
            (vec![name, json!(n), json!(age(obj))], vec![column("Name", "string", 0), column("Data", "integer", 0), column("Age", "string", 0)])
        }
        _ => (vec![name, json!(age(obj))], vec![column("Name", "string", 0), column("Age", "string", 0)]),
    }
}

/// A meta.k8s.io/v1 Table of `objects`, as the API server answers `Accept: ...;as=Table`.
pub fn table(resource: &str, objects: &[Value], resource_version: u64) -> Value {
    let mut columns = row(resource, &json!({"metadata": {}})).1;
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let (cells, cols) = row(resource, o);
            columns = cols;
            let meta = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]});
            json!({"cells": cells, "object": meta})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns, "rows": rows
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        for (s, want) in [(5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (11_000, "3h3m"), (30_000, "8h"), (200_000, "2d7h"), (900_000, "10d")] {
            assert_eq!(human_age(s), want, "{s}");
        }
    }
}
