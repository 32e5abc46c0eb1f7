//! The simulated API: routing, object handlers, pod lifecycle, and the streaming
//! subresources (watch, log, exec, attach, port-forward).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{send_json, ApiError, Cluster, Outcome, Request};
use crate::net::conn::{Input, WriteHalf};
use crate::net::websocket::{self, AcceptError};
use crate::recording::portforward::{CHANNEL_PORT_FORWARD, SPDY_OVER_WEBSOCKET};
use crate::sim::discovery;
use crate::sim::gourl;
use crate::sim::pods::{container_env, pod_dir, start_container, start_pod, stop_pod};
use crate::sim::process::{self, Mounts};
use crate::sim::runtime::{Container, Output};
use crate::sim::session;
use crate::sim::store::{self, Key, StoreError};
use crate::sim::streams::{self, Wanted};
use crate::wire::channel;
use crate::wire::http::{self, ResponseHead};
use crate::wire::status;

/// A watch without `timeoutSeconds` ends after this, as the API server's
/// `--min-request-timeout` bounds it.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// The node every simulated pod runs on.
const NODE_NAME: &str = "kubetape-sim";
/// How long a new pod stays Pending before its containers start.
const START_DELAY: Duration = Duration::from_millis(200);

type Reply = Result<Outcome, ApiError>;

fn ok_json(out: &mut WriteHalf, code: u16, v: &Value) -> Reply {
    send_json(out, code, v)?;
    Ok(Outcome::KeepAlive)
}

fn not_found(resource: &str, name: &str) -> ApiError {
    let kind = resource.trim_end_matches('s');
    ApiError { code: 404, body: status::failure_for(404, &format!("{resource} \"{name}\" not found"), kind, name) }
}

fn store_error(e: StoreError, resource: &str, name: &str) -> ApiError {
    match e {
        StoreError::NotFound => not_found(resource, name),
        StoreError::AlreadyExists => ApiError { code: 409, body: status::failure_for(409, &format!("{resource} \"{name}\" already exists"), resource.trim_end_matches('s'), name) },
        StoreError::Conflict => ApiError::new(
            409,
            format!("Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
        ),
    }
}

fn kind_of(resource: &str) -> Option<&'static str> {
    discovery::CORE_RESOURCES.iter().find(|(r, _, _)| *r == resource).map(|(_, k, _)| *k)
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn wants_table(req: &Request) -> bool {
    req.head.headers.get_str("accept").is_some_and(|a| a.contains("as=Table"))
}

/// Creates the namespaces every cluster has and, with `--seed`, pod `web-0`.
pub fn bootstrap(cluster: &Arc<Cluster>) -> crate::error::Result<()> {
    for ns in ["default", "kube-system", "kube-public"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}});
        let _ = cluster.store.create(Key { resource: "namespaces".into(), namespace: String::new(), name: ns.into() }, obj);
    }
    if cluster.config.seed {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [{
                "name": "main", "image": "kubetape/sim-shell",
                "command": ["sh", "-c", "echo web-0 serving; while true; do sleep 3600; done"]
            }]}
        });
        create_pod(cluster, "default", pod).map_err(|e| crate::error::Error::new(e.body.to_string()))?;
    }
    Ok(())
}

