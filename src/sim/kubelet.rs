//! Kubelet mode's agent: registers a Node whose kubelet endpoint is this simulator,
//! keeps it alive (the `kube-node-lease` Lease renewed every 10 s and the Ready
//! condition's heartbeat, so the node lifecycle controller never marks it NotReady),
//! lists the pods the API server binds to it, and hands each to its own worker
//! ([`podworker`]), as a kubelet does. Pod status is written with the pod's
//! resourceVersion as a precondition and retried on a conflict with a fresh read.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{Agent, Cluster};
use crate::error::{Context, Result};
use crate::kube::client::ApiServer;
use crate::sim::podworker::{PodFeed, Worker};
use crate::wire::time;

/// How often the pods bound to this node are listed.
const SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// How often the node's Lease and Ready heartbeat are renewed (the kubelet's default).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// The Lease's duration: the node lifecycle controller's grace period.
const LEASE_DURATION_SECONDS: u64 = 40;
/// Conflicting status writes retried with a fresh read before giving up until the
/// next sync.
const MAX_STATUS_CONFLICTS: usize = 5;
const MERGE_PATCH: &str = "application/merge-patch+json";
const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, as a `MicroTime` (a Lease's `renewTime`) must be.
pub fn rfc3339_micros(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut s = time::rfc3339(d.as_secs());
    s.pop(); // the Z
    format!("{s}.{:06}Z", d.subsec_micros())
}

fn ready_condition(since: &str, now: &str) -> Value {
    json!({"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubetape sim kubelet", "lastHeartbeatTime": now, "lastTransitionTime": since})
}

/// Creates the Node (or refreshes its status) with this simulator as its kubelet.
pub fn register_node(agent: &Agent, port: u16) -> Result<()> {
    let (api, node) = (&agent.api, agent.node.as_str());
    let now = time::now_rfc3339();
    let status = json!({
        "addresses": [{"type": "InternalIP", "address": crate::sim::podworker::HOST_IP}, {"type": "Hostname", "address": node}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "conditions": [ready_condition(&now, &now)],
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "nodeInfo": {"kubeletVersion": "v1.20.2-kubetape-sim", "operatingSystem": "linux", "architecture": "amd64",
                     "containerRuntimeVersion": "kubetape-sim://0", "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                     "machineID": "", "systemUUID": "", "bootID": ""}
    });
    let mut node_obj = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}, "status": status});
    if let Some(cidr) = agent.pod_cidr {
        node_obj["spec"] = json!({"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]});
    }
    let (code, body) = api.json("POST", "/api/v1/nodes", "application/json", Some(&node_obj)).context("registering node")?;
    if code != 201 && code != 409 {
        crate::bail!("registering node {node}: status {code}: {body}");
    }
    // Status is a subresource: write it explicitly so a re-registration updates the port.
    let (code, body) =
        api.json("PATCH", &format!("/api/v1/nodes/{node}/status"), MERGE_PATCH, Some(&json!({"status": status}))).with_context(|| format!("updating node {node} status"))?;
    if code != 200 {
        crate::bail!("updating node {node} status: status {code}: {body}");
    }
    log::info!("node registered node={node} kubelet_port={port}");
    Ok(())
}

/// Creates or renews `kube-node-lease/<node>`.
fn renew_lease(api: &ApiServer, node: &str) -> Result<()> {
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases/{node}");
    let now = rfc3339_micros(SystemTime::now());
    let (code, mut lease) = api.json("GET", &path, "", None).context("reading the node lease")?;
    match code {
        200 => {
            lease["spec"]["holderIdentity"] = json!(node);
            lease["spec"]["leaseDurationSeconds"] = json!(LEASE_DURATION_SECONDS);
            lease["spec"]["renewTime"] = json!(now);
            // The object carries its resourceVersion, so a concurrent change is a 409.
            let (code, body) = api.json("PUT", &path, "application/json", Some(&lease)).context("renewing the node lease")?;
            if code != 200 {
                crate::bail!("renewing the node lease: status {code}: {}", body["message"]);
            }
        }
        404 => {
            let (_, node_obj) = api.json("GET", &format!("/api/v1/nodes/{node}"), "", None).context("reading the node")?;
            let mut meta = json!({"name": node, "namespace": NODE_LEASE_NAMESPACE});
            if let Some(uid) = node_obj["metadata"]["uid"].as_str() {
                meta["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]);
            }
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                               "spec": {"holderIdentity": node, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": now}});
            let create = format!("/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases");
            let (code, body) = api.json("POST", &create, "application/json", Some(&lease)).context("creating the node lease")?;
            if code != 201 {
                crate::bail!("creating the node lease: status {code}: {}", body["message"]);
            }
        }
        _ => crate::bail!("reading the node lease: status {code}: {}", lease["message"]),
    }
    Ok(())
}

/// Refreshes the Ready condition's `lastHeartbeatTime` (its transition time stays
/// while it was already True).
fn heartbeat_node(api: &ApiServer, node: &str) -> Result<()> {
    let (code, obj) = api.json("GET", &format!("/api/v1/nodes/{node}"), "", None).context("reading the node")?;
    if code != 200 {
        crate::bail!("reading node {node}: status {code}");
    }
    let now = time::now_rfc3339();
    let ready = obj["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == json!("Ready")).cloned().unwrap_or(Value::Null);
    let since = match (ready["status"].as_str(), ready["lastTransitionTime"].as_str()) {
        (Some("True"), Some(t)) => t.to_string(),
        _ => now.clone(),
    };
    let patch = json!({"status": {"conditions": [ready_condition(&since, &now)]}});
    let (code, body) = api.json("PATCH", &format!("/api/v1/nodes/{node}/status"), STRATEGIC_MERGE_PATCH, Some(&patch)).context("heartbeat")?;
    if code != 200 {
        crate::bail!("node heartbeat: status {code}: {}", body["message"]);
    }
    Ok(())
}

/// Renews the node's Lease and heartbeat forever.
pub fn heartbeat_forever(cluster: &Arc<Cluster>) {
    let Some(agent) = &cluster.config.agent else { return };
    loop {
        if let Err(e) = renew_lease(&agent.api, &agent.node) {
            log::warn!("node lease not renewed node={} error={e}", agent.node);
        }
        if let Err(e) = heartbeat_node(&agent.api, &agent.node) {
            log::warn!("node heartbeat failed node={} error={e}", agent.node);
        }
        std::thread::sleep(HEARTBEAT_INTERVAL);
    }
}

/// Writes a pod's status as `f` makes it from the current one, with the pod's
/// resourceVersion as a precondition; a conflict is retried with a fresh read. A pod
/// that is gone, or was replaced by one of another uid, is not written.
pub fn write_pod_status(api: &ApiServer, ns: &str, pod: &str, uid: &str, f: impl Fn(&Value) -> Value) -> std::result::Result<(), String> {
    let path = format!("/api/v1/namespaces/{ns}/pods/{pod}");
    for _ in 0..MAX_STATUS_CONFLICTS {
        let (code, obj) = api.json("GET", &path, "", None).map_err(|e| e.to_string())?;
        if code == 404 {
            return Ok(());
        }
        if code != 200 {
            return Err(format!("reading pod {ns}/{pod}: status {code}"));
        }
        if !uid.is_empty() && obj["metadata"]["uid"].as_str() != Some(uid) {
            return Ok(());
        }
        let patch = json!({"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": f(&obj["status"])});
        let (code, body) = api.json("PATCH", &format!("{path}/status"), MERGE_PATCH, Some(&patch)).map_err(|e| e.to_string())?;
        match code {
            200 => return Ok(()),
            409 => continue,
            404 => return Ok(()),
            _ => return Err(format!("writing pod {ns}/{pod} status: status {code}: {}", body["message"])),
        }
    }
    Err(format!("writing pod {ns}/{pod} status: still conflicting after {MAX_STATUS_CONFLICTS} fresh reads"))
}

/// Applies `f` to the pod's current status and writes it back (conflicts retried
/// with a fresh read, as in [`write_pod_status`]).
pub fn patch_status(api: &ApiServer, ns: &str, pod: &str, f: impl Fn(&mut Value)) -> std::result::Result<(), String> {
    write_pod_status(api, ns, pod, "", |current| {
        let mut status = current.clone();
        f(&mut status);
        status
    })
}

/// Confirms a graceful deletion, as a kubelet does once the containers are stopped.
pub fn confirm_deletion(api: &ApiServer, ns: &str, name: &str, uid: &str) -> std::result::Result<(), String> {
    let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
    let (code, resp) = api.json("DELETE", &format!("/api/v1/namespaces/{ns}/pods/{name}"), "application/json", Some(&body)).map_err(|e| e.to_string())?;
    match code {
        200 | 202 | 404 | 409 => Ok(()),
        _ => Err(format!("deleting pod {ns}/{name}: status {code}: {}", resp["message"])),
    }
}

struct Running {
    feed: Arc<PodFeed>,
    handle: JoinHandle<String>,
    ns: String,
    name: String,
}

/// Lists this node's pods forever, handing each to its worker.
pub fn sync_forever(cluster: &Arc<Cluster>) {
    let Some(agent) = &cluster.config.agent else { return };
    let mut workers: HashMap<String, Running> = HashMap::new();
    loop {
        if let Err(e) = sync_once(cluster, agent, &mut workers) {
            log::warn!("pod sync failed node={} error={e}", agent.node);
        }
        std::thread::sleep(SYNC_INTERVAL);
    }
}

/// Binds every pod that has no node yet to `node`, as a scheduler would.
fn schedule(api: &ApiServer, node: &str) -> Result<()> {
    let (code, list) = api.json("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3D", "", None).context("listing unscheduled pods")?;
    if code != 200 {
        crate::bail!("listing unscheduled pods: status {code}: {list}");
    }
    for pod in list["items"].as_array().into_iter().flatten() {
        let (Some(ns), Some(name)) = (pod["metadata"]["namespace"].as_str(), pod["metadata"]["name"].as_str()) else { continue };
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        let (code, body) =
            api.json("POST", &format!("/api/v1/namespaces/{ns}/pods/{name}/binding"), "application/json", Some(&binding)).with_context(|| format!("binding {ns}/{name}"))?;
        if code != 201 {
            log::warn!("binding failed ns={ns} pod={name} status={code} body={body}");
        }
    }
    Ok(())
}

fn sync_once(cluster: &Arc<Cluster>, agent: &Agent, workers: &mut HashMap<String, Running>) -> Result<()> {
    let (api, node) = (&agent.api, agent.node.as_str());
    if cluster.config.schedule {
        schedule(api, node)?;
    }
    let (code, list) = api.json("GET", &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"), "", None).context("listing pods")?;
    if code != 200 {
        crate::bail!("listing pods: status {code}: {list}");
    }
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let mut seen = Vec::new();
    for pod in items {
        let meta = &pod["metadata"];
        let (Some(uid), Some(ns), Some(name)) = (meta["uid"].as_str(), meta["namespace"].as_str(), meta["name"].as_str()) else { continue };
        let (uid, ns, name) = (uid.to_string(), ns.to_string(), name.to_string());
        seen.push(uid.clone());
        if let Some(w) = workers.get(&uid) {
            w.feed.update(pod);
            continue;
        }
        if meta["deletionTimestamp"].is_string() {
            // Nothing of it runs here (any more): confirm at once.
            if let Err(e) = confirm_deletion(api, &ns, &name, &uid) {
                log::warn!("deletion not confirmed ns={ns} pod={name} error={e}");
            }
            continue;
        }
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        let feed = PodFeed::new(pod);
        let handle = {
            let (cluster, feed) = (cluster.clone(), feed.clone());
            std::thread::Builder::new().name(format!("pod-{name}")).spawn(move || Worker::run(cluster, feed))?
        };
        workers.insert(uid, Running { feed, handle, ns, name });
    }
    for (uid, w) in workers.iter() {
        if !seen.contains(uid) {
            w.feed.gone();
        }
    }
    let finished: Vec<String> = workers.iter().filter(|(_, w)| w.handle.is_finished()).map(|(uid, _)| uid.clone()).collect();
    for uid in finished {
        if let Some(w) = workers.remove(&uid) {
            match w.handle.join() {
                Ok(outcome) => log::info!("pod ended ns={} pod={} uid={uid} outcome={outcome}", w.ns, w.name),
                Err(_) => log::error!("pod worker panicked ns={} pod={} uid={uid}", w.ns, w.name),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time() {
        let at = UNIX_EPOCH + Duration::new(1_795_000_000, 123_456_789);
        assert_eq!(rfc3339_micros(at), "2026-11-18T11:06:40.123456Z");
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }
}
