//! Kubelet mode's agent: registers a Node whose kubelet endpoint is this simulator,
//! runs the pods the API server binds to it as host processes, reports their status,
//! and finishes graceful deletions, as a kubelet does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::Cluster;
use crate::error::{Context, Result};
use crate::kube::client::ApiServer;
use crate::sim::pods;

/// How often the pods bound to this node are listed.
const SYNC_INTERVAL: Duration = Duration::from_millis(500);
const MERGE_PATCH: &str = "application/merge-patch+json";

/// Creates the Node (or refreshes its status) with this simulator as its kubelet.
pub fn register_node(api: &ApiServer, node: &str, port: u16) -> Result<()> {
    let status = json!({
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubetape sim kubelet"}],
        "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        "nodeInfo": {"kubeletVersion": "v1.20.2-kubetape-sim", "operatingSystem": "linux", "architecture": "amd64",
                     "containerRuntimeVersion": "kubetape-sim://0", "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                     "machineID": "", "systemUUID": "", "bootID": ""}
    });
    let node_obj = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}, "status": status});
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

/// GETs the pod, applies `f` to its status and writes the status back.
pub fn patch_status(api: &ApiServer, ns: &str, pod: &str, f: impl FnOnce(&mut Value)) -> std::result::Result<(), String> {
    let path = format!("/api/v1/namespaces/{ns}/pods/{pod}");
    let (code, obj) = api.json("GET", &path, "", None).map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("reading pod {ns}/{pod}: status {code}"));
    }
    let mut status = obj["status"].clone();
    f(&mut status);
    let (code, body) = api.json("PATCH", &format!("{path}/status"), MERGE_PATCH, Some(&json!({"status": status}))).map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("writing pod {ns}/{pod} status: status {code}: {body}"));
    }
    Ok(())
}

/// Lists this node's pods forever, starting new ones and stopping deleted ones.
pub fn sync_forever(cluster: &Arc<Cluster>, node: &str) {
    let Some((api, _)) = &cluster.config.agent else { return };
    // uid → (namespace, name) of the pods this kubelet has started.
    let mut running: HashMap<String, (String, String)> = HashMap::new();
    loop {
        if let Err(e) = sync_once(cluster, api, node, &mut running) {
            log::warn!("pod sync failed node={node} error={e}");
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

fn sync_once(cluster: &Arc<Cluster>, api: &ApiServer, node: &str, running: &mut HashMap<String, (String, String)>) -> Result<()> {
    if cluster.config.schedule {
        schedule(api, node)?;
    }
    let (code, list) = api.json("GET", &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"), "", None).context("listing pods")?;
    if code != 200 {
        crate::bail!("listing pods: status {code}: {list}");
    }
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let mut seen = Vec::new();
    for pod in &items {
        let meta = &pod["metadata"];
        let (Some(uid), Some(ns), Some(name)) = (meta["uid"].as_str(), meta["namespace"].as_str(), meta["name"].as_str()) else { continue };
        seen.push(uid.to_string());
        if meta["deletionTimestamp"].is_string() {
            // Graceful deletion: stop the containers, then confirm as a kubelet does.
            pods::stop_pod(cluster, ns, name);
            running.remove(uid);
            let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
            let _ = api.json("DELETE", &format!("/api/v1/namespaces/{ns}/pods/{name}"), "application/json", Some(&body));
            continue;
        }
        if running.contains_key(uid) {
            continue;
        }
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        running.insert(uid.to_string(), (ns.to_string(), name.to_string()));
        let containers = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
        let (cluster, ns, name) = (cluster.clone(), ns.to_string(), name.to_string());
        std::thread::Builder::new().name(format!("start-{name}")).spawn(move || pods::start_pod(&cluster, &ns, &name, &containers))?;
    }
    running.retain(|uid, (ns, name)| {
        let keep = seen.contains(uid);
        if !keep {
            pods::stop_pod(cluster, ns, name);
        }
        keep
    });
    Ok(())
}