pub fn route(cluster: &Arc<Cluster>, req: &Request, out: &mut WriteHalf) -> Reply {
    // Routed on the decoded path, as go-restful routes `req.URL.Path`. Empty segments
    // are skipped, which routes a little more than kube-apiserver does (it would 404
    // `pods/web-0//exec`): a proxy in front must not rely on such paths failing.
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.head.method.as_str();
    if cluster.config.kubelet {
        return kubelet_route(cluster, req, out, &segs);
    }
    match (method, segs.as_slice()) {
        (_, ["api", "v1", "nodes", node, "proxy", rest @ ..]) => node_proxy(cluster, req, out, node, rest),
        ("GET", ["version"]) => ok_json(out, 200, &discovery::version()),
        ("GET", ["api"]) => ok_json(out, 200, &discovery::api_versions()),
        ("GET", ["apis"]) => ok_json(out, 200, &discovery::api_groups()),
        ("GET", ["api", v]) => resources(out, v),
        ("GET", ["apis", g, v]) => resources(out, &format!("{g}/{v}")),
        ("GET", ["openapi", "v2"]) => {
            let body = discovery::openapi_v2_protobuf();
            let mut head = ResponseHead::new(200);
            head.headers.push("Content-Type", "application/com.github.proto-openapi.spec.v2.v1.0+protobuf");
            head.headers.push("Content-Length", body.len().to_string());
            out.write_all(&[head.encode(), body].concat())?;
            Ok(Outcome::KeepAlive)
        }
        ("GET", ["openapi", "v3"]) => ok_json(out, 200, &discovery::openapi_v3_root()),
        ("GET", ["openapi", "v3", rest @ ..]) => match discovery::openapi_v3(&rest.join("/")) {
            Some(doc) => ok_json(out, 200, &doc),
            None => Err(ApiError::new(404, "the server could not find the requested resource")),
        },
        ("POST", ["apis", "authentication.k8s.io", v @ ("v1" | "v1beta1"), "selfsubjectreviews"]) => {
            let u = &req.user;
            let review = json!({
                "kind": "SelfSubjectReview", "apiVersion": format!("authentication.k8s.io/{v}"),
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": {"username": u.name, "uid": u.uid, "groups": u.groups}}
            });
            ok_json(out, 201, &review)
        }
        ("POST", ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            let mut review = json_body(req)?;
            let user = review["spec"]["token"].as_str().and_then(|t| cluster.config.tokens.lookup(t));
            review["status"] = match user {
                Some(u) => json!({"authenticated": true, "user": {"username": u.name, "uid": u.uid, "groups": u.groups}}),
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            };
            ok_json(out, 201, &review)
        }
        ("POST", ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"]) => {
            let mut review = json_body(req)?;
            let (spec, attrs) = (&review["spec"], &review["spec"]["resourceAttributes"]);
            let recordings = attrs["group"] == "kubetape.dev" && attrs["resource"] == "recordings";
            let allowed = !recordings || spec["user"].as_str().is_some_and(|u| cluster.config.recording_viewers.iter().any(|v| v == u));
            review["status"] =
                json!({"allowed": allowed, "reason": if recordings { "kubetape sim: --recording-viewers" } else { "kubetape sim authorizes every authenticated user" }});
            ok_json(out, 201, &review)
        }
        ("POST", ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"]) => {
            // kubectl 1.32 sends this one as protobuf; the answer needs nothing from it.
            let mut review = json_body(req).unwrap_or_else(|_| json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {}, "spec": {}}));
            review["status"] = json!({"allowed": true, "reason": "kubetape sim authorizes every authenticated user"});
            ok_json(out, 201, &review)
        }
        (_, ["api", "v1", "namespaces"]) => collection(cluster, req, out, "namespaces", None),
        (_, ["api", "v1", "namespaces", name]) => object(cluster, req, out, "namespaces", "", name),
        (_, ["api", "v1", res]) => collection(cluster, req, out, res, None),
        (_, ["api", "v1", "namespaces", ns, res]) => collection(cluster, req, out, res, Some(ns)),
        (_, ["api", "v1", "namespaces", ns, res, name]) => object(cluster, req, out, res, ns, name),
        (_, ["api", "v1", "namespaces", ns, "pods", name, sub]) => pod_subresource(cluster, req, out, ns, name, sub),
        _ => Err(ApiError::new(404, "the server could not find the requested resource")),
    }
}

/// The request body as JSON; kubectl sends protobuf only from typed generators such
/// as `kubectl create configmap`, which this simulator does not decode.
fn json_body(req: &Request) -> Result<Value, ApiError> {
    let ct = req.head.headers.get_str("content-type").unwrap_or("");
    if ct.starts_with("application/vnd.kubernetes.protobuf") {
        return Err(ApiError::new(415, "kubetape sim decodes JSON bodies only; create objects from files (kubectl create -f / apply -f)"));
    }
    serde_json::from_slice(&req.body).map_err(|e| ApiError::new(400, format!("decoding body: {e}")))
}

fn resources(out: &mut WriteHalf, group_version: &str) -> Reply {
    match discovery::api_resources(group_version) {
        Some(v) => ok_json(out, 200, &v),
        None => Err(ApiError::new(404, "the server could not find the requested resource")),
    }
}

fn collection(cluster: &Arc<Cluster>, req: &Request, out: &mut WriteHalf, resource: &str, ns: Option<&str>) -> Reply {
    let kind = kind_of(resource).ok_or_else(|| ApiError::new(404, "the server could not find the requested resource"))?;
    let scope = if resource == "namespaces" { None } else { ns };
    if let Some(ns) = ns {
        if cluster.store.get(&Key { resource: "namespaces".into(), namespace: String::new(), name: ns.into() }).is_none() {
            return Err(not_found("namespaces", ns));
        }
    }
    match req.head.method.as_str() {
        "GET" if req.flag("watch") => watch(cluster, req, out, resource, scope),
        "GET" => {
            let (items, rv) = cluster.store.list(resource, scope);
            let items = filter(req, items)?;
            if wants_table(req) {
                return ok_json(out, 200, &discovery::table(resource, &items, rv));
            }
            let list = json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": items});
            ok_json(out, 200, &list)
        }
        "POST" => {
            let obj = json_body(req)?;
            if obj["kind"].as_str().is_some_and(|k| k != kind) {
                return Err(ApiError::new(400, format!("expected kind {kind}, found {}", obj["kind"])));
            }
            if req.flag("dryRun") || req.param("dryRun") == Some("All") {
                return ok_json(out, 201, &obj);
            }
            let created = match (resource, ns) {
                ("pods", Some(ns)) => create_pod(cluster, ns, obj)?,
                _ => create_object(cluster, resource, kind, scope.unwrap_or(""), obj)?,
            };
            ok_json(out, 201, &created)
        }
        "DELETE" => {
            let (items, _) = cluster.store.list(resource, scope);
            for item in filter(req, items)? {
                let name = item["metadata"]["name"].as_str().unwrap_or_default().to_string();
                delete_object(cluster, resource, scope.unwrap_or(""), &name)?;
            }
            ok_json(out, 200, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}))
        }
        m => Err(ApiError::new(405, format!("method {m} is not supported on {resource}"))),
    }
}

fn filter(req: &Request, items: Vec<Value>) -> Result<Vec<Value>, ApiError> {
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        let mut keep = true;
        for (param, fields) in [("labelSelector", false), ("fieldSelector", true)] {
            if let Some(sel) = req.param(param) {
                keep &= store::matches_selector(&item, sel, fields).ok_or_else(|| ApiError::new(400, format!("{param} {sel:?} is not supported by kubetape sim")))?;
            }
        }
        if keep {
            kept.push(item);
        }
    }
    Ok(kept)
}

fn name_for(obj: &mut Value) -> Result<String, ApiError> {
    if obj["metadata"]["name"].as_str().is_none_or(str::is_empty) {
        if let Some(prefix) = obj["metadata"]["generateName"].as_str() {
            let name = format!("{prefix}{}", store::name_suffix());
            obj["metadata"]["name"] = json!(name);
        }
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if !is_dns_subdomain(&name) {
        return Err(ApiError::new(422, format!("metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain is required")));
    }
    Ok(name)
}

fn create_object(cluster: &Arc<Cluster>, resource: &str, kind: &str, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
    let name = name_for(&mut obj)?;
    obj["kind"] = json!(kind);
    obj["apiVersion"] = json!("v1");
    if !ns.is_empty() {
        obj["metadata"]["namespace"] = json!(ns);
    }
    if resource == "namespaces" {
        obj["status"] = json!({"phase": "Active"});
    }
    let key = Key { resource: resource.into(), namespace: ns.into(), name: name.clone() };
    cluster.store.create(key, obj).map_err(|e| store_error(e, resource, &name))
}

fn object(cluster: &Arc<Cluster>, req: &Request, out: &mut WriteHalf, resource: &str, ns: &str, name: &str) -> Reply {
    let kind = kind_of(resource).ok_or_else(|| ApiError::new(404, "the server could not find the requested resource"))?;
    let key = Key { resource: resource.into(), namespace: ns.into(), name: name.into() };
    match req.head.method.as_str() {
        "GET" => {
            let obj = cluster.store.get(&key).ok_or_else(|| not_found(resource, name))?;
            if wants_table(req) {
                return ok_json(out, 200, &discovery::table(resource, &[obj], cluster.store.resource_version()));
            }
            ok_json(out, 200, &obj)
        }
        "DELETE" => {
            let obj = delete_object(cluster, resource, ns, name)?;
            ok_json(out, 200, &obj)
        }
        "PUT" => {
            let mut new = json_body(req)?;
            let rv = new["metadata"]["resourceVersion"].as_str().map(String::from);
            new["kind"] = json!(kind);
            let updated = cluster
                .store
                .update(&key, rv.as_deref(), |o| {
                    let keep = o["metadata"].clone();
                    let status = o["status"].clone();
                    *o = new;
                    for f in ["uid", "creationTimestamp"] {
                        o["metadata"][f] = keep[f].clone();
                    }
                    if resource == "pods" {
                        o["status"] = status; // status is written through pods/status only
                    }
                })
                .map_err(|e| store_error(e, resource, name))?;
            ok_json(out, 200, &updated)
        }
        "PATCH" => {
            let patch = parse_patch(req)?;
            let updated = cluster
                .store
                .update(&key, None, |o| {
                    let status = o["status"].clone();
                    merge_patch(o, &patch);
                    if resource == "pods" {
                        o["status"] = status;
                    }
                })
                .map_err(|e| store_error(e, resource, name))?;
            ok_json(out, 200, &updated)
        }
        m => Err(ApiError::new(405, format!("method {m} is not supported on {resource}/{name}"))),
    }
}

/// Strategic-merge and JSON merge patches are both applied as RFC 7386 merge patches;
/// lists are replaced whole except where a subresource handler merges them by name.
fn parse_patch(req: &Request) -> Result<Value, ApiError> {
    let ct = req.head.headers.get_str("content-type").unwrap_or("");
    if !(ct.starts_with("application/merge-patch+json") || ct.starts_with("application/strategic-merge-patch+json")) {
        return Err(ApiError::new(415, format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (found {ct:?})")));
    }
    serde_json::from_slice(&req.body).map_err(|e| ApiError::new(400, format!("decoding patch: {e}")))
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (k, v) in p {
                if v.is_null() {
                    target.as_object_mut().map(|t| t.remove(k));
                } else {
                    merge_patch(&mut target[k], v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn delete_object(cluster: &Arc<Cluster>, resource: &str, ns: &str, name: &str) -> Result<Value, ApiError> {
    if resource == "namespaces" {
        for pod in cluster.store.list("pods", Some(name)).0 {
            let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
            delete_object(cluster, "pods", name, &pod_name)?;
        }
    }
    let key = Key { resource: resource.into(), namespace: ns.into(), name: name.into() };
    let obj = cluster.store.delete(&key).map_err(|e| store_error(e, resource, name))?;
    if resource == "pods" {
        stop_pod(cluster, ns, name);
    }
    Ok(obj)
}

fn watch(cluster: &Arc<Cluster>, req: &Request, out: &mut WriteHalf, resource: &str, ns: Option<&str>) -> Reply {
    let since = req.param("resourceVersion").and_then(|v| v.parse::<u64>().ok()).filter(|v| *v > 0);
    let timeout = req.param("timeoutSeconds").and_then(|v| v.parse().ok()).map(Duration::from_secs).unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let table = wants_table(req);
    let rx = cluster.store.watch(resource, ns, since);
    let mut head = ResponseHead::new(200);
    head.headers.push("Content-Type", "application/json");
    head.headers.push("Transfer-Encoding", "chunked");
    out.write_all(&head.encode())?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match rx.recv_timeout(left) {
            Ok(e) => e,
            Err(_) => break,
        };
        let single = filter(req, vec![event.object.clone()])?;
        if single.is_empty() {
            continue;
        }
        let object = if table { discovery::table(resource, &single, event.rv) } else { event.object };
        let line = format!("{}\n", json!({"type": event.kind, "object": object}));
        if out.write_all(&http::encode_chunk(line.as_bytes())).is_err() {
            return Ok(Outcome::Close);
        }
    }
    out.write_all(http::LAST_CHUNK)?;
    Ok(Outcome::KeepAlive)
}

fn create_pod(cluster: &Arc<Cluster>, ns: &str, mut pod: Value) -> Result<Value, ApiError> {
    let name = name_for(&mut pod)?;
    let containers = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        return Err(ApiError::new(422, "spec.containers: Required value"));
    }
    for c in &containers {
        if !c["name"].as_str().is_some_and(is_dns_subdomain) {
            return Err(ApiError::new(422, format!("spec.containers.name: Invalid value: {}", c["name"])));
        }
    }
    default_pod(&mut pod);
    pod["kind"] = json!("Pod");
    pod["apiVersion"] = json!("v1");
    pod["metadata"]["namespace"] = json!(ns);
    pod["spec"]["nodeName"] = json!(NODE_NAME);
    if pod["spec"]["restartPolicy"].is_null() {
        pod["spec"]["restartPolicy"] = json!("Always");
    }
    pod["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
    let key = Key { resource: "pods".into(), namespace: ns.into(), name: name.clone() };
    let created = cluster.store.create(key, pod).map_err(|e| store_error(e, "pods", &name))?;
    let cluster = cluster.clone();
    let ns = ns.to_string();
    std::thread::Builder::new()
        .name(format!("start-{name}"))
        .spawn(move || {
            std::thread::sleep(START_DELAY);
            start_pod(&cluster, &ns, &name, &containers);
        })
        .map_err(|e| ApiError::new(500, e.to_string()))?;
    Ok(created)
}

/// The defaults kube-apiserver fills in on every pod; kubectl relies on some of them
/// being present (kubectl 1.33 `debug` reads `spec.securityContext`).
fn default_pod(pod: &mut Value) {
    let spec = &mut pod["spec"];
    for (field, value) in [
        ("securityContext", json!({})),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("enableServiceLinks", json!(true)),
    ] {
        if spec[field].is_null() {
            spec[field] = value;
        }
    }
    for list in ["containers", "ephemeralContainers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            default_container(c);
        }
    }
}

fn default_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default();
    let latest = !image.rsplit('/').next().unwrap_or_default().contains(':') || image.ends_with(":latest");
    for (field, value) in [
        ("imagePullPolicy", json!(if latest { "Always" } else { "IfNotPresent" })),
        ("terminationMessagePath", json!("/dev/termination-log")),
        ("terminationMessagePolicy", json!("File")),
        ("resources", json!({})),
    ] {
        if c[field].is_null() {
            c[field] = value;
        }
    }
}

/// The container a subresource request names, or the pod's first.
fn pick_container(pod: &Value, req: &Request) -> Result<String, ApiError> {
    if let Some(c) = req.param("container").filter(|c| !c.is_empty()) {
        let known = ["containers", "ephemeralContainers"].iter().flat_map(|f| pod["spec"][f].as_array().cloned().unwrap_or_default()).any(|s| s["name"] == json!(c));
        if !known {
            let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
            return Err(ApiError::new(400, format!("container {c} is not valid for pod {pod_name}")));
        }
        return Ok(c.to_string());
    }
    pod["spec"]["containers"][0]["name"].as_str().map(String::from).ok_or_else(|| ApiError::new(400, "pod has no containers"))
}

fn pod_subresource(cluster: &Arc<Cluster>, req: &Request, out: &mut WriteHalf, ns: &str, name: &str, sub: &str) -> Reply {
    let key = Key { resource: "pods".into(), namespace: ns.into(), name: name.into() };
    let pod = cluster.store.get(&key).ok_or_else(|| not_found("pods", name))?;
    let method = req.head.method.as_str();
    match (method, sub) {
        ("GET", "status") => ok_json(out, 200, &pod),
        ("GET", "ephemeralcontainers") => ok_json(out, 200, &pod),
        ("PATCH", "ephemeralcontainers") => {
            let patch = parse_patch(req)?;
            let added: Vec<Value> = patch["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
            let existing = pod["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
            let mut fresh: Vec<Value> = added.into_iter().filter(|c| !existing.iter().any(|e| e["name"] == c["name"])).collect();
            fresh.iter_mut().for_each(default_container);
            for c in &fresh {
                if !c["name"].as_str().is_some_and(is_dns_subdomain) {
                    return Err(ApiError::new(422, "spec.ephemeralContainers.name: Invalid value"));
                }
            }
            let updated = cluster
                .store
                .update(&key, None, |o| {
                    let list = &mut o["spec"]["ephemeralContainers"];
                    if !list.is_array() {
                        *list = json!([]);
                    }
                    if let Some(l) = list.as_array_mut() {
                        l.extend(fresh.iter().cloned());
                    }
                })
                .map_err(|e| store_error(e, "pods", name))?;
            for c in &fresh {
                if let Err(e) = start_container(cluster, ns, name, c, "ephemeralContainerStatuses") {
                    log::warn!("ephemeral container failed to start ns={ns} pod={name} error={e}");
                }
            }
            ok_json(out, 200, &updated)
        }
        ("GET", "log") => logs(cluster, req, out, ns, name, pick_container(&pod, req)?),
        ("GET" | "POST", "exec" | "attach") => {
            if pod["status"]["phase"] != json!("Running") {
                return Err(ApiError::new(400, format!("pod {name} is not running (phase {})", pod["status"]["phase"])));
            }
            let container = pick_container(&pod, req)?;
            let dir = pod_dir(cluster, ns, name);
            let target = match sub {
                "exec" => {
                    let spec = ["containers", "ephemeralContainers"]
                        .iter()
                        .flat_map(|f| pod["spec"][f].as_array().cloned().unwrap_or_default())
                        .find(|s| s["name"] == json!(container))
                        .unwrap_or(Value::Null);
                    Target::Exec { argv: req.params("command"), dir, env: container_env(&spec, name), mounts: Mounts::Host }
                }
                _ => {
                    let c = cluster.containers.lock().unwrap_or_else(|e| e.into_inner()).get(&(ns.into(), name.into(), container.clone())).cloned();
                    Target::Attach(c.ok_or_else(|| ApiError::new(400, format!("container {container} is not running")))?)
                }
            };
            remote_command(req, out, target)
        }
        ("GET" | "POST", "portforward") => port_forward(req, out, &pod, false),
        _ => Err(ApiError::new(404, "the server could not find the requested resource")),
    }
}

fn logs(cluster: &Arc<Cluster>, req: &Request, out: &mut WriteHalf, ns: &str, name: &str, container: String) -> Reply {
    let c = cluster.containers.lock().unwrap_or_else(|e| e.into_inner()).get(&(ns.into(), name.into(), container.clone())).cloned();
    let c = c.ok_or_else(|| ApiError::new(400, format!("container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating")))?;
    let (id, log, feed) = c.subscribe();
    let mut head = ResponseHead::new(200);
    head.headers.push("Content-Type", "text/plain");
    head.headers.push("Transfer-Encoding", "chunked");
    out.write_all(&head.encode())?;
    let tail = req.param("tailLines").and_then(|t| t.parse::<usize>().ok());
    let start = match tail {
        Some(n) => log.iter().enumerate().rev().filter(|(_, b)| **b == b'\n').nth(n).map(|(i, _)| i + 1).unwrap_or(0),
        None => 0,
    };
    if start < log.len() {
        out.write_all(&http::encode_chunk(&log[start..]))?;
    }
    if req.flag("follow") {
        for item in feed.iter() {
            match item {
                Output::Data(_, data) => {
                    if out.write_all(&http::encode_chunk(&data)).is_err() {
                        c.unsubscribe(id);
                        return Ok(Outcome::Close);
                    }
                }
                Output::Exited => break,
            }
        }
    }
    c.unsubscribe(id);
    out.write_all(http::LAST_CHUNK)?;
    Ok(Outcome::KeepAlive)
}

enum Target {
    Exec { argv: Vec<String>, dir: std::path::PathBuf, env: Vec<(String, String)>, mounts: Mounts },
    Attach(Arc<Container>),
}

/// The stream protocol both sides agreed on.
enum Proto {
    Spdy,
    WebSocket { v5: bool },
}

/// Negotiates SPDY/3.1 or WebSocket the way kubelet's `httpstream` and `wsstream` do,
/// writes the 101, and returns the protocol; a request offering nothing supported is
/// answered 400 (kubectl 1.30+ then retries over SPDY).
fn upgrade(req: &Request, out: &mut WriteHalf, supported: &[&str]) -> Result<Proto, ApiError> {
    let h = &req.head.headers;
    let upgrade = req.head.upgrade().unwrap_or("");
    let (resp, proto) = if upgrade.eq_ignore_ascii_case("websocket") {
        let (resp, chosen) = websocket::accept(&req.head, supported).map_err(|e| match e {
            AcceptError::NoSubprotocol(offered) => ApiError::new(400, format!("unable to upgrade: no supported subprotocol in {offered:?}")),
            AcceptError::MissingKey => ApiError::new(400, "missing Sec-WebSocket-Key"),
        })?;
        (resp, Proto::WebSocket { v5: chosen == "v5.channel.k8s.io" })
    } else if upgrade == "SPDY/3.1" {
        let offered: Vec<&str> = h.get_all("x-stream-protocol-version").filter_map(|v| std::str::from_utf8(v).ok()).flat_map(|v| v.split(',')).map(str::trim).collect();
        let chosen = channel::negotiate(&offered, supported).ok_or_else(|| ApiError::new(403, format!("unable to upgrade: no common protocol in {offered:?}")))?;
        let mut resp = ResponseHead::new(101);
        resp.headers.push("Connection", "Upgrade");
        resp.headers.push("Upgrade", "SPDY/3.1");
        resp.headers.push("X-Stream-Protocol-Version", chosen);
        (resp, Proto::Spdy)
    } else {
        return Err(ApiError::new(400, "Upgrade request required"));
    };
    out.write_all(&resp.encode())?;
    Ok(proto)
}

fn remote_command(req: &Request, out: &mut WriteHalf, target: Target) -> Reply {
    // The API server says stdin/stdout/stderr; it asks a kubelet for input/output/error.
    let wanted = Wanted {
        stdin: req.flag("stdin") || req.flag("input"),
        stdout: req.flag("stdout") || req.flag("output"),
        stderr: req.flag("stderr") || req.flag("error"),
        tty: req.flag("tty"),
    };
    if let Target::Exec { argv, .. } = &target {
        if argv.is_empty() {
            return Err(ApiError::new(400, "you must specify at least 1 command"));
        }
    }
    // v5 and v4 differ only in v5's WebSocket close signal; v1-v3 are not offered by
    // any supported kubectl.
    let proto = upgrade(req, out, &["v5.channel.k8s.io", "v4.channel.k8s.io"])?;
    Ok(Outcome::Upgrade(Box::new(move |input: Input, output: WriteHalf| {
        let streams = match proto {
            Proto::Spdy => streams::spdy_session(input, output, wanted),
            Proto::WebSocket { v5 } => streams::ws_session(input, output, v5),
        };
        let (inbound, outbound) = match streams {
            Ok(s) => s,
            Err(e) => {
                log::info!("session setup failed error={e}");
                return;
            }
        };
        match target {
            Target::Exec { argv, dir, env, mounts } => session::run_exec(argv, &dir, &env, &mounts, wanted, inbound, outbound),
            Target::Attach(c) => session::run_attach(c, wanted, inbound, outbound),
        }
    })))
}

/// Two channels a port, each named by one byte.
const MAX_CHANNEL_PORTS: usize = 128;

/// `pods/NAME/portforward`, or the kubelet's `/portForward/...` when `kubelet` (which
/// knows no tunnelled SPDY, and reads the ports as `port`, as kube-apiserver passes
/// them on).
fn port_forward(req: &Request, out: &mut WriteHalf, pod: &Value, kubelet: bool) -> Reply {
    // Declared container ports, or any port when the pod declares none (as kubelet
    // forwards to any port in the pod's network namespace).
    let declared: Vec<u16> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["containerPort"].as_u64().and_then(|p| u16::try_from(p).ok()))
        .collect();
    // Over WebSocket, SPDY tunnelled (kube-apiserver's tunneling handler, what kubectl
    // sends), or the kubelet's channel protocol with the ports in the query (what
    // kube-apiserver passes through to the kubelet).
    let websocket = req.head.upgrade().is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let param = if kubelet { "port" } else { "ports" };
    let ports: Vec<u16> = req.params(param).iter().flat_map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect::<Vec<u16>>()).collect();
    let channels = websocket && (kubelet || !req.head.headers.tokens("sec-websocket-protocol").any(|p| p == SPDY_OVER_WEBSOCKET));
    if channels && ports.is_empty() {
        return Err(ApiError::new(400, format!("query parameter {param:?} is required")));
    }
    if channels && ports.len() > MAX_CHANNEL_PORTS {
        return Err(ApiError::new(400, format!("at most {MAX_CHANNEL_PORTS} ports over the channel protocol")));
    }
    let supported: &[&str] = if !websocket {
        &[channel::PORT_FORWARD_PROTOCOL]
    } else if channels {
        &[CHANNEL_PORT_FORWARD]
    } else {
        &[SPDY_OVER_WEBSOCKET]
    };
    let proto = upgrade(req, out, supported)?;
    Ok(Outcome::Upgrade(Box::new(move |input, output| {
        let allowed = move |p: u16| declared.is_empty() || declared.contains(&p);
        let served = match proto {
            Proto::Spdy => streams::spdy_port_forward(input, output, allowed),
            Proto::WebSocket { .. } if channels => streams::ws_channel_port_forward(input, output, ports, allowed),
            Proto::WebSocket { .. } => streams::ws_tunnelled_port_forward(input, output, allowed),
        };
        if let Err(e) = served {
            log::info!("port-forward ended error={e}");
        }
    })))
}

/// `nodes/NODE/proxy/PATH`: kube-apiserver's node proxy passes any request, upgrades
/// included, to `PATH` on that node's kubelet with the raw query unchanged
/// (`ProxyREST.Connect`: `JoinPreservingTrailingSlash`, then an upgrade-aware proxy).
/// Every simulated pod runs on [`NODE_NAME`], whose kubelet is this simulator.
fn node_proxy(cluster: &Arc<Cluster>, req: &Request, out: &mut WriteHalf, node: &str, rest: &[&str]) -> Reply {
    if gourl::split_scheme_name_port(node) != Some(NODE_NAME) {
        return Err(not_found("nodes", node));
    }
    kubelet_route(cluster, req, out, &gourl::clean_segments(rest))
}

/// Kubelet mode: the paths a kube-apiserver forwards exec, attach and port-forward to
/// (`/exec/NS/POD/CONTAINER?command=...`), also reached through `nodes/NODE/proxy`.
/// Pods are whatever the API server says they are (in kubelet mode) or what the
/// simulator's store holds; commands run in a scratch directory per pod.
fn kubelet_route(cluster: &Arc<Cluster>, req: &Request, out: &mut WriteHalf, segs: &[&str]) -> Reply {
    let valid = |names: &[&str]| names.iter().all(|n| is_dns_subdomain(n));
    // The kubelet answers 404 for pods it does not run (`GetPodByName`).
    let known = |ns: &str, pod: &str| {
        let key = Key { resource: "pods".into(), namespace: ns.into(), name: pod.into() };
        if cluster.config.kubelet || cluster.store.get(&key).is_some() {
            Ok(())
        } else {
            Err(ApiError::new(404, format!("pod does not exist: {ns}/{pod}")))
        }
    };
    match segs {
        // `/exec/{podNamespace}/{podID}[/{uid}]/{containerName}`, GET or POST.
        ["exec", ns, pod, container] | ["exec", ns, pod, _, container] if valid(&[ns, pod]) => {
            known(ns, pod)?;
            // A container the kubelet agent started: its environment, working
            // directory and mounts. Otherwise the pod's scratch directory.
            let key = (ns.to_string(), pod.to_string(), container.to_string());
            let started = cluster.exec_envs.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
            let running = cluster.containers.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned().filter(|c| c.exit_code().is_none());
            let target = match (started, running) {
                (Some(e), Some(c)) => Target::Exec { argv: req.params("command"), dir: e.dir, env: e.env, mounts: if e.own_mounts { Mounts::Join(c.pid()) } else { Mounts::Host } },
                // Started here once, not running now (exited, backing off).
                (Some(_), None) => return Err(ApiError::new(404, format!("container not found ({container:?})"))),
                (None, _) => {
                    let dir = pod_dir(cluster, ns, pod);
                    std::fs::create_dir_all(&dir).map_err(|e| ApiError::new(500, e.to_string()))?;
                    let env = vec![("HOSTNAME".to_string(), pod.to_string())];
                    Target::Exec { argv: req.params("command"), dir, env, mounts: Mounts::Host }
                }
            };
            remote_command(req, out, target)
        }
        // `POST /run/{podNamespace}/{podID}[/{uid}]/{containerName}?cmd=...`: runs the
        // command (`cmd` split on spaces, for legacy reasons) and answers its combined
        // output, as the kubelet's `handleRun` does.
        ["run", ns, pod, _container] | ["run", ns, pod, _, _container] if valid(&[ns, pod]) && req.head.method == "POST" => {
            known(ns, pod)?;
            let dir = pod_dir(cluster, ns, pod);
            std::fs::create_dir_all(&dir).map_err(|e| ApiError::new(500, e.to_string()))?;
            let argv: Vec<String> = req.param("cmd").unwrap_or("").split(' ').map(String::from).collect();
            let env = vec![("HOSTNAME".to_string(), pod.to_string())];
            let output = run_to_end(&argv, &dir, &env).map_err(|e| ApiError::new(500, format!("failed to run in container: {e}")))?;
            out.write_all(&http::response(200, "application/json", &output))?;
            Ok(Outcome::KeepAlive)
        }
        ["attach", ns, pod, container] if valid(&[ns, pod, container]) => {
            let key = (ns.to_string(), pod.to_string(), container.to_string());
            let c = cluster.containers.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
            let c = c.ok_or_else(|| ApiError::new(404, format!("container {container} of {ns}/{pod} is not running on this kubelet")))?;
            remote_command(req, out, Target::Attach(c))
        }
        ["portForward", ns, pod] | ["portForward", ns, pod, _] if valid(&[ns, pod]) => {
            known(ns, pod)?;
            port_forward(req, out, &Value::Null, true)
        }
        ["containerLogs", ns, pod, container] if valid(&[ns, pod, container]) => logs(cluster, req, out, ns, pod, container.to_string()),
        _ => Err(ApiError::new(404, "the server could not find the requested resource")),
    }
}

/// Runs `argv` to its end and returns its stdout followed by its stderr (CRI
/// `ExecSync`, which the kubelet's `run` answers with).
fn run_to_end(argv: &[String], dir: &std::path::Path, env: &[(String, String)]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut p = process::spawn(argv, dir, env, None, false)?;
    let stderr = p.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut f) = stderr {
            let _ = f.read_to_end(&mut v);
        }
        v
    });
    let mut output = Vec::new();
    p.stdout.read_to_end(&mut output)?;
    let _ = p.child.wait();
    output.extend(errors.join().unwrap_or_default());
    Ok(output)
}
